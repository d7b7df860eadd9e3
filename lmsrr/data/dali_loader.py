"""The DALI loader (``--loader dali``): NVIDIA DALI pipelines that execute a stream's batch plans.

Importing this module imports ``nvidia.dali``; nothing else in the package does, so lmsrr works
without DALI (``--loader auto`` then uses the torch loader).

Pipelines run on the GPU when the training device is CUDA (``device_id`` = that GPU; file images
decoded with ``device="mixed"``, i.e. nvJPEG) and on the CPU otherwise (``device_id=None``). They
are built once per split and device, reset between epochs and prefetch ahead
(``prefetch_queue_depth=2``, dynamic executor), so decoding and augmentation overlap the training
step. The samples and augmentation parameters of every batch come from the stream's plan through
``external_source`` (with ``batch_info``): DALI's own readers shuffle with a buffer and pad shards,
which could not give the same batches as the torch loader, nor every sample exactly once per epoch
across ranks.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types

from lmsrr.data.splits import FileSplit
from lmsrr.data.torch_loader import TorchLoader

log = logging.getLogger("lmsrr.data")

INTERP = {"bilinear": types.INTERP_LINEAR, "bicubic": types.INTERP_CUBIC}


@dataclass(frozen=True)
class OutputSpec:
    """An extra per-source output: resize to ``size`` and normalise with ``mean`` / ``std``
    (given for [0, 1] images, as timm's data configs are), float CHW."""

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"


class PlanSource:
    """``external_source`` callback: batch ``info.iteration`` of the current plan list."""

    def __init__(self, make_batch: Callable):
        self.make_batch = make_batch
        self.plans: list = []

    def __call__(self, info):
        if info.iteration >= len(self.plans):
            raise StopIteration
        return self.make_batch(self.plans[info.iteration])


def _device_id(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def to_torch(tl, device: torch.device) -> torch.Tensor:
    """Copy a DALI TensorList (uniform shape) into a new torch tensor on ``device``."""
    if device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

        t = tl.as_tensor()
        out = torch.empty(t.shape(), dtype=to_torch_type[t.dtype], device=device)
        feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    return torch.from_numpy(np.array(tl.as_tensor()))  # copy: DALI reuses its buffers


def normalise_outputs(img, specs, gpu: bool) -> list:
    """CHW uint8 images -> one float CHW tensor per spec (resized, normalised)."""
    outs = []
    hwc = fn.transpose(img, perm=[1, 2, 0])
    for s in specs:
        r = fn.resize(hwc, size=list(s.size), interp_type=INTERP[s.interpolation], antialias=True,
                      dtype=types.FLOAT)
        outs.append(fn.crop_mirror_normalize(r, dtype=types.FLOAT, output_layout="CHW",
                                             mean=[255.0 * m for m in s.mean],
                                             std=[255.0 * v for v in s.std]))
    return outs


def tensor_train_pipeline(source, image_hw: tuple[int, int], batch_size: int, device_id, threads: int,
                          specs: tuple = ()):
    """external_source (uint8 CHW images, crop anchors, flips) -> zero-padded crop -> flip
    [-> per-source resize + normalise]. Outputs: x, x_aug (uint8 CHW), then one float tensor per
    spec."""
    gpu = device_id is not None

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, seed=0,
                  exec_dynamic=True, prefetch_queue_depth=2)
    def pipe():
        x, anchor, flip = fn.external_source(source=source, num_outputs=3, batch=True, batch_info=True,
                                             layout=["CHW", "", ""],
                                             dtype=[types.UINT8, types.FLOAT, types.INT32])
        if gpu:
            x = x.gpu()
        a = fn.slice(x, anchor, list(map(float, image_hw)), axis_names="HW", out_of_bounds_policy="pad",
                     fill_values=0, normalized_anchor=False, normalized_shape=False)
        a = fn.flip(a, horizontal=flip)
        return (x, a, *normalise_outputs(a, specs, gpu))

    return pipe()


def file_pipeline(source, size: int, batch_size: int, device_id, threads: int, train: bool,
                  interpolation: str = "bilinear", augmented: str = "resized-crop"):
    """external_source (encoded files, view geometry[, crop windows, flips]) -> decode (mixed on a
    GPU) -> x: resize + crop [-> x_aug: flip of one of: ``resized-crop`` (a window of the decoded
    image resized to the view), ``crop`` (a window of the resized image), ``flip`` (x itself)].
    ``interpolation``: 'bilinear' (the native views) or 'bicubic' (the released ones; DALI's cubic
    filter, not PIL's: see the README for how far apart they are)."""
    gpu = device_id is not None
    interp = INTERP[interpolation]
    windowed = train and augmented != "flip"  # the flip form takes no crop windows
    dtypes = [types.UINT8, types.FLOAT] + ([types.FLOAT] if windowed else []) + ([types.INT32] if train else [])

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, seed=0,
                  exec_dynamic=True, prefetch_queue_depth=2)
    def pipe():
        inputs = fn.external_source(source=source, num_outputs=len(dtypes), batch=True, batch_info=True,
                                    dtype=dtypes)
        enc, geo = inputs[0], inputs[1]
        img = fn.decoders.image(enc, device="mixed" if gpu else "cpu", output_type=types.RGB,
                                adjust_orientation=False)
        # geo = (resized h, resized w, crop top, crop left)
        resized = fn.resize(img, size=geo[0:2], interp_type=interp, antialias=True)
        x = fn.slice(resized, geo[2:4], [float(size), float(size)], axis_names="HW",
                     normalized_anchor=False, normalized_shape=False)
        outs = [fn.transpose(x, perm=[2, 0, 1])]
        if train:
            win, flip = inputs[2], inputs[-1]  # win = (top, left, height, width)
            if augmented == "flip":
                a = x
            elif augmented == "crop":
                a = fn.slice(resized, win[0:2], win[2:4], axis_names="HW", normalized_anchor=False,
                             normalized_shape=False)
            else:
                a = fn.slice(img, win[0:2], win[2:4], axis_names="HW", normalized_anchor=False,
                             normalized_shape=False)
                a = fn.resize(a, size=[float(size), float(size)], interp_type=interp, antialias=True)
            a = fn.flip(a, horizontal=flip)
            outs.append(fn.transpose(a, perm=[2, 0, 1]))
        return tuple(outs)

    return pipe()


