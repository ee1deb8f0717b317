"""Generation: sampling, batched prefill/decode with the KV cache, streaming."""

from .generate import Generation, SamplingParams, generate

__all__ = ["Generation", "SamplingParams", "generate"]
