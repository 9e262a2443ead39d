"""The KV page pool: a host-side allocator of fixed-size cache pages with reference counts.

  device: k, v = L arrays (num_pages + 1, page_size, K, hd) each; page 0 is the TRASH page
  host:   free list of pages 1..num_pages, refcount per page, page table (slots, max_pages) int32 per slot

A slot's token at position p lives in page `table[slot, p // page_size]`, row `p % page_size`. Entry 0 of
a table means "no page": writes of padding / idle slots are sent to the trash page (never read unmasked),
so a jitted step needs no branch. `share` adds a reference (the G samples of a request read the prompt's
full pages); a page returns to the free list when its last reference is dropped.
"""
from __future__ import annotations

import numpy as np

TRASH_PAGE = 0  # Device page 0: the target of writes that must land nowhere.


class PoolTooSmallError(ValueError):
  """A request needs more pages than the pool (or a slot's page table) can ever hold."""


class PagePool:
  """num_pages usable pages (ids 1..num_pages) of page_size tokens; page ids are what page tables hold."""

  def __init__(self, num_pages: int, page_size: int):
    if num_pages < 1 or page_size < 1:
      raise ValueError(f"EngineConfig.num_pages / page_size: must be >= 1, got {num_pages} / {page_size}")
    self.num_pages, self.page_size = num_pages, page_size
    self._free = list(range(num_pages, 0, -1))  # A stack: pop() hands out low ids first.
    self.refcount = np.zeros(num_pages + 1, np.int32)  # Index 0 (trash) is never counted.

  @property
  def num_free(self) -> int:
    return len(self._free)

  def pages_for(self, num_tokens: int) -> int:
    """Pages that hold `num_tokens` tokens."""
    return -(-num_tokens // self.page_size)

  def alloc(self, n: int) -> list[int]:
    """n fresh pages with refcount 1; raises (naming the setting) when fewer than n are free."""
    if n > len(self._free):
      raise PoolTooSmallError(f"EngineConfig.num_pages: {n} pages wanted, {len(self._free)} of {self.num_pages} "
                              "free; raise num_pages")
    pages = [self._free.pop() for _ in range(n)]
    self.refcount[pages] = 1
    return pages

  def share(self, pages) -> list[int]:
    """One more reference to each of `pages` (already allocated); returns them."""
    pages = list(pages)
    if any(self.refcount[p] < 1 for p in pages):
      raise ValueError(f"PagePool.share: pages {[p for p in pages if self.refcount[p] < 1]} are not allocated")
    self.refcount[pages] += 1
    return pages

  def free(self, pages) -> None:
    """Drops one reference to each of `pages`; pages left with none go back to the free list."""
    for p in pages:
      if p == TRASH_PAGE or self.refcount[p] < 1:
        raise ValueError(f"PagePool.free: page {p} is not allocated (refcount {self.refcount[p]})")
      self.refcount[p] -= 1
      if self.refcount[p] == 0:
        self._free.append(p)


class PageTables:
  """The (slots, max_pages) int32 page tables, host side; row s lists slot s's pages in position order."""

  def __init__(self, num_slots: int, max_pages: int):
    self.table = np.zeros((num_slots, max_pages), np.int32)  # TRASH_PAGE = no page
    self.num = np.zeros(num_slots, np.int32)  # Pages held by each slot.

  def append(self, slot: int, pages) -> None:
    pages = list(pages)
    n = self.num[slot]
    if n + len(pages) > self.table.shape[1]:
      raise PoolTooSmallError(f"EngineConfig.max_seq_len: slot {slot} would hold {n + len(pages)} pages, its table "
                              f"has {self.table.shape[1]}; raise max_seq_len")
    self.table[slot, n:n + len(pages)] = pages
    self.num[slot] = n + len(pages)

  def release(self, slot: int) -> list[int]:
    """Empties slot's table; returns the pages it held (the caller frees them in the pool)."""
    pages = self.table[slot, :self.num[slot]].tolist()
    self.table[slot] = TRASH_PAGE
    self.num[slot] = 0
    return pages
