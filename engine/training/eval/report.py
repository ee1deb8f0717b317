"""The run report: report.md + report.json + PNG plots, from each stage's numbers and metrics."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write: skip it
    return rows


def series(rows: list[dict], y: str, x: str = "step") -> tuple[list[float], list[float]]:
    pts = [(r[x], r[y]) for r in rows if r.get(y) is not None and r.get(x) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_lines(out: Path, title: str, lines: dict[str, tuple[list, list]], xlabel: str = "step", ylabel: str = "") -> Path | None:
    """One PNG with a line per series; None when there is nothing to plot."""
    lines = {k: v for k, v in lines.items() if v[0]}
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for label, (xs, ys) in lines.items():
        ax.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None, markersize=3)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _cell(text: str, limit: int = 160) -> str:
    text = text.replace("|", "\\|").replace("\n", " ⏎ ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_report(
    run_dir: Path,
    title: str,
    headline: dict[str, dict],
    plots: list[tuple[str, Path]],
    samples: list[dict],
    notes: list[str] = (),
) -> tuple[Path, Path]:
    """headline: stage -> {metric: value}; samples: [{"prompt", "answers": {model: text}, "expected"?}]."""
    flat = {f"{stage}.{k}": v for stage, d in headline.items() for k, v in d.items()}
    report_json = run_dir / "report.json"
    report_json.write_text(json.dumps({"headline": headline, **flat, "samples": samples}, indent=2, default=str) + "\n")
    md = [f"# {title}", ""]
    md += list(notes) + ([""] if notes else [])
    md += ["## Headline numbers", "", "| stage | metric | value |", "|---|---|---|"]
    for stage, d in headline.items():
        for k, v in d.items():
            md.append(f"| {stage} | {k} | {_fmt(v)} |")
    md.append("")
    if plots:
        md += ["## Plots", ""]
        for name, path in plots:
            md += [f"### {name}", "", f"![{name}]({path.relative_to(run_dir)})", ""]
    if samples:
        models = list(samples[0]["answers"])
        md += ["## The same held-out prompts, answered by each model", ""]
        md.append("| prompt | expected | " + " | ".join(models) + " |")
        md.append("|---|---|" + "---|" * len(models))
        for s in samples:
            cells = [_cell(s["prompt"]), _cell(str(s.get("expected", "")))] + [_cell(s["answers"][m]) for m in models]
            md.append("| " + " | ".join(cells) + " |")
        md.append("")
    report_md = run_dir / "report.md"
    report_md.write_text("\n".join(md))
    return report_md, report_json
