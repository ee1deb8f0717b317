"""The seven-step chat flow: moderation in and out, template answers, hidden instructions,
the replayed (and trimmed) conversation. No HTTP here: the server wraps it."""

from .config import FlowConfig
from .flow import ChatFlow, FlowEvent, FlowResult
from .prompt import Prompt, build_prompt

__all__ = ["ChatFlow", "FlowConfig", "FlowEvent", "FlowResult", "Prompt", "build_prompt"]
