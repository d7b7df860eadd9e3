"""Loaders execute a stream's batch plans: ``torch`` (always available) or ``dali`` (NVIDIA DALI).

Both take the same :class:`~lmsrr.data.stream.BatchPlan` s (which samples, which crops and flips)
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
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import torch

from lmsrr.data.augment import resize_u8
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
        from lmsrr.data.dali_loader import DaliLoader

        return DaliLoader(workers)
    return TorchLoader(workers)


class TorchLoader:
    name = "torch"

    def __init__(self, workers: int = 1):
        self.workers = max(1, workers)
        self._pool: ThreadPoolExecutor | None = None
        self._resident: dict[tuple[int, str], torch.Tensor] = {}

    def _on_device(self, split, device: torch.device) -> torch.Tensor:
        """The split's images on the training device (copied once per split and device)."""
        key = (id(split.x), str(device))
        if key not in self._resident:
            self._resident = {key: split.x.to(device)}  # keep only the current split resident
        return self._resident[key]

    def train(self, split, plans, augment, device: torch.device) -> Iterator:
        from lmsrr.data.stream import FileSplit

        if isinstance(split, FileSplit):
            yield from self._file_batches(split, plans, augment, device, train=True)
            return
        x_all = self._on_device(split, device)
        for p in plans:
            idx = p.idx.to(device)
            xb = x_all[idx]
            x_aug = xb if p.crops is None else augment.apply(xb, p.crops.to(device), p.flips.to(device))
            yield xb, x_aug, split.y[p.idx].to(device, non_blocking=True)

    def test(self, split, plans, device: torch.device) -> Iterator:
        from lmsrr.data.stream import FileSplit

        if isinstance(split, FileSplit):
            for x, _, y in self._file_batches(split, plans, None, device, train=False):
                yield x, y
            return
        for p in plans:
            yield split.x[p.idx].to(device, non_blocking=True), split.y[p.idx].to(device, non_blocking=True)

    def _file_batches(self, split, plans, augment, device, train: bool) -> Iterator:
        """Decode and transform batches in a thread pool, ``2 * workers`` batches ahead, in order.
        Threads rather than DataLoader processes: decoding and resizing run in torch / torchvision
        ops that release the GIL, and a pool costs nothing to start at every epoch."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="lmsrr-decode")
        pending: deque = deque()
        todo = iter(plans)

        def submit():
            p = next(todo, None)
            if p is not None:
                pending.append(self._pool.submit(load_file_batch, split, p, train))

        for _ in range(2 * self.workers):
            submit()
        while pending:
            x, x_aug, y, bad = pending.popleft().result()
            submit()
            for path in bad:
                log.warning("skipped an unreadable image: %s", path)
            if x.shape[0] == 0:
                continue
            if device.type == "cuda":
                x, x_aug = x.pin_memory(), x_aug.pin_memory()
            yield (x.to(device, non_blocking=True), x_aug.to(device, non_blocking=True),
                   y.to(device, non_blocking=True))


def load_file_batch(split, p, train: bool):
    """One planned batch, decoded: (x, x_aug, y, paths that could not be decoded)."""
    from lmsrr.data.images import decode_rgb

    size = split.size
    geo = split.geometry(p.idx)
    xs, augs, ys, bad = [], [], [], []
    for k, j in enumerate(p.idx.tolist()):
        try:
            img = decode_rgb(split.paths[j])
        except Exception:  # a file that changed or broke after the scan: skip, never crash
            bad.append(split.paths[j])
            continue
        rh, rw, top, left = geo[k].tolist()
        x = resize_u8(img, (rh, rw))[:, top:top + size, left:left + size]
        xs.append(x)
        if train and p.crops is not None:
            t0, l0, ch, cw = p.crops[k].tolist()
            a = resize_u8(img[:, t0:t0 + ch, l0:l0 + cw], (size, size))
            augs.append(a.flip(-1) if bool(p.flips[k]) else a)
        ys.append(int(split.y[j]))
    empty = torch.empty(0, 3, size, size, dtype=torch.uint8)
    x = torch.stack(xs) if xs else empty
    x_aug = torch.stack(augs) if augs else x  # no augmentation: the training view is x
    return x, x_aug, torch.tensor(ys, dtype=torch.long), bad
