"""Which samples go into which batch, on which rank: one seeded plan per epoch, shared by loaders.

Every rank draws the same permutation (the engine gives every rank the same generator state).
The permutation is cut into *global* batches of ``batch_size * num_shards`` samples and each
global batch is dealt out in contiguous chunks, one per rank. So

* every sample is seen exactly once per epoch across the ranks (no padding, no duplicates), and
* every rank runs the same number of steps (DDP would hang otherwise): the last global batch is
  split into near-equal chunks, and a remainder smaller than ``num_shards`` (which could not give
  every rank a sample) is folded into the previous global batch (some chunks get one extra sample).

With one shard this is plain shuffled batching with a smaller last batch.
"""
from __future__ import annotations

import torch


def check_shard(shard_id: int, num_shards: int) -> None:
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id={shard_id} must be in [0, num_shards={num_shards})")


def num_shard_batches(n: int, batch_size: int, num_shards: int = 1) -> int:
    """Steps per epoch on every rank for ``n`` samples."""
    if n == 0:
        return 0
    if n < num_shards:
        raise ValueError(f"cannot shard {n} sample(s) across {num_shards} ranks: every rank needs at "
                         f"least one sample per step; use fewer ranks")
    global_batch = batch_size * num_shards
    steps = -(-n // global_batch)
    if steps > 1 and n - (steps - 1) * global_batch < num_shards:
        steps -= 1
    return steps


def shard_batches(order: torch.Tensor, batch_size: int, shard_id: int = 0,
                  num_shards: int = 1) -> list[torch.Tensor]:
    """This rank's batches of positions taken from ``order`` (a permutation or ``arange``)."""
    check_shard(shard_id, num_shards)
    n = order.shape[0]
    steps = num_shard_batches(n, batch_size, num_shards)
    global_batch = batch_size * num_shards
    out = []
    for s in range(steps):
        lo = s * global_batch
        hi = n if s == steps - 1 else lo + global_batch
        out.append(torch.tensor_split(order[lo:hi], num_shards)[shard_id])
    return out


def eval_shard(n: int, shard_id: int = 0, num_shards: int = 1) -> torch.Tensor:
    """Positions of a test split evaluated by this rank: every ``num_shards``-th sample, so the
    counts summed over ranks cover each test sample exactly once (ranks may differ by one)."""
    check_shard(shard_id, num_shards)
    return torch.arange(shard_id, n, num_shards)
