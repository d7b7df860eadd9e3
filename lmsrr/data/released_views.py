"""The released dataset classes' views of image files (``--pipeline released``), made with the
same resamplers: PIL's bicubic through torchvision's functional ops on PIL images (ImageNet-R,
CUB-200), torchvision's antialiased bicubic on uint8 tensors (Cars-196's one-off preprocessing).
The compositions are listed in :mod:`lmsrr.inputs`.

A view is a resize (an int: the shorter side, torchvision's rule; a pair: exactly) and a centred
square crop; its augmented form is one of ``resized-crop`` (a random resized crop window of the
original, bicubic), ``crop`` (a random crop window of the resized image instead of the centred
one) or ``flip`` (the view itself); all flip half the time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

AUGMENTED_FORMS = ("resized-crop", "crop", "flip")


def decode_pil(path: str):
    """The file as the released classes open it: ``Image.open(path).convert('RGB')``."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def pil_to_u8(img) -> torch.Tensor:
    """PIL RGB image -> (3, H, W) uint8 (``ToTensor`` without the division)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def resized_hw(h: int, w: int, size) -> tuple[int, int]:
    """torchvision's output size of ``Resize(size)`` for an (h, w) image."""
    if not isinstance(size, int):
        return int(size[0]), int(size[1])
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def center_offset(length: int, crop: int) -> int:
    """torchvision's CenterCrop offset: ``int(round((length - crop) / 2))`` (half to even)."""
    return int(round((length - crop) / 2.0))


@dataclass(frozen=True)
class ReleasedView:
    """Resize to ``resize`` (bicubic), then the centred ``crop`` x ``crop``. ``tensor_resize``:
    resize the decoded uint8 tensor (antialiased, rounded) instead of the PIL image.
    ``augmented``: how the training view is augmented (one of :data:`AUGMENTED_FORMS`)."""

    resize: int | tuple[int, int]
    crop: int
    tensor_resize: bool = False
    augmented: str = "flip"

    def geometry(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(resized height, resized width, crop top, crop left)."""
        rh, rw = resized_hw(h, w, self.resize)
        return rh, rw, center_offset(rh, self.crop), center_offset(rw, self.crop)

    def _resized(self, img):
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        rh, rw = resized_hw(img.height, img.width, self.resize)
        if self.tensor_resize:
            return TF.resize(pil_to_u8(img), [rh, rw], InterpolationMode.BICUBIC, antialias=True)
        return pil_to_u8(TF.resize(img, [rh, rw], InterpolationMode.BICUBIC))

    def view(self, img) -> torch.Tensor:
        """The un-augmented view of a decoded PIL image: (3, crop, crop) uint8."""
        r = self._resized(img)
        top, left = center_offset(r.shape[1], self.crop), center_offset(r.shape[2], self.crop)
        return r[:, top:top + self.crop, left:left + self.crop]

    def augmented_view(self, img, window, flip: bool) -> torch.Tensor:
        """The training view at ``window`` ((top, left, height, width): on the original image for
        ``resized-crop``, on the resized image for ``crop``; unused for ``flip``)."""
        if self.augmented == "resized-crop":
            import torchvision.transforms.functional as TF
            from torchvision.transforms import InterpolationMode

            top, left, h, w = (int(v) for v in window)
            a = pil_to_u8(TF.resized_crop(img, top, left, h, w, [self.crop, self.crop],
                                          InterpolationMode.BICUBIC))
        elif self.augmented == "crop":
            top, left, h, w = (int(v) for v in window)
            a = self._resized(img)[:, top:top + h, left:left + w]
        else:
            a = self.view(img)
        return a.flip(-1) if flip else a
