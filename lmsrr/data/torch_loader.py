"""The torch loader: executes batch plans with torch ops (always available; see
:mod:`lmsrr.data.loaders` for how a loader is chosen)."""
from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import torch

from lmsrr.data.augment import resize_u8
from lmsrr.data.images import decode_rgb
from lmsrr.data.released_views import decode_pil
from lmsrr.data.splits import FileSplit

log = logging.getLogger("lmsrr.data")


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
    if split.view is not None:
        return load_released_batch(split, p, train)
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


def load_released_batch(split, p, train: bool):
    """:func:`load_file_batch` for a split with a released view: decoded and resampled as the
    released dataset class does (PIL / torchvision, :mod:`lmsrr.data.released_views`)."""
    view, size = split.view, split.size
    xs, augs, ys, bad = [], [], [], []
    for k, j in enumerate(p.idx.tolist()):
        try:
            img = decode_pil(split.paths[j])
        except Exception:  # a file that changed or broke after the scan: skip, never crash
            bad.append(split.paths[j])
            continue
        xs.append(view.view(img))
        if train and p.crops is not None:
            augs.append(view.augmented_view(img, p.crops[k].tolist(), bool(p.flips[k])))
        ys.append(int(split.y[j]))
    empty = torch.empty(0, 3, size, size, dtype=torch.uint8)
    x = torch.stack(xs) if xs else empty
    x_aug = torch.stack(augs) if augs else x
    return x, x_aug, torch.tensor(ys, dtype=torch.long), bad
