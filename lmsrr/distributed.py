"""torchrun integration: process group setup, rank helpers, collectives that are no-ops alone.

Under ``torchrun --nproc_per_node N`` every rank trains on its shard of each task (see
``ContinualStream.train_batches``), keeps a reservoir over that shard, and DDP averages the
gradients of the trainable top. A single process needs none of this and pays nothing for it.
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import os

import torch
import torch.distributed as dist

from lmsrr.errors import ConfigError

log = logging.getLogger("lmsrr.distributed")


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def local_share(total: int) -> int:
    """This rank's part of a quantity split across ranks (remainder to the lowest ranks)."""
    w, r = world_size(), rank()
    return total // w + (1 if r < total % w else 0)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; use --device cpu")
    return torch.device(name)


def init(device_pref: str, backend_pref: str) -> torch.device:
    """Join the process group when launched by torchrun; return this rank's device."""
    if not launched_by_torchrun():
        return resolve_device(device_pref)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_pref != "cpu" and torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    backend = backend_pref if backend_pref != "auto" else ("nccl" if use_cuda else "gloo")
    if not is_initialized():
        timeout = datetime.timedelta(minutes=30)
        store, r, w = next(dist.rendezvous("env://", timeout=timeout))
        # After an elastic restart the store still holds the failed attempt's keys (e.g. the
        # dead ranks' addresses); a per-attempt prefix keeps every attempt's keys apart.
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"lmsrr/attempt-{attempt}/", store)
        dist.init_process_group(backend=backend, store=store, rank=r, world_size=w, timeout=timeout)
    log.info("rank %d/%d on %s (backend %s)", rank(), world_size(), device, backend)
    return device


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max_(t: torch.Tensor) -> torch.Tensor:
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def broadcast_buffers_(module: torch.nn.Module) -> None:
    """Rank 0's buffers to every rank. DDP copies them from rank 0 at the start of each forward, so
    after a task's last step the BatchNorm statistics that step updated still differ by rank."""
    if not is_initialized():
        return
    for b in module.buffers():
        dist.broadcast(b, src=0)


def average_grads_(params) -> None:
    """Average gradients that DDP does not see (parameters used outside the DDP forward)."""
    if not is_initialized():
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world_size())


def gather_objects(obj) -> list:
    if not is_initialized():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def state_hash(module: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer: equal on all ranks iff the weights are equal."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        t = t.detach().cpu().contiguous()
        # Bytes of a 1-D view: a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed
        # as bytes, and every other tensor hashes as before.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
