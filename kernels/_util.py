"""Small helpers shared by the Triton implementations (no Triton import here)."""
from __future__ import annotations

import os

import torch

_TRUTHY = ("1", "true", "yes", "on")


def interpret_mode() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUTHY


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; a small number for the CPU interpreter, where
    every program runs sequentially and fewer, larger programs are faster."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2


_workspaces: dict = {}


def zeroed_workspace(tag: str, device: torch.device, numel: int, dtype=torch.float32) -> torch.Tensor:
    """A persistent zero-filled scratch buffer, one per (tag, device, stream).

    The kernels that use one (cross-program reductions finished by the last program) leave it
    zeroed again when they finish, so no memset launch is needed per call. Keyed by stream because
    two kernels running concurrently on different streams must not share counters.
    """
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (tag, str(device), stream, dtype)
    buf = _workspaces.get(key)
    if buf is None or buf.numel() < numel:
        buf = torch.zeros(max(numel, 64), dtype=dtype, device=device)
        _workspaces[key] = buf
    return buf
