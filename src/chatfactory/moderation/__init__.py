"""Content moderation for prompts and answers (steps 2 and 6 of the serving flow)."""

from .taxonomy import CATEGORIES, ModerationResult

__all__ = ["CATEGORIES", "ModerationResult"]
