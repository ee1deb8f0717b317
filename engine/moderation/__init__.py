"""Content moderation for prompts and answers (steps 2 and 6 of the serving flow).

`Moderator.from_config(None).moderate(text)` returns a `ModerationResult` in the
shape of OpenAI's `/v1/moderations` results. See `default.yaml` for the policy.
"""

from .moderator import Moderator, Policy, StreamModerator
from .taxonomy import CATEGORIES, ModerationResult, openai_response, validate_openai_result

__all__ = [
    "CATEGORIES",
    "ModerationResult",
    "Moderator",
    "Policy",
    "StreamModerator",
    "openai_response",
    "validate_openai_result",
]
