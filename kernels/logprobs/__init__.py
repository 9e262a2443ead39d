"""Fused token log-probs: log softmax(h @ W)[y] (and entropy) without [N, V] logits."""
from jaxpost.kernels.logprobs.api import IMPLS, token_logprob_stats, token_logprobs
from jaxpost.kernels.logprobs.chunked import BlockSizes, token_logprob_stats_chunked
from jaxpost.kernels.logprobs.reference import token_logprob_stats_reference, token_logprobs_reference
from jaxpost.kernels.logprobs.sharded import token_logprobs_sharded

__all__ = [
    "BlockSizes",
    "IMPLS",
    "token_logprob_stats",
    "token_logprob_stats_chunked",
    "token_logprob_stats_reference",
    "token_logprobs",
    "token_logprobs_reference",
    "token_logprobs_sharded",
]
