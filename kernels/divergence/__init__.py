"""Fused teacher-student divergence: generalised JSD of softmax(h_s @ W_s) and softmax(h_t @ W_t) per token
(forward KL, reverse KL and GKD's mixture) without [N, V] logits of either model."""
from jaxpost.kernels.divergence.api import IMPLS, token_divergence
from jaxpost.kernels.divergence.chunked import DEFAULT_BLOCK_V, DivergenceConfig, token_divergence_chunked
from jaxpost.kernels.divergence.reference import generalized_jsd, token_divergence_reference
from jaxpost.kernels.divergence.sharded import token_divergence_sharded

__all__ = [
    "DEFAULT_BLOCK_V",
    "DivergenceConfig",
    "IMPLS",
    "generalized_jsd",
    "token_divergence",
    "token_divergence_chunked",
    "token_divergence_reference",
    "token_divergence_sharded",
]