class _Entry:
    def __init__(self, pipe, source: PlanSource, split, max_batch: int):
        self.pipe, self.source, self.split, self.max_batch = pipe, source, split, max_batch
        self.used = False
        self.clean = True  # the last epoch ran to its end (safe to reset and reuse)


class DaliLoader:
    name = "dali"

    def __init__(self, workers: int = 1):
        self.threads = max(1, workers)
        self._pipes: dict[tuple, _Entry] = {}

    def train(self, split, plans, augment, device: torch.device) -> Iterator:
        if isinstance(split, FileSplit):
            yield from self._file_batches(split, plans, augment, device, train=True)
            return
        for (x, a), p in zip(self._run(split, plans, device, "tensor-train"), plans):
            yield x, a, split.y[p.idx].to(device, non_blocking=True)

    def test(self, split, plans, device: torch.device) -> Iterator:
        if not isinstance(split, FileSplit):
            # In memory, evaluation has nothing to decode or augment: a slice is the whole pipeline.
            for p in plans:
                yield split.x[p.idx].to(device, non_blocking=True), split.y[p.idx].to(device, non_blocking=True)
            return
        for x, _, y in self._file_batches(split, plans, None, device, train=False):
            yield x, y

    def _file_batches(self, split, plans, augment, device: torch.device, train: bool) -> Iterator:
        """(x, x_aug, y) from the file pipelines. DALI cannot skip a sample it fails to decode (a
        file that broke after the scan, or one nvJPEG rejects): then the rest of the epoch comes
        from the torch loader, which skips unreadable files one by one and logs their paths, so a
        bad file never stops a task."""
        plain = not train or (plans and plans[0].crops is None)  # no augmentation: x_aug = x
        kind = "file-test" if plain else "file-train"
        done = 0
        try:
            for outs in self._run(split, plans, device, kind):
                p = plans[done]
                x, a = (outs[0], outs[0]) if plain else outs
                yield x, a, split.y[p.idx].to(device, non_blocking=True)
                done += 1
        except RuntimeError as e:
            self._pipes.pop((kind, str(device)), None)  # a failed pipeline cannot be reused
            reason = " ".join(str(e).split()) or type(e).__name__
            log.warning("DALI failed to decode a batch (%s); the torch loader finishes this pass over "
                        "%d remaining batch(es) and skips unreadable files", reason[:300], len(plans) - done)
            yield from TorchLoader(self.threads)._file_batches(split, plans[done:], augment, device, train)

    # ------------------------------------------------------------------ pipelines
    def _build(self, split, kind: str, max_batch: int, device: torch.device) -> _Entry:
        dev = _device_id(device)
        if kind == "tensor-train":
            x_np = split.x.numpy()

            def make(p):
                n = p.idx.shape[0]
                anchors = p.crops if p.crops is not None else torch.zeros(n, 2, dtype=torch.long)
                flips = p.flips if p.flips is not None else torch.zeros(n, dtype=torch.bool)
                return (x_np[p.idx.numpy()], anchors.float().numpy(), flips.int().numpy())

            source = PlanSource(make)
            pipe = tensor_train_pipeline(source, tuple(split.x.shape[-2:]), max_batch, dev, self.threads)
        else:
            train = kind == "file-train"
            windowed = train and (split.view is None or split.view.augmented != "flip")

            def make(p):
                enc = [np.fromfile(split.paths[j], dtype=np.uint8) for j in p.idx.tolist()]
                out = [enc, split.geometry(p.idx).float().numpy()]
                if windowed:
                    out.append(p.crops.float().numpy())
                if train:
                    out.append(p.flips.int().numpy())
                return tuple(out)

            source = PlanSource(make)
            view = split.view
            pipe = file_pipeline(source, split.size, max_batch, dev, self.threads, train,
                                 "bilinear" if view is None else "bicubic",
                                 "resized-crop" if view is None else view.augmented)
        pipe.build()
        return _Entry(pipe, source, split, max_batch)

    def _run(self, split, plans, device: torch.device, kind: str) -> Iterator[list[torch.Tensor]]:
        if not plans:
            return
        need = max(p.idx.shape[0] for p in plans)
        key = (kind, str(device))
        entry = self._pipes.get(key)
        if entry is None or entry.split is not split or entry.max_batch < need or not entry.clean:
            # A new split (rot-mnist: one per task), a larger batch, or an epoch left unfinished.
            self._pipes.pop(key, None)
            entry = self._build(split, kind, need, device)
            self._pipes[key] = entry
        entry.source.plans = plans
        if entry.used:
            entry.pipe.reset()
        entry.used, entry.clean = True, False
        # On a GPU, the outputs are consumed on torch's current stream: DALI makes it wait for them.
        stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        for _ in range(len(plans)):
            yield [to_torch(o, device) for o in entry.pipe.run(stream)]
        try:
            entry.pipe.run(stream)
        except StopIteration:
            entry.clean = True
