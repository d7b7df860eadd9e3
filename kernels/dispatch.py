"""Backend choice for the fused ops: chosen once per op, logged with its reason, overridable.

``auto`` (default) runs Triton for CUDA tensors when Triton imports, and the PyTorch reference
otherwise. ``torch`` always runs the reference; ``triton`` always runs Triton (on CPU tensors this
needs ``TRITON_INTERPRET=1``, which is how the CPU tests exercise the kernels).
Override with ``LMSRR_KERNEL_BACKEND=auto|torch|triton`` or :func:`set_backend`.
"""
from __future__ import annotations

import logging
import os

import torch

from kernels._util import interpret_mode  # noqa: F401 (public here: callers outside kernels/)

log = logging.getLogger("lmsrr.kernels")

BACKENDS = ("auto", "torch", "triton")
_override: str | None = None
_logged: set[tuple[str, str]] = set()


def set_backend(name: str | None) -> None:
    """Force a backend for every op (``None`` returns to the environment / ``auto``)."""
    global _override
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {', '.join(BACKENDS)}")
    _override = name


def get_backend() -> str:
    name = _override or os.environ.get("LMSRR_KERNEL_BACKEND", "auto")
    if name not in BACKENDS:
        raise ValueError(
            f"LMSRR_KERNEL_BACKEND={name!r} is not a kernel backend; use one of {', '.join(BACKENDS)}"
        )
    return name


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # triton missing or broken: the reference still works
        return False
    return True


def resolve(op: str, example: torch.Tensor, has_triton_impl: bool) -> str:
    """Return ``"triton"`` or ``"torch"`` for ``op`` on tensors like ``example``; log it once."""
    requested = get_backend()
    if requested == "torch":
        choice, reason = "torch", "forced by LMSRR_KERNEL_BACKEND/set_backend"
    elif requested == "triton":
        if not has_triton_impl:
            raise RuntimeError(f"kernel {op!r} has no Triton implementation; use backend 'torch'")
        choice, reason = "triton", "forced by LMSRR_KERNEL_BACKEND/set_backend"
    elif not has_triton_impl:
        choice, reason = "torch", "no Triton implementation"
    elif example.device.type != "cuda":
        choice, reason = "torch", f"tensors on {example.device.type}"
    elif not triton_available():
        choice, reason = "torch", "triton is not importable"
    else:
        choice, reason = "triton", "CUDA tensors"
    if (op, choice) not in _logged:
        _logged.add((op, choice))
        _log_choice(op, choice, reason)
    return choice


def _log_choice(op: str, choice: str, reason: str) -> None:
    log.info("kernel %s: %s backend (%s)", op, choice, reason)


# Under torch.compile the call is moved after the captured graph instead of breaking it, so a
# module calling the kernels compiles with fullgraph=True and the choice is still logged.
torch._dynamo.config.reorderable_logging_functions.add(_log_choice)
