"""Fused operations used by the LMSRR model and trainer.

Each op lives in ``kernels/<op>/``: ``reference.py`` (pure PyTorch, the truth), an optional
Triton implementation, and ``__init__.py`` exposing one function that dispatches between them
through :mod:`kernels.dispatch`.
"""
from kernels.dispatch import get_backend, set_backend

# the custom ops torch.ops.lmsrr.{msidf,distill}(_backward) are registered on import
# (triton itself is imported only when a CUDA tensor reaches a kernel)
import kernels.distill  # noqa: E402,F401
import kernels.msidf  # noqa: E402,F401

__all__ = ["get_backend", "set_backend"]
