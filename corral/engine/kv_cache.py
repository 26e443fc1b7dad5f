"""Slot bookkeeping on the model's static KV cache (`corral.model.llama.KVCache`, plain per-layer buffers of
(slots, kv heads, positions, head dim)): the engine's, not the model's.

The buffers grow with use (`resized`): the engine starts with one slot of `GROW_FROM` positions and doubles the
slot count and the length as requests need them, up to its budget; an idle engine shrinks back to the one slot it
keeps for prefix reuse. A copy on growth (log2 of the budget times at most) is the price of attention reading plain
views of the cache.
"""

from __future__ import annotations

import torch

from corral.model.llama import KV_BLOCK, KVCache

GROW_FROM = 256  # positions a slot starts with


def swap_slots(cache: KVCache, a: int, b: int, length: int) -> None:
    """Exchange the first `length` positions of slots a and b, in every layer."""
    if length > 0:
        for buf in cache.k + cache.v:
            tmp = buf[a, :, :length].clone()
            buf[a, :, :length] = buf[b, :, :length]
            buf[b, :, :length] = tmp


def resized(cache: KVCache, slots: int, length: int) -> KVCache:
    """A cache of `slots` x `length` (rounded up to KV_BLOCK) positions holding what fits of `cache`'s entries."""
    new = cache.allocate_like(slots, length)
    s, n = min(slots, cache.k[0].shape[0]), min(new.max_len, cache.max_len)
    with torch.no_grad():
        for old, buf in zip(cache.k + cache.v, new.k + new.v, strict=True):
            buf[:s, :, :n] = old[:s, :, :n]
    return new


def grown_size(have: int, need: int, cap: int, floor: int = 1) -> int:
    """The next size at or past `need`, doubling from `have` (or `floor`), at most `cap`."""
    size = max(have, floor)
    while size < need:
        size *= 2
    return min(size, cap)


def blocks(cache: KVCache) -> int:
    """KV blocks (KV_BLOCK positions of one slot, every layer) the buffers hold."""
    return cache.k[0].shape[0] * cache.max_len // KV_BLOCK
