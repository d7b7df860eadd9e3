"""Small helpers shared by the Triton implementations (no Triton import here)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple
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


def launch_guard(t: torch.Tensor):
    """Context for launching on ``t``'s device: Triton launches on the *current* CUDA device and
    its current stream, so tensors on another GPU need that device made current first (the
    stream then is that device's current stream, the one the caller's work on it is queued on)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def scratch(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Per-call scratch for a two-launch reduction, uninitialised: the first launch writes every
    slot before the second reads any, so its previous content never matters (no memset, and
    nothing outlives the call: safe under CUDA graphs, streams and devices)."""
    return torch.empty(shape, dtype=dtype, device=device)


# What a wrapper launches, for kernels.resources: each triton.py lists its real launches as
# Launch records (launch_cases()), which kernels.resources compiles without a GPU.
@dataclass
class Launch:
    """One kernel launch as a wrapper makes it: positional args and keyword constexprs/options."""
    kernel_name: str
    config: str
    kernel: Callable
    grid: Tuple[int, ...]
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any]


def aligned(dtype: torch.dtype) -> torch.Tensor:
    """A small CPU tensor standing for a device buffer: torch's allocators return at least
    16-byte aligned storage, which is the alignment Triton specialises on."""
    t = torch.empty(64, dtype=dtype)
    assert t.data_ptr() % 16 == 0
    return t
