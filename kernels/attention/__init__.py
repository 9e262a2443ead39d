"""Flash attention (FlashAttention-2) Pallas kernels: Mosaic TPU, GPU (Pallas Triton), and the oracle."""
from jaxpost.kernels.attention.api import BlockSizes, flash_attention
from jaxpost.kernels.attention.reference import attention_mask, attention_reference

__all__ = ["BlockSizes", "attention_mask", "attention_reference", "flash_attention"]
