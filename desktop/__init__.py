"""The desktop app: a PySide6 GUI over the headless `engine` package.

This is the only package that imports Qt. The GUI thread reads and edits the store through its
own connection; one inference worker thread owns the llama.cpp model (`inference_worker`).
"""
