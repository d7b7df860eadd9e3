"""Fused operations used by the LMSRR model and trainer.

Each op lives in ``kernels/<op>/``: ``reference.py`` (pure PyTorch, the truth), an optional
Triton implementation, and ``__init__.py`` exposing one function that dispatches between them
through :mod:`kernels.dispatch`.
"""
from kernels.dispatch import get_backend, set_backend

__all__ = ["get_backend", "set_backend"]
