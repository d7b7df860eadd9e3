"""seq-cifar10 (5 tasks x 2) and seq-cifar100 (10 x 10) from torchvision's standard layout.

Expected under ``--data-root``: ``cifar-10-batches-py/`` or ``cifar-100-python/`` exactly as
torchvision (or the CIFAR website's python tarball) unpacks them. Nothing is downloaded unless
``--download`` is given.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from lmsrr.data.augment import Augment
from lmsrr.data.registry import register_dataset
from lmsrr.data.stream import ContinualStream
from lmsrr.errors import DataNotFoundError

_CIFAR = {
    "seq-cifar10": dict(folder="cifar-10-batches-py", cls="CIFAR10", n_tasks=5, per_task=2,
                        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "seq-cifar100": dict(folder="cifar-100-python", cls="CIFAR100", n_tasks=10, per_task=10,
                         url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}


def load_cifar_tensors(name: str, root: str, download: bool):
    import torchvision

    spec = _CIFAR[name]
    path = os.path.join(root, spec["folder"])
    if not os.path.isdir(path) and not download:
        raise DataNotFoundError(
            f"{name}: dataset not found; expected the folder {os.path.abspath(path)} "
            f"(torchvision's layout, unpacked from {spec['url']}). Put it there, point "
            f"--data-root at its parent, or pass --download to fetch it."
        )
    ds_cls = getattr(torchvision.datasets, spec["cls"])
    try:
        train = ds_cls(root, train=True, download=download)
        test = ds_cls(root, train=False, download=download)
    except RuntimeError as e:  # torchvision's integrity check failed
        raise DataNotFoundError(
            f"{name}: the files under {os.path.abspath(path)} are incomplete or corrupt ({e}). "
            f"Re-extract {spec['url']} there or pass --download."
        ) from e

    def tensors(ds):
        x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))  # N,3,32,32
        return x, torch.as_tensor(ds.targets, dtype=torch.long)

    return (*tensors(train), *tensors(test))


def _cifar_stream(name: str, data_cfg) -> ContinualStream:
    spec = _CIFAR[name]
    xtr, ytr, xte, yte = load_cifar_tensors(name, data_cfg.data_root, data_cfg.download)
    return ContinualStream(name, xtr, ytr, xte, yte, n_tasks=spec["n_tasks"],
                           classes_per_task=spec["per_task"], augment=Augment(pad=4, flip=True),
                           class_order=data_cfg.class_order)


@register_dataset("seq-cifar10")
def seq_cifar10(data_cfg) -> ContinualStream:
    return _cifar_stream("seq-cifar10", data_cfg)


@register_dataset("seq-cifar100")
def seq_cifar100(data_cfg) -> ContinualStream:
    return _cifar_stream("seq-cifar100", data_cfg)
