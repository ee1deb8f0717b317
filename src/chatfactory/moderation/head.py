"""The learned layer: a logistic head per output on top of a sentence encoder.

Outputs are the 13 categories plus two signals: "jailbreak" and "toxic" (any
category, for data such as ToxicChat that labels only flagged / not flagged).
Training masks what a record does not label, so category-labelled and
any-flag-labelled data can be mixed. Inference is one matrix product.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .embed import get_encoder
from .taxonomy import CATEGORIES, SIGNALS

OUTPUTS: list[str] = CATEGORIES + SIGNALS
DEFAULT_HEAD = Path(__file__).parent / "data" / "head_static.npz"


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
    seed: int = 0,
    features: np.ndarray | None = None,
) -> Head:
    """Fit a masked multi-output logistic regression (full batch, Adam) on the records."""
    import torch

    torch.manual_seed(seed)
    x = features if features is not None else get_encoder(encoder).encode([r["text"] for r in records])
    y, m = label_matrix(records)
    x, y, m = (torch.tensor(a) for a in (x, y, m))
    pos = (y * m).sum(0)
    # rare outputs would otherwise be ignored: weight positives up to balance, capped
    pos_weight = ((m.sum(0) - pos) / pos.clamp(min=1)).clamp(1, 20)
    w = torch.zeros(x.shape[1], len(OUTPUTS), requires_grad=True)
    b = torch.zeros(len(OUTPUTS), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(epochs):
        logits = x @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y, weight=m, pos_weight=pos_weight, reduction="sum"
        ) / m.sum().clamp(min=1)
        loss = loss + l2 * (w**2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return Head(w.detach().numpy(), b.detach().numpy(), encoder)
