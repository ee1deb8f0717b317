"""chatfactory: build a ChatGPT-style assistant end to end and serve it."""

__version__ = "0.1.0"
