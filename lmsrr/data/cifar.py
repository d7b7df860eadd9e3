"""seq-cifar10 (5 tasks x 2) and seq-cifar100 (10 x 10) from torchvision's standard layout.

Expected under ``--data-root``: ``cifar-10-batches-py/`` or ``cifar-100-python/`` exactly as
torchvision (or the CIFAR website's python tarball) unpacks them. Nothing is downloaded unless
``--download`` is given.
"""
from __future__ import annotations

import os
import pickle

import numpy as np
import torch

from lmsrr.data.augment import Augment
from lmsrr.data.common import loader_kwargs
from lmsrr.data.registry import register_dataset
from lmsrr.data.stream import ContinualStream
from lmsrr.errors import DataNotFoundError

_CIFAR = {
    "seq-cifar10": dict(folder="cifar-10-batches-py", cls="CIFAR10", n_tasks=5, per_task=2, label_key="labels",
                        train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "seq-cifar100": dict(folder="cifar-100-python", cls="CIFAR100", n_tasks=10, per_task=10, label_key="fine_labels",
                         train=["train"], test=["test"],
                         url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}


def _read_pickles(path: str, names: list[str], label_key: str):
    xs, ys = [], []
    for name in names:
        f = os.path.join(path, name)
        if not os.path.isfile(f):
            raise DataNotFoundError(f"incomplete dataset: {f} is missing")
        try:
            with open(f, "rb") as fh:
                d = pickle.load(fh, encoding="latin1")
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[label_key], dtype=np.int64))
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
            raise DataNotFoundError(f"{f} is not a readable CIFAR batch ({type(e).__name__}: {e}); "
                                    f"re-extract the dataset or pass --download") from e
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


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

        getattr(torchvision.datasets, spec["cls"])(root, train=True, download=True)
    train = _read_pickles(path, spec["train"], spec["label_key"])
    test = _read_pickles(path, spec["test"], spec["label_key"])
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
