"""Training augmentation: parameters drawn once per sample, executed batched on the device.

Two transform families, each defined once and executed by both loaders:

* :class:`Augment` (in-memory streams): a random crop of the original size after zero padding by
  ``pad`` pixels, and a random horizontal flip.
* :class:`ResizedCropAugment` (file streams): a random resized crop (torchvision's
  RandomResizedCrop rule: area fraction in ``scale``, log-uniform aspect ratio in ``ratio``, up to
  10 tries, then the largest centred crop of valid ratio) resized to ``size``, and a flip.

For a stream batch the loader draws the parameters on the host from the run's seeded generator
(a few numbers per image) and the torch or the DALI loader executes them; so both loaders apply
exactly the same crops and flips. Replayed buffer samples (stored un-augmented) go through
``augment(x)``: the same transform with parameters drawn on the device, so a replay step needs no
host sync.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]."""
    return x.float().div_(255.0)


def _rand(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    # A CPU generator draws on the CPU (then moves); otherwise draw where the data lives.
    if generator is not None and generator.device.type != torch.device(device).type:
        return torch.rand(n, generator=generator, device=generator.device).to(device)
    return torch.rand(n, generator=generator, device=device)


@dataclass
class Augment:
    """Random crop of the original size after zero padding by ``pad``; optional horizontal flip."""

    pad: int = 0
    flip: bool = False

    @property
    def enabled(self) -> bool:
        return self.pad > 0 or self.flip

    def sample(self, n: int, generator: torch.Generator | None = None, device="cpu"
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(anchors (n, 2) int64 in [-pad, pad]: the crop's top-left corner relative to the image,
        flips (n,) bool)."""
        anchors = (_rand(2 * n, generator, device) * (2 * self.pad + 1)).long().clamp_(max=2 * self.pad)
        anchors = anchors.view(n, 2) - self.pad
        flips = _rand(n, generator, device) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool, device=device)
        return anchors, flips

    def apply(self, x: torch.Tensor, anchors: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Crop windows at ``anchors`` (zero outside the image) and flip, in one gather; keeps dtype."""
        if self.pad > 0:
            x = crop_padded(x, anchors.to(x.device) + self.pad, self.pad)
        if self.flip:
            x = torch.where(flips.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 batch -> augmented float batch in [0, 1] (parameters drawn on x's device)."""
        if not self.enabled:
            return to_float(x)
        return to_float(self.apply(x, *self.sample(x.shape[0], generator, x.device)))


def crop_padded(x: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-sample (H, W) windows of x zero-padded by ``pad``; ``offsets`` (B, 2) index the padded
    image (row, col), each in [0, 2 * pad]."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = (offsets[:, 0:1] + torch.arange(h, device=x.device))[:, None, :, None]  # b,1,h,1
    cols = (offsets[:, 1:2] + torch.arange(w, device=x.device))[:, None, None, :]  # b,1,1,w
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[bi, ci, rows, cols]


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample random (H, W) crop of x zero-padded by ``pad`` on each side, in one gather."""
    anchors, _ = Augment(pad=pad).sample(x.shape[0], generator, x.device)
    return crop_padded(x, anchors + pad, pad)


# ---------------------------------------------------------------- file streams
def center_geometry(h: torch.Tensor, w: torch.Tensor, size: int) -> torch.Tensor:
    """The un-augmented view of an (h, w) image at resolution ``size``: resize the shorter side to
    ``size`` (the longer side scaled and floored), then take the centred size x size crop.
    Returns (n, 4) int64: resized height, resized width, crop top, crop left."""
    h, w = h.long(), w.long()
    short = torch.minimum(h, w)
    rh = torch.where(h == short, torch.full_like(h, size), torch.div(h * size, short, rounding_mode="floor"))
    rw = torch.where(w == short, torch.full_like(w, size), torch.div(w * size, short, rounding_mode="floor"))
    rh, rw = rh.clamp(min=size), rw.clamp(min=size)
    return torch.stack([rh, rw, (rh - size) // 2, (rw - size) // 2], 1)


def resize_u8(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) or (B, C, H, W) uint8 -> ``size`` with antialiased bilinear filtering (what
    DALI's linear resize does); an image already at ``size`` is returned unchanged."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    batched = img.dim() == 4
    out = F.interpolate((img if batched else img[None]).float(), size=size, mode="bilinear",
                        antialias=True, align_corners=False)
    out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out if batched else out[0]


@dataclass
class ResizedCropAugment:
    """Random resized crop to ``size`` x ``size`` and a random horizontal flip."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    enabled: bool = True

    def sample_windows(self, hw: torch.Tensor, generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop windows for images of sizes ``hw`` (n, 2): ((n, 4) int64 top, left, height, width;
        (n,) bool flips), drawn on hw's device. Disabled: the full image, no flip."""
        device = hw.device
        n = hw.shape[0]
        h, w = hw[:, 0].long(), hw[:, 1].long()
        if not self.enabled:
            zeros = torch.zeros_like(h)
            return torch.stack([zeros, zeros, h, w], 1), torch.zeros(n, dtype=torch.bool, device=device)
        tries = 10
        area = (h * w).float()[:, None]
        u = _rand(3 * n * tries, generator, device).view(3, n, tries)
        target = area * (self.scale[0] + u[0] * (self.scale[1] - self.scale[0]))
        log_r = math.log(self.ratio[0]) + u[1] * (math.log(self.ratio[1]) - math.log(self.ratio[0]))
        ar = torch.exp(log_r)
        cw = torch.round(torch.sqrt(target * ar)).long()
        ch = torch.round(torch.sqrt(target / ar)).long()
        ok = (cw > 0) & (ch > 0) & (cw <= w[:, None]) & (ch <= h[:, None])
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full_like(h, -1))
        pick = first.clamp(min=0)[:, None]
        cw, ch = cw.gather(1, pick)[:, 0], ch.gather(1, pick)[:, 0]
        # Fallback (no try fitted): the largest centred crop whose ratio is within bounds.
        in_ratio = w.float() / h.float()
        fw = torch.where(in_ratio < self.ratio[0], w, torch.where(
            in_ratio > self.ratio[1], torch.round(h.float() * self.ratio[1]).long(), w))
        fh = torch.where(in_ratio < self.ratio[0], torch.round(w.float() / self.ratio[0]).long(), h)
        fallback = first < 0
        cw, ch = torch.where(fallback, fw, cw), torch.where(fallback, fh, ch)
        v = _rand(2 * n, generator, device).view(2, n)
        top = torch.where(fallback, (h - ch) // 2, (v[0] * (h - ch + 1).float()).long().clamp(max=h - ch))
        left = torch.where(fallback, (w - cw) // 2, (v[1] * (w - cw + 1).float()).long().clamp(max=w - cw))
        flips = (_rand(n, generator, device) < 0.5) if self.flip else torch.zeros(n, dtype=torch.bool, device=device)
        return torch.stack([top, left, ch, cw], 1), flips

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Replay: uint8 (B, C, S, S) stored views -> augmented float batch in [0, 1], batched on
        x's device (torchvision's roi_align samples each window onto the output grid)."""
        if not self.enabled:
            return to_float(x)
        from torchvision.ops import roi_align

        b = x.shape[0]
        hw = torch.tensor(x.shape[-2:], device=x.device).expand(b, 2)
        win, flips = self.sample_windows(hw, generator)
        top, left, ch, cw = win.float().unbind(1)
        boxes = torch.stack([torch.arange(b, device=x.device, dtype=torch.float32),
                             left, top, left + cw, top + ch], 1)
        # sampling_ratio=0: ceil(window / output) samples per output pixel and axis, averaged (an
        # antialiasing box filter when shrinking, plain bilinear sampling when enlarging).
        out = roi_align(x.float(), boxes, output_size=(self.size, self.size), spatial_scale=1.0,
                        sampling_ratio=0, aligned=True)
        out = torch.where(flips.view(-1, 1, 1, 1), out.flip(-1), out)
        return out.div_(255.0).clamp_(0.0, 1.0)


@dataclass
class CropAugment:
    """A random ``size`` x ``size`` crop of the image resized to ``base`` x ``base`` (bicubic), and
    a random horizontal flip: CUB-200's released training transform (``Resize((300, 300))``,
    ``RandomCrop(224)``, flip)."""

    base: int
    size: int
    flip: bool = True
    enabled: bool = True

    def sample_windows(self, hw: torch.Tensor, generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """((n, 4) int64 windows top, left, height, width in the resized image; (n,) bool flips).
        Disabled: the centred window, no flip."""
        device = hw.device
        n = hw.shape[0]
        room = self.base - self.size
        if self.enabled:
            corner = (_rand(2 * n, generator, device) * (room + 1)).long().clamp_(max=room).view(n, 2)
        else:
            corner = torch.full((n, 2), int(round(room / 2.0)), dtype=torch.long, device=device)
        flips = (_rand(n, generator, device) < 0.5) if self.enabled and self.flip else \
            torch.zeros(n, dtype=torch.bool, device=device)
        side = torch.full((n, 2), self.size, dtype=torch.long, device=device)
        return torch.cat([corner, side], 1), flips

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Replay: uint8 (B, C, S, S) stored views -> augmented float batch in [0, 1]: resized to
        ``base`` (bicubic, antialiased), cropped at random windows, flipped; on x's device."""
        if not self.enabled:
            return to_float(x)
        b = x.shape[0]
        big = F.interpolate(x.float(), size=(self.base, self.base), mode="bicubic", align_corners=False,
                            antialias=True)
        hw = torch.tensor([self.base, self.base], device=x.device).expand(b, 2)
        win, flips = self.sample_windows(hw, generator)
        out = _gather_windows(big, win[:, :2], self.size)
        out = torch.where(flips.view(-1, 1, 1, 1), out.flip(-1), out)
        return out.div_(255.0).clamp_(0.0, 1.0)


def _gather_windows(x: torch.Tensor, corners: torch.Tensor, size: int) -> torch.Tensor:
    """Per-sample ``size`` x ``size`` windows of x at ``corners`` (B, 2) (row, col), in one gather."""
    b, c = x.shape[:2]
    ar = torch.arange(size, device=x.device)
    rows = (corners[:, 0:1] + ar)[:, None, :, None]
    cols = (corners[:, 1:2] + ar)[:, None, None, :]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return x[bi, ci, rows, cols]
