"""Input pipelines: ``native`` (each source's own statistics and resize rule) or ``released``
(the released code's, stream by stream).

Under ``--pipeline released`` a stream carries an :class:`InputTransform`: the normalisation of
the released dataset class (its ``get_normalization_transform``) followed by the released
backbone's resize (``backbone/LMSRR.py``: ``vitProcess = transforms.Resize(224, BICUBIC)``, applied
to the normalised batch on the device whenever it is not 224 x 224, then a 1-channel batch is
repeated to 3 channels). Every source then takes that batch instead of resizing and normalising
with its timm data config. The file streams' views (resize, crop, interpolation) follow the
released dataset classes too (:mod:`lmsrr.data.files`); these are the released compositions,
``[0, 1]`` tensors as ``ToTensor`` gives them:

==============  ==========================================  ==========================================
stream          training view (un-augmented; augmentation)  evaluation view
==============  ==========================================  ==========================================
seq-cifar10     ToTensor, Normalize(C10); RandomCrop(32,    ToTensor, Normalize(C10)
                pad 4) + flip
seq-cifar100    ToTensor, Normalize(C100); as above         ToTensor, Normalize(C100)
seq-tinyimg     ToTensor, Normalize(TINY); RandomCrop(64,   ToTensor, Normalize(TINY)
                pad 4) + flip
seq-imagenet-r  Resize((224, 224), bicubic), ToTensor,      Resize((256, 256), bicubic),
                Normalize(0, 1); RandomResizedCrop(224,     CenterCrop(224), ToTensor, Normalize(0, 1)
                bicubic) + flip from the original
seq-cub200      Resize((300, 300), bicubic), CenterCrop     Resize(256, bicubic), CenterCrop(224),
                (224), ToTensor, Normalize(IMAGENET);       ToTensor, Normalize(IMAGENET)
                RandomCrop(224) of the 300 x 300 + flip
seq-cars196     once: tensor Resize(224, bicubic, anti-     the same once-resized image, ToTensor,
                alias), CenterCrop(224); then ToTensor,     Normalize(0, 1)
                Normalize(0, 1); flip
rot-mnist       PIL rotate(angle of the task, nearest),     the same
                ToTensor (no normalisation)
==============  ==========================================  ==========================================

then, for every stream, ``Resize(224, bicubic)`` of the normalised float batch unless it is
already 224 x 224 (torchvision's tensor resize: shorter side to 224, antialias on) and the
channel repeat. Sources: ``datasets/seq_cifar10.py``, ``seq_cifar100.py``, ``seq_tinyimagenet.py``,
``seq_imagenet_r.py``, ``seq_cub200.py``, ``seq_cars196.py``, ``rot_mnist.py`` and
``datasets/transforms/rotation.py`` of the released code. The un-augmented training view is the
training transform with its random parts at their neutral setting (no padding offset, centre
crop, no flip); for CUB-200 that is not the released buffer's view (``Resize(224)`` of the
shorter side, not square), see the README.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

PIPELINES = ("native", "released")

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IDENTITY_STATS = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

# The statistics of each released dataset class (MEAN, STD / get_normalization_transform);
# ImageNet-R and Cars-196 normalise with mean 0, std 1, Rotated MNIST not at all.
RELEASED_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "seq-cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2615)),
    "seq-cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "seq-tinyimg": ((0.4802, 0.4480, 0.3975), (0.2770, 0.2691, 0.2821)),
    "seq-imagenet-r": IDENTITY_STATS,
    "seq-cub200": IMAGENET_STATS,
    "seq-cars196": IDENTITY_STATS,
    "rot-mnist": None,
}

RELEASED_SIZE = 224  # the released ViTs' resolution (vitProcess)


@dataclass(frozen=True)
class InputTransform:
    """[0, 1] float batch -> the batch every source takes: normalise with ``mean`` / ``std``
    (none when ``None``), then, unless already ``size`` x ``size``, torchvision's tensor
    ``Resize(size, BICUBIC)`` (shorter side to ``size``, the longer one scaled and truncated,
    antialiased), then 1 channel repeated to 3."""

    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    size: int = RELEASED_SIZE

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        h, w = x.shape[-2:]
        if (h, w) != (self.size, self.size):
            # torchvision's _compute_resized_output_size for an int size: the shorter side
            # becomes ``size``, the longer one int(size * long / short).
            oh, ow = (self.size, int(self.size * w / h)) if h <= w else (int(self.size * h / w), self.size)
            if (oh, ow) != (h, w):
                x = F.interpolate(x, size=(oh, ow), mode="bicubic", align_corners=False, antialias=True)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return x

    @property
    def output_size(self) -> int:
        return self.size


def released_input(stream: str) -> InputTransform:
    """The released input stage of ``stream`` (a name of :data:`RELEASED_STATS`)."""
    stats = RELEASED_STATS[stream]
    return InputTransform(*(stats if stats is not None else (None, None)))
