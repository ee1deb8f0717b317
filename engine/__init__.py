"""chatfactory's engine: everything under the desktop app, with no Qt.

- `engine.turn`: the seven-step turn (moderate prompt, render, stream, moderate answer, store);
- `engine.runtime`: llama.cpp (llama-cpp-python) on GGUF files;
- `engine.templates`: hidden instructions and template answers (assets/templates/*.yaml);
- `engine.moderation`: rules + classifier, failing closed;
- `engine.store`: the SQLite conversation store (sqlite-utils);
- `engine.models`: the bundled model, the catalogue and the local registry;
- `engine.training`: the fine-tuning stack (PyTorch), the only code that imports torch.
"""

__version__ = "0.2.0"
