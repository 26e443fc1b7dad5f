"""Slot bookkeeping on the model's static KV cache (`corral.model.llama.KVCache`, plain per-layer buffers of
(slots, kv heads, positions, head dim)): the engine's, not the model's."""

from __future__ import annotations

from corral.model.llama import KVCache


def swap_slots(cache: KVCache, a: int, b: int, length: int) -> None:
    """Exchange the first `length` positions of slots a and b, in every layer."""
    if length > 0:
        for buf in cache.k + cache.v:
            tmp = buf[a, :, :length].clone()
            buf[a, :, :length] = buf[b, :, :length]
            buf[b, :, :length] = tmp
