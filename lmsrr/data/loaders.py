"""The loader factory: the one place that knows both loaders. Loaders execute a stream's batch plans: ``torch`` (always available) or ``dali`` (NVIDIA DALI).

Both take the same :class:`~lmsrr.data.splits.BatchPlan` s (which samples, which crops and flips)
and return the same batches: uint8 (x, x_aug) and labels on the training device.

* in-memory splits: torch gathers, crops and flips on the device; DALI runs an
  ``external_source`` -> slice (zero-padded crop) -> flip pipeline, on the GPU when the training
  device is CUDA and on the CPU otherwise.
* file splits: torch decodes and resizes in a thread pool (``--loader-workers`` threads); DALI reads the files in
  ``external_source``, decodes with ``device="mixed"`` on a GPU (nvJPEG) or on the CPU, and crops,
  resizes and flips in the pipeline.

``--loader auto`` picks DALI when ``nvidia.dali`` imports, torch otherwise (the choice and its
reason are logged once).
"""
from __future__ import annotations

import importlib.util
import logging
import os

from lmsrr.data.torch_loader import TorchLoader
from lmsrr.errors import ConfigError

log = logging.getLogger("lmsrr.data")

LOADERS = ("auto", "dali", "torch")
DALI_PACKAGE = "nvidia-dali-cuda130"


def dali_available() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):
        return False


def resolve_loader(name: str) -> str:
    if name not in LOADERS:
        raise ConfigError(f"loader={name!r} is not valid; choose one of: {', '.join(LOADERS)}")
    if name == "auto":
        return "dali" if dali_available() else "torch"
    if name == "dali" and not dali_available():
        raise ConfigError(f"--loader dali but NVIDIA DALI is not installed; install it with "
                          f"'pip install {DALI_PACKAGE}' (or pip install -e '.[dali]'), or use --loader torch")
    return name


_LOGGED: set = set()


def make_loader(name: str, workers: int = 0):
    resolved = resolve_loader(name)
    if (name, resolved) not in _LOGGED:
        _LOGGED.add((name, resolved))
        why = {("auto", "dali"): "auto: nvidia.dali is installed",
               ("auto", "torch"): f"auto: nvidia.dali is not installed (pip install {DALI_PACKAGE})"}
        log.info("input pipeline: %s loader (%s)", resolved, why.get((name, resolved), "requested"))
    workers = workers or (os.cpu_count() or 1)
    if resolved == "dali":
        # Imported here only: importing it imports nvidia.dali, an optional dependency.
        from lmsrr.data.dali_loader import DaliLoader

        return DaliLoader(workers)
    return TorchLoader(workers)
