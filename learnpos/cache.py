"""The KV cache of incremental decoding (`GPT.forward(..., past_kv=cache)`, `learnpos.generate`)."""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Keys and values of every layer for incremental decoding, preallocated to `capacity`.

    The model writes into it in place during `forward(..., past_kv=cache)` and then
    advances `length`; the default positions of new tokens continue from `length`.
    It also keeps, per cached slot, whether it is a real token (for left-padded batches)
    and its position id (for ALiBi's distance bias). Every buffer is allocated once, so a
    decoding step only writes its new slots and reads views of the first `length + T`.
    """

    def __init__(self, n_layer: int, capacity: int):
        self.capacity = capacity
        self.length = 0
        self.k: list[Tensor | None] = [None] * n_layer  # each (B, nh, capacity, hs)
        self.v: list[Tensor | None] = [None] * n_layer
        self.key_mask: Tensor | None = None  # (B, capacity) bool; None while nothing is padded
        self.positions: Tensor | None = None  # (B, capacity) long
        # (B,): each row's positions over the whole decode (its largest position + 1), for encodings
        # that plan positions (randomized tables); `generate` sets it before the prefill
        self.planned: Tensor | None = None

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store this step's k, v (B, nh, T, hs); return all keys/values so far (B, nh, S, hs)."""
        B, nh, T, hs = k.shape
        if self.k[layer] is None:
            self.k[layer] = k.new_empty(B, nh, self.capacity, hs)
            self.v[layer] = v.new_empty(B, nh, self.capacity, hs)
        end = self.length + T
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def record(self, key_mask: Tensor | None, positions: Tensor) -> None:
        """Before the layers run: store the T new tokens' mask (B, T) and positions (B, T) in
        slots length..length+T-1, so `key_mask`/`positions` [:, :length + T] describe every key."""
        B, T = positions.shape
        end = self.length + T
        if end > self.capacity:
            raise ValueError(f"KV cache full: {self.length} + {T} > capacity {self.capacity}")
        if self.positions is None:
            self.positions = torch.zeros(B, self.capacity, dtype=torch.long, device=positions.device)
        self.positions[:, self.length:end] = positions
        if key_mask is not None and self.key_mask is None:
            self.key_mask = torch.ones(B, self.capacity, dtype=torch.bool, device=positions.device)
        if self.key_mask is not None:
            self.key_mask[:, self.length:end] = True if key_mask is None else key_mask.bool()

    def advance(self, T: int) -> None:
        """After the layers ran: the T new tokens are now part of the cache."""
        self.length += T
