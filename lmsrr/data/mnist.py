"""rot-mnist: Rotated MNIST, domain-incremental, 20 tasks (Mammoth's / the released code's rule).

Every task holds all ten digits (the whole MNIST training set, 60,000 images; test set 10,000),
each task rotated by its own fixed angle: angles[t] ~ U[0, 180) degrees, drawn from a generator
seeded with ``--split-seed`` (default 0), counter-clockwise about the centre, nearest-neighbour
interpolation, zero fill (torchvision's ``rotate`` defaults, as Mammoth's Rotation transform uses).
The released code draws the angle from the global NumPy state, so its angles change with the run
seed; here they are fixed by ``--split-seed`` so runs with different seeds see the same domains.
No augmentation beyond the rotation (as in the released code).

Files: torchvision's MNIST layout, ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
(optionally ``.gz``). Read directly (torchvision's class would re-verify checksums).
"""
from __future__ import annotations

import gzip
import os
import zlib

import numpy as np
import torch

from lmsrr.data.augment import Augment
from lmsrr.data.common import check_labels, fetch_with, loader_kwargs, one_line, read_bytes, require_dir
from lmsrr.data.registry import register_dataset
from lmsrr.data.stream import DomainStream
from lmsrr.errors import DataError, DataNotFoundError

N_TASKS = 20
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SOURCE = "http://yann.lecun.com/exdb/mnist/ (or torchvision.datasets.MNIST(root, download=True))"


def read_idx(path: str, ndim: int) -> np.ndarray:
    """An IDX file (uint8 payload): magic 0x0000 08 <ndim>, big-endian dims, then the data."""
    data = read_bytes(path, "rot-mnist")
    if path.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:  # bad header, truncated or corrupt deflate stream
            raise DataError(f"rot-mnist: {os.path.abspath(path)} is not a readable gzip file ({one_line(e)}); "
                            f"re-extract MNIST or pass --download") from e
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else -1
    if magic != 0x0800 + ndim:
        raise DataError(f"rot-mnist: {os.path.abspath(path)} is not an MNIST IDX file with {ndim} dimension(s) "
                        f"(magic {magic:#x}); re-extract MNIST or pass --download")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"rot-mnist: {os.path.abspath(path)} is truncated inside its header; "
                        f"re-extract MNIST or pass --download")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=header)
    if body.size != int(np.prod(dims)):
        state = "is truncated" if body.size < int(np.prod(dims)) else "has trailing bytes"
        raise DataError(f"rot-mnist: {os.path.abspath(path)} {state}: expected {int(np.prod(dims))} values "
                        f"for shape {dims}, found {body.size}; re-extract MNIST or pass --download")
    return body.reshape(dims)


def _find(raw: str, name: str) -> str:
    for candidate in (os.path.join(raw, name), os.path.join(raw, name + ".gz")):
        if os.path.isfile(candidate):
            return candidate
    raise DataNotFoundError(f"rot-mnist: incomplete dataset: {os.path.abspath(os.path.join(raw, name))} "
                            f"(or .gz) is missing; re-extract MNIST or pass --download")


def load_mnist(root: str, download: bool):
    raw = os.path.join(root, "MNIST", "raw")
    if not os.path.isdir(raw) and download:
        import torchvision

        fetch_with("rot-mnist", root, lambda: (torchvision.datasets.MNIST(root, train=True, download=True),
                                               torchvision.datasets.MNIST(root, train=False, download=True)))
    require_dir(raw, "rot-mnist", "MNIST's raw IDX files", SOURCE,
                "put them there, point --data-root at the folder holding MNIST/, or pass --download")
    out = []
    for split in ("train", "test"):
        xf, yf = (_find(raw, n) for n in FILES[split])
        x, y = read_idx(xf, 3), read_idx(yf, 1)
        if x.shape[1:] != (28, 28):
            raise DataError(f"rot-mnist: {os.path.abspath(xf)} holds {x.shape[1]}x{x.shape[2]} images, "
                            f"expected 28x28; re-extract MNIST")
        if x.shape[0] != y.shape[0]:
            raise DataError(f"rot-mnist: {os.path.abspath(xf)} holds {x.shape[0]} images but "
                            f"{os.path.abspath(yf)} {y.shape[0]} labels; re-extract MNIST")
        check_labels("rot-mnist", y, 10, os.path.abspath(yf), require_all=split == "train")
        out += [torch.from_numpy(x.copy())[:, None], torch.from_numpy(y.astype(np.int64))]
    return out


def task_angles(seed: int, n_tasks: int = N_TASKS) -> torch.Tensor:
    """Degrees, one per task, uniform in [0, 180)."""
    return torch.rand(n_tasks, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 180.0


def rotate_batch(x: torch.Tensor, degrees: float) -> torch.Tensor:
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import rotate

    return rotate(x, float(degrees), interpolation=InterpolationMode.NEAREST, fill=0)


def rotate_pil(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """The released rotation: torchvision's ``rotate`` of each image as a PIL 'L' image (PIL's
    nearest-neighbour rotation about the centre, zero fill), which places some pixels differently
    from the tensor rotation of :func:`rotate_batch`."""
    import torchvision.transforms.functional as TF
    from PIL import Image

    out = np.empty((x.shape[0], *x.shape[2:]), dtype=np.uint8)
    for i, img in enumerate(x[:, 0].numpy()):
        out[i] = np.asarray(TF.rotate(Image.fromarray(img), float(degrees)))
    return torch.from_numpy(out)[:, None]


@register_dataset("rot-mnist")
def rot_mnist(data_cfg) -> DomainStream:
    xtr, ytr, xte, yte = load_mnist(data_cfg.data_root, data_cfg.download)
    angles = task_angles(data_cfg.split_seed)
    rotate = rotate_pil if data_cfg.pipeline == "released" else rotate_batch
    stream = DomainStream("rot-mnist", xtr, ytr, xte, yte, n_tasks=N_TASKS, n_classes=10,
                          transform=lambda t, x: rotate(x, angles[t].item()),
                          augment=Augment(pad=0, flip=False), **loader_kwargs(data_cfg))
    stream.angles = angles
    return stream
