"""Rollout engine v2: continuous batching over a paged KV cache; the online loop's sampler (rl.sampler = engine).

  pages.py            host-side page pool (free list, refcounts) and per-slot page tables
  paged_attention.py  XLA attention of a query block over a slot's pages
  forward.py          the Transformer's forward over a paged cache, from its own submodules
  engine.py           requests -> slots -> completed samples (EngineConfig, Request, Completion, Engine)
"""
from jaxpost.engine.engine import CachedPrefix, Completion, Engine, EngineConfig, Request
from jaxpost.engine.pages import PagePool, PageTables, PoolTooSmallError

__all__ = ["CachedPrefix", "Completion", "Engine", "EngineConfig", "PagePool", "PageTables", "PoolTooSmallError", "Request"]
