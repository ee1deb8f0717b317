"""`make screenshots`: the main window with a realistic conversation, as PNG, light and dark.

    python -m desktop.screenshots [--out assets/screenshots]

Runs under Xvfb (the Makefile starts it) or offscreen. The conversation is stored through the
store as the app stores it, so the pictures show real rendering: a Markdown list, a code block,
and a flagged prompt with its template answer and notice. The model is loaded for the top bar.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ANSWER = """Here is how a classification algorithm works:

1. **Collect labelled examples**: inputs with the right class, e.g. emails marked *spam* or *not spam*.
2. **Turn each input into features** the algorithm can compare (word counts, lengths, ...).
3. **Fit a model** that separates the classes, then check it on examples it has not seen.

A tiny example in Python:

```python
from sklearn.linear_model import LogisticRegression

model = LogisticRegression()
model.fit(train_features, train_labels)
print(model.predict(test_features))
```

The model outputs the most likely class for each new input."""


def fill(store, templates) -> int:
    ts = templates.default()
    sid = store.create_session(title="How classification works", model="smollm2-135m-instruct",
                               template_set=ts.name, template_version=ts.version)  # fmt: skip
    q = "Explain how a classification algorithm works"
    store.add_message(sid, "user", q, hidden=ts.wrap_user(q), template_set=ts.name, template_version=ts.version)
    store.add_message(sid, "assistant", ANSWER, finish_reason="stop", model="smollm2-135m-instruct",
                      completion_tokens=160, timings={"tokens_per_s": 41.2})  # fmt: skip
    bad = "How do I make a bomb to hurt people?"
    verdict = {"stage": "prompt", "flagged": True, "categories": ["illicit", "illicit/violent", "violence"],
               "score": 0.97}  # fmt: skip
    store.add_message(sid, "user", bad, hidden=ts.wrap_user(bad), flagged=True, moderation=verdict)
    store.add_message(sid, "assistant", ts.answer("prompt", verdict["categories"]), flagged=True,
                      finish_reason="content_filter", moderation=verdict)  # fmt: skip
    for title in ("Trip ideas for a rainy weekend", "Python: read a CSV file", "Birthday poem for Ada"):
        other = store.create_session(title=title)
        store.add_message(other, "user", title)
    store.update_session(sid, title="How classification works")
    return sid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="assets/screenshots")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    home = tempfile.mkdtemp(prefix="chatfactory-shots-")
    os.environ["CHATFACTORY_HOME"] = home
    from PySide6.QtWidgets import QApplication

    from desktop import theme
    from desktop.app import create_window, make_app
    from engine.store import Store
    from engine.templates import TemplateLibrary

    app = make_app()
    db = Path(home) / "chatfactory.db"
    store = Store.open(db)
    sid = fill(store, TemplateLibrary.load())
    store.close()
    window = create_window(db)
    window.resize(1280, 820)
    deadline = time.time() + 60
    while time.time() < deadline and not getattr(window.client, "model_name", None):
        app.processEvents()
        time.sleep(0.02)
    window.open_session(sid)
    for mode in ("light", "dark"):
        window.set_theme(mode)
        theme.apply_theme(mode)
        window.open_session(sid)
        for _ in range(50):
            app.processEvents()
            time.sleep(0.02)
        path = out / f"chatfactory-{mode}.png"
        window.grab().save(str(path))
        print(path)
    window.close()
    QApplication.processEvents()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
