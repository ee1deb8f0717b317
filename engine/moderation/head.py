"""The learned layer: a logistic head per output on top of a sentence encoder.

Outputs are the 13 categories plus two signals: "jailbreak" and "toxic" (any
category, for data such as ToxicChat that labels only flagged / not flagged).
Training masks what a record does not label, so category-labelled and
any-flag-labelled data can be mixed. Inference is one matrix product.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.paths import assets_dir

from .embed import get_encoder
from .taxonomy import CATEGORIES, SIGNALS

OUTPUTS: list[str] = CATEGORIES + SIGNALS
DEFAULT_HEAD = assets_dir() / "moderation" / "head_static.npz"


class Head:
    def __init__(self, w: np.ndarray, b: np.ndarray, encoder: str, outputs: list[str] = OUTPUTS):
        assert w.shape == (w.shape[0], len(outputs)) and b.shape == (len(outputs),), "head shape mismatch"
        self.w, self.b, self.encoder_name, self.outputs = (
            w.astype(np.float32),
            b.astype(np.float32),
            encoder,
            outputs,
        )

    @property
    def encoder(self):
        return get_encoder(self.encoder_name)

    def predict(self, texts: list[str]) -> np.ndarray:
        """(len(texts), len(outputs)) probabilities."""
        x = self.encoder.encode(texts)
        return 1.0 / (1.0 + np.exp(-(x @ self.w + self.b)))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        np.savez(path, w=self.w, b=self.b, encoder=self.encoder_name, outputs=np.array(self.outputs))
        return path

    @classmethod
    def load(cls, path: str | Path | None = None) -> Head:
        path = Path(path) if path else DEFAULT_HEAD
        if not path.is_file():
            raise FileNotFoundError(
                f"no head weights at {path} (train some with `chatfactory moderation train`)"
            )
        z = np.load(path)
        return cls(z["w"], z["b"], str(z["encoder"]), [str(o) for o in z["outputs"]])


def label_matrix(records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Targets and a mask of which targets each record actually labels."""
    y = np.zeros((len(records), len(OUTPUTS)), np.float32)
    m = np.zeros_like(y)
    for i, r in enumerate(records):
        for name, v in r["labels"].items():
            j = OUTPUTS.index(name)
            y[i, j], m[i, j] = float(v), 1.0
    return y, m


def train_head(
    records: list[dict],
    encoder: str = "static",
    epochs: int = 300,
    l2: float = 1e-3,
    lr: float = 0.05,
    features: np.ndarray | None = None,
) -> Head:
    """Fit a masked multi-output logistic regression (full batch, Adam) on the records.

    Plain numpy: the default stack needs no torch. Loss per output: binary
    cross-entropy with positives up-weighted to balance (capped at 20), over the
    labels each record has, plus l2 * |w|^2.
    """
    x = features if features is not None else get_encoder(encoder).encode([r["text"] for r in records])
    x = np.asarray(x, np.float64)
    y, m = (a.astype(np.float64) for a in label_matrix(records))
    pos = (y * m).sum(0)
    # rare outputs would otherwise be ignored: weight positives up to balance, capped
    pos_weight = np.clip((m.sum(0) - pos) / np.maximum(pos, 1), 1, 20)
    w, b = np.zeros((x.shape[1], len(OUTPUTS))), np.zeros(len(OUTPUTS))
    params, moments = [w, b], [[np.zeros_like(w), np.zeros_like(w)], [np.zeros_like(b), np.zeros_like(b)]]
    beta1, beta2, eps, n = 0.9, 0.999, 1e-8, max(m.sum(), 1.0)
    for t in range(1, epochs + 1):
        # einsum, not @: OpenBLAS threads on these small products crawl on a busy 2-core machine
        p = 1.0 / (1.0 + np.exp(-(np.einsum("nd,dk->nk", x, w) + b)))
        # d/dz of -(pw*y*log p + (1-y)*log(1-p)) = p*(pw*y + 1 - y) - pw*y
        g = m * (p * (pos_weight * y + 1 - y) - pos_weight * y) / n
        grads = [np.einsum("nd,nk->dk", x, g) + 2 * l2 * w, g.sum(0)]
        for param, grad, mom in zip(params, grads, moments):
            mom[0] = beta1 * mom[0] + (1 - beta1) * grad
            mom[1] = beta2 * mom[1] + (1 - beta2) * grad**2
            param -= lr * (mom[0] / (1 - beta1**t)) / (np.sqrt(mom[1] / (1 - beta2**t)) + eps)
    return Head(w, b, encoder)


# How the shipped heads were made (only our own seed examples; see seed.py).
SHIPPED = {"static": {"epochs": 300, "l2": 1e-3}, "minilm": {"epochs": 600, "l2": 1e-4}}


def rebuild_shipped_head(encoder: str = "static") -> Path:
    from .seed import seed_records

    out = assets_dir() / "moderation" / f"head_{encoder}.npz"
    return train_head(seed_records(), encoder, **SHIPPED[encoder]).save(out)
