"""Continual-learning methods. Each returns a loss; the engine owns backward and the step."""
from lmsrr.methods.base import Batch, ContinualMethod, StepOutput
from lmsrr.methods.registry import available_methods, build_method, register_method

# Explicit imports register the built-in methods.
from lmsrr.methods import lmsrr as _lmsrr  # noqa: E402,F401

__all__ = ["Batch", "ContinualMethod", "StepOutput", "available_methods", "build_method",
           "register_method"]
