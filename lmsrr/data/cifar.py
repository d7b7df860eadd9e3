"""seq-cifar10 (5 tasks x 2) and seq-cifar100 (10 x 10) from torchvision's standard layout.

Expected under ``--data-root``: ``cifar-10-batches-py/`` or ``cifar-100-python/`` exactly as
torchvision (or the CIFAR website's python tarball) unpacks them. Nothing is downloaded unless
``--download`` is given.
"""
from __future__ import annotations

import io
import os
import pickle

import numpy as np
import torch

from lmsrr.data.augment import Augment
from lmsrr.data.common import check_labels, fetch_with, loader_kwargs, one_line, read_bytes, require_file
from lmsrr.data.registry import register_dataset
from lmsrr.data.stream import ContinualStream
from lmsrr.errors import DataError, DataNotFoundError

_CIFAR = {
    "seq-cifar10": dict(folder="cifar-10-batches-py", cls="CIFAR10", n_tasks=5, per_task=2, label_key="labels",
                        train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "seq-cifar100": dict(folder="cifar-100-python", cls="CIFAR100", n_tasks=10, per_task=10, label_key="fine_labels",
                         train=["train"], test=["test"],
                         url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}


# What a CIFAR batch pickle refers to: numpy arrays (numpy 1 or 2 module names) and, in pickles
# re-saved by Python 3 with protocol 2, bytes via _codecs.encode. Anything else is refused before
# it is called, so a damaged or foreign pickle can never run code while it loads.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}
PIXELS = 3 * 32 * 32


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR batch never contains")
        return super().find_class(module, name)


def _bad(f: str, what: str) -> DataError:
    return DataError(f"{os.path.abspath(f)} is not a readable CIFAR batch: {what}; re-extract the dataset "
                     f"or pass --download")


def _unpickle(f: str, stream: str) -> dict:
    data = read_bytes(f, stream)
    try:
        # latin1 reads the Python 2 pickles of the CIFAR website; keys may come back as str or,
        # after a Python 3 re-save with encoding='bytes', as bytes: both are accepted below.
        d = _BatchUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as e:  # unpickling damaged bytes raises many types; each means "not a batch"
        raise _bad(f, f"{type(e).__name__}: {one_line(e)}") from e
    if not isinstance(d, dict):
        raise _bad(f, f"it holds a {type(d).__name__}, not a dict")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _as_int_array(value, f: str, key: str, ndim: int) -> np.ndarray:
    try:
        a = np.asarray(value)
    except Exception as e:  # ragged nested lists and foreign objects
        raise _bad(f, f"{key!r} is not an array ({type(e).__name__}: {one_line(e)})") from e
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise _bad(f, f"{key!r} has dtype {a.dtype}, expected integers")
    if a.ndim != ndim:
        raise _bad(f, f"{key!r} has {a.ndim} dimension(s) (shape {a.shape}), expected {ndim}")
    return a


def read_batch(f: str, label_key: str, n_classes: int, stream: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: uint8 images (N, 3, 32, 32) and int64 labels (N,), checked against the
    layout: a dict with 'data' (N, 3072) of values 0..255 and ``label_key`` (N labels in range)."""
    d = _unpickle(f, stream)
    for key in ("data", label_key):
        if key not in d:
            keys = ", ".join(repr(k) for k in list(d)[:8])
            raise _bad(f, f"it has no {key!r} entry (keys: {keys})")
    x = _as_int_array(d["data"], f, "data", 2)
    if x.shape[1] != PIXELS:
        raise _bad(f, f"'data' has {x.shape[1]} values per image, expected {PIXELS} (3 x 32 x 32)")
    if x.size and (int(x.min()) < 0 or int(x.max()) > 255):
        raise _bad(f, f"'data' holds values outside 0..255 (min {int(x.min())}, max {int(x.max())})")
    y = _as_int_array(d[label_key], f, label_key, 1)
    if y.shape[0] != x.shape[0]:
        # The labels of every later image would shift onto the wrong picture.
        raise _bad(f, f"it holds {x.shape[0]} images but {y.shape[0]} labels")
    check_labels(stream, y, n_classes, os.path.abspath(f), require_all=False)
    return x.astype(np.uint8).reshape(-1, 3, 32, 32), y.astype(np.int64)


def _read_pickles(path: str, names: list[str], label_key: str, n_classes: int, stream: str):
    xs, ys = [], []
    for name in names:
        x, y = read_batch(require_file(os.path.join(path, name), stream), label_key, n_classes, stream)
        xs.append(x)
        ys.append(y)
    y = np.concatenate(ys)
    check_labels(stream, y, n_classes, f"the files {', '.join(names)} in {os.path.abspath(path)}")
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(y)


def load_cifar_tensors(name: str, root: str, download: bool):
    spec = _CIFAR[name]
    path = os.path.join(root, spec["folder"])
    if not os.path.isdir(path):
        if not download:
            raise DataNotFoundError(
                f"{name}: dataset not found; expected the folder {os.path.abspath(path)} "
                f"(torchvision's layout, unpacked from {spec['url']}). Put it there, point "
                f"--data-root at its parent, or pass --download to fetch it."
            )
        import torchvision

        fetch_with(name, root, lambda: getattr(torchvision.datasets, spec["cls"])(root, train=True, download=True))
    n_classes = spec["n_tasks"] * spec["per_task"]
    train = _read_pickles(path, spec["train"], spec["label_key"], n_classes, name)
    test = _read_pickles(path, spec["test"], spec["label_key"], n_classes, name)
    return (*train, *test)


def _cifar_stream(name: str, data_cfg) -> ContinualStream:
    spec = _CIFAR[name]
    xtr, ytr, xte, yte = load_cifar_tensors(name, data_cfg.data_root, data_cfg.download)
    return ContinualStream(name, xtr, ytr, xte, yte, n_tasks=spec["n_tasks"],
                           classes_per_task=spec["per_task"],
                           augment=Augment(pad=4, flip=True) if data_cfg.augment else Augment(),
                           class_order=data_cfg.class_order, **loader_kwargs(data_cfg))


@register_dataset("seq-cifar10")
def seq_cifar10(data_cfg) -> ContinualStream:
    return _cifar_stream("seq-cifar10", data_cfg)


@register_dataset("seq-cifar100")
def seq_cifar100(data_cfg) -> ContinualStream:
    return _cifar_stream("seq-cifar100", data_cfg)
