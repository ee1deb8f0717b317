"""Precision, recall, F1, AUPRC, confusion counts and latency for a Moderator on labelled data."""

from __future__ import annotations

import time

import numpy as np

from .taxonomy import CATEGORIES


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the precision-recall curve, as scikit-learn's average_precision_score."""
    y, s = np.asarray(y, bool), np.asarray(s, float)
    if y.sum() == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    # one point per distinct score (ties share a threshold)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def binary_metrics(y: np.ndarray, score: np.ndarray, pred: np.ndarray) -> dict:
    y, pred = np.asarray(y, bool), np.asarray(pred, bool)
    tp, fp = int((y & pred).sum()), int((~y & pred).sum())
    fn, tn = int((y & ~pred).sum()), int((~y & ~pred).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {
        "n": len(y), "positives": int(y.sum()), "precision": p, "recall": r,
        "f1": 2 * p * r / (p + r) if p + r else 0.0, "auprc": average_precision(y, score),
        "accuracy": (tp + tn) / len(y) if len(y) else 0.0, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }  # fmt: skip


def evaluate(moderator, records: list[dict], limit: int | None = None) -> dict:
    """Moderate each record one at a time (as the chat service would) and score the results.

    A record with a `prompt` is checked on the output side, `moderate_output(text, prompt)`.
    The any-flag score for AUPRC is `details["flag_score"]`: every category's score
    mapped so its threshold is 0.5, then the max.
    """
    records = records[:limit] if limit else records
    results, lat, cpu = [], [], []
    for r in records:
        t0, c0 = time.perf_counter(), time.thread_time()
        res = (
            moderator.moderate_output(r["text"], r["prompt"])
            if r.get("prompt")
            else moderator.moderate(r["text"])
        )
        lat.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)  # CPU time of this thread: wall time less waiting for a core
        results.append(res)
    out: dict = {"n": len(records), "per_category": {}}
    y = [r["labels"].get("toxic") for r in records]
    if all(v is not None for v in y):
        out["any"] = binary_metrics(
            np.array(y),
            np.array([x.details["flag_score"] for x in results]),
            np.array([x.flagged for x in results]),
        )
    for c in CATEGORIES:
        idx = [i for i, r in enumerate(records) if c in r["labels"]]
        if idx:
            out["per_category"][c] = binary_metrics(
                np.array([records[i]["labels"][c] for i in idx]),
                np.array([results[i].category_scores[c] for i in idx]),
                np.array([results[i].categories[c] for i in idx]),
            )
    ms, cpu_ms = np.array(lat) * 1000, np.array(cpu) * 1000
    out["latency_ms"] = {
        "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)), "mean": float(ms.mean()),
        "cpu_p50": float(np.percentile(cpu_ms, 50)), "cpu_p95": float(np.percentile(cpu_ms, 95)),
    }  # fmt: skip
    return out


def format_report(rep: dict) -> str:
    lines = [f"messages: {rep['n']}"]
    head = f"{'':24} {'n':>5} {'pos':>5} {'P':>6} {'R':>6} {'F1':>6} {'AUPRC':>6} {'tp':>5} {'fp':>5} {'fn':>5} {'tn':>5}"
    lines.append(head)
    rows = ([("any-flag", rep["any"])] if "any" in rep else []) + list(rep["per_category"].items())
    for name, m in rows:
        lines.append(
            f"{name:24} {m['n']:5d} {m['positives']:5d} {m['precision']:6.3f} {m['recall']:6.3f} {m['f1']:6.3f} "
            f"{m['auprc']:6.3f} {m['tp']:5d} {m['fp']:5d} {m['fn']:5d} {m['tn']:5d}"
        )
    if "any" in rep:
        lines.append(f"any-flag agreement with the label: {rep['any']['accuracy']:.3f}")
    lat = rep["latency_ms"]
    lines.append(
        f"latency per message: p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms, mean {lat['mean']:.2f} ms "
        f"(CPU time of the moderating thread: p50 {lat['cpu_p50']:.2f} ms, p95 {lat['cpu_p95']:.2f} ms)"
    )
    return "\n".join(lines)
