"""Continual-learning methods. Each returns a loss; the engine owns backward and the step."""
from lmsrr.methods.base import Batch, ContinualMethod, StepOutput
from lmsrr.methods.registry import available_methods, build_method, register_method

# Explicit imports register the built-in methods.
from lmsrr.methods import lmsrr as _lmsrr  # noqa: E402,F401
from lmsrr.methods import finetune as _finetune  # noqa: E402,F401
from lmsrr.methods import joint as _joint  # noqa: E402,F401
from lmsrr.methods import er as _er  # noqa: E402,F401
from lmsrr.methods import der as _der  # noqa: E402,F401
from lmsrr.methods import derpp as _derpp  # noqa: E402,F401
from lmsrr.methods import lwf as _lwf  # noqa: E402,F401
from lmsrr.methods import icarl as _icarl  # noqa: E402,F401
from lmsrr.methods import agem as _agem  # noqa: E402,F401
from lmsrr.methods import ewc as _ewc  # noqa: E402,F401
from lmsrr.methods import si as _si  # noqa: E402,F401
from lmsrr.methods import nmc as _nmc  # noqa: E402,F401

__all__ = ["Batch", "ContinualMethod", "StepOutput", "available_methods", "build_method",
           "register_method"]
