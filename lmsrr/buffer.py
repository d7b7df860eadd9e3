"""Reservoir replay buffer held on the training device, written in one vectorised op per batch.

Reservoir sampling (Vitter's algorithm R): the j-th stream sample (0-based) goes to slot j while
the buffer fills; afterwards it replaces slot r ~ U{0..j} when r < capacity. Every stream sample
thus ends up stored with probability capacity / seen. A batch is inserted at once: samples whose
r >= capacity, and all but the last of samples drawing the same slot (the sequential algorithm's
outcome), are routed to a scratch row past the end, so the write needs no host sync.

Inputs are stored un-augmented (uint8, native resolution); replay augments them again.
"""
from __future__ import annotations

import os

import torch

from lmsrr import distributed
from lmsrr.errors import ConfigError


class ReservoirBuffer:
    def __init__(self, capacity: int, input_shape: tuple[int, ...], logit_dim: int,
                 device: torch.device | str = "cpu", input_dtype: torch.dtype = torch.uint8,
                 generator: torch.Generator | None = None):
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.device = torch.device(device)
        self.generator = generator
        rows = capacity + 1  # + the scratch row
        self.x = torch.zeros((rows, *input_shape), dtype=input_dtype, device=self.device)
        self.y = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.logits = torch.zeros(rows, logit_dim, dtype=torch.float32, device=self.device)
        self.task = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.seen = 0  # host-side count of stream samples offered: no sync needed to read it

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def is_empty(self) -> bool:
        return self.seen == 0

    def slots_for(self, n: int) -> torch.Tensor:
        """Target rows for the next n stream samples (scratch row = capacity for 'not kept')."""
        j = torch.arange(self.seen, self.seen + n, device=self.device, dtype=torch.float64)
        u = torch.rand(n, device=self.device, dtype=torch.float64, generator=self.generator)
        r = torch.floor(u * (j + 1)).long()
        slot = torch.where(j < self.capacity, j.long(), r)
        slot = torch.where(slot < self.capacity, slot, torch.full_like(slot, self.capacity))
        # Later samples overwrite earlier ones that drew the same slot, as in the sequential loop.
        pos = torch.arange(n, device=self.device)
        last = torch.full((self.capacity + 1,), -1, dtype=torch.long, device=self.device)
        last.scatter_reduce_(0, slot, pos, reduce="amax")
        return torch.where(last[slot] == pos, slot, torch.full_like(slot, self.capacity))

    @torch.no_grad()
    def add(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None = None,
            task: int | torch.Tensor = 0) -> None:
        n = x.shape[0]
        slot = self.slots_for(n)
        self.x.index_copy_(0, slot, x.to(self.device, self.x.dtype))
        self.y.index_copy_(0, slot, y.to(self.device))
        if logits is not None:
            self.logits.index_copy_(0, slot, logits.detach().to(self.device, torch.float32))
        t = torch.as_tensor(task, device=self.device).expand(n)
        self.task.index_copy_(0, slot, t.long())
        self.seen += n

    def sample(self, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """m stored samples drawn without replacement (all of them if fewer are stored)."""
        n = len(self)
        if n == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        idx = torch.randperm(n, device=self.device, generator=self.generator)[: min(m, n)]
        return self.x[idx], self.y[idx], self.logits[idx], self.task[idx]

    def state_dict(self) -> dict:
        return {"x": self.x, "y": self.y, "logits": self.logits, "task": self.task, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        for k in ("x", "y", "logits", "task"):
            getattr(self, k).copy_(state[k])
        self.seen = int(state["seen"])


def make_buffer(total_size: int, stream, device, method: str) -> ReservoirBuffer:
    """The replay buffer of this rank: ``total_size`` slots split evenly across DDP ranks.

    Each rank runs a reservoir over its own shard of the stream. Shards are a uniformly random
    partition (a shared random permutation dealt round-robin), and a reservoir of C/W slots over
    N/W samples keeps each of them with probability (C/W)/(N/W) = C/N: exactly the inclusion
    probability of one global reservoir of C slots over N samples. The union is a uniform sample
    stratified by shard, and each rank replays from its own part.
    """
    local = distributed.local_share(total_size)
    if local == 0:  # fewer slots than ranks: some rank would replay nothing
        raise ConfigError(f"method {method!r}: --buffer-size {total_size} is smaller than the number "
                          f"of ranks ({distributed.world_size()}); every rank needs at least one slot")
    need = buffer_bytes(local, stream.image_shape, stream.n_classes)
    free = free_memory(torch.device(device))
    if free is not None and need > free:
        raise ConfigError(f"method {method!r}: --buffer-size {total_size} needs {need / 2**30:.1f} GiB "
                          f"on {device} for its replay buffer, {free / 2**30:.1f} GiB are free; "
                          f"choose a smaller --buffer-size")
    return ReservoirBuffer(local, stream.image_shape, stream.n_classes, device)


def buffer_bytes(capacity: int, input_shape: tuple[int, ...], logit_dim: int) -> int:
    """Memory of a :class:`ReservoirBuffer` of uint8 inputs (with its scratch row)."""
    per_row = 1
    for d in input_shape:
        per_row *= d
    return (capacity + 1) * (per_row + 8 + 4 * logit_dim + 8)


def free_memory(device: torch.device) -> int | None:
    """Free memory of ``device`` in bytes (None when unknown). The buffer is allocated at start-up,
    and an allocation larger than memory fails with a traceback (or the kernel's OOM killer)."""
    try:
        if device.type == "cuda":
            return torch.cuda.mem_get_info(device)[0]
        if device.type == "cpu":
            if os.path.exists("/proc/meminfo"):  # MemAvailable counts reclaimable caches
                with open("/proc/meminfo") as f:
                    for line in f:
                        if line.startswith("MemAvailable:"):
                            return int(line.split()[1]) * 1024
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, RuntimeError):
        pass
    return None
