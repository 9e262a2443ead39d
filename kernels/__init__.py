"""Pallas kernels, each beside its pure-jnp reference. Installed as `jaxpost.kernels` (never as a
top-level `kernels`, which would shadow the PyPI package of that name that transformers probes for)."""
from jaxpost.kernels.attention import attention_reference, flash_attention
from jaxpost.kernels.logprobs import token_logprobs, token_logprobs_reference

__all__ = ["attention_reference", "flash_attention", "token_logprobs", "token_logprobs_reference"]
