"""Fractal image categories from iterated function systems (formula-driven pre-training data).

A category is one iterated function system (IFS): N affine maps w_i(x) = A_i x + t_i of the
plane, picked with probabilities p_i proportional to |det A_i|. Its attractor is drawn with the
chaos game: walkers start anywhere, apply a randomly picked map at every step, and after a short
burn-in every position they visit lies (up to rounding) on the attractor.

Maps are sampled the way Anderson & Farrell ("Improving Fractal Pre-training", WACV 2022) do, so
no category has to be rejected for degenerate shapes: A_i = R(theta_i) diag(s1_i, s2_i)
R(phi_i) diag(d_i) with random rotations, reflections d_i in {+1, -1}^2 and singular values
rescaled so that the "sigma factor" sum_i (s1_i + 2 s2_i) lies in [(5 + N) / 2, (6 + N) / 2];
systems well inside that band look like fractals rather than dust or a filled blob. Singular
values are capped at 0.95, which keeps every map contractive.

An instance of a category jitters its maps (singular values, rotations, translations), and draws
its own rotation, size and position in the image, foreground tint and background (a flat colour
plus a linear gradient, dark on light or light on dark). Everything is seeded: image i of a set
comes from the chunk ``i // CHUNK`` whose generator is seeded from (seed, epoch, chunk), so a set
is the same whichever worker threads produced which chunks.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lmsrr.errors import UserError
from lmsrr.fields import check

CHUNK = 256  # images per generator seed: the unit of parallel work
_SIGMA_MAX = 0.95


@dataclass(frozen=True)
class FractalSettings:
    """What defines a generated image set; saved in every manifest next to the weights."""

    categories: int = 64
    images_per_category: int = 120
    image_size: int = 32
    maps_min: int = 2
    maps_max: int = 4
    walkers: int = 256  # chaos-game walkers per image
    steps: int = 28  # chaos-game steps per walker; positions after the burn-in are drawn
    burn_in: int = 12
    jitter: float = 0.1  # relative size of an instance's perturbation of its category's maps
    supersample: int = 2  # rendered at image_size * supersample, then averaged down
    seed: int = 0

    def __post_init__(self):
        check(self.categories >= 2, f"categories must be >= 2, got {self.categories}")
        check(self.images_per_category >= 1,
              f"images_per_category must be >= 1, got {self.images_per_category}")
        check(self.image_size >= 8, f"image_size must be >= 8, got {self.image_size}")
        check(2 <= self.maps_min <= self.maps_max <= 8,
              f"need 2 <= maps_min <= maps_max <= 8, got {self.maps_min}..{self.maps_max}")
        check(self.walkers >= 1, f"walkers must be >= 1, got {self.walkers}")
        check(0 <= self.burn_in < self.steps,
              f"need 0 <= burn_in < steps, got burn_in={self.burn_in}, steps={self.steps}")
        check(0 <= self.jitter <= 0.5, f"jitter must be in [0, 0.5], got {self.jitter}")
        check(1 <= self.supersample <= 4, f"supersample must be in 1..4, got {self.supersample}")

    @property
    def n_images(self) -> int:
        return self.categories * self.images_per_category

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Short hash of the settings: names a cached set."""
        text = ",".join(f"{k}={v}" for k, v in sorted(self.to_dict().items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _seed(*parts) -> int:
    """A 63-bit seed from any tuple: independent streams for categories and every chunk."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _uniform(g: torch.Generator, shape, lo=0.0, hi=1.0) -> torch.Tensor:
    return torch.rand(shape, generator=g) * (hi - lo) + lo


@dataclass
class Categories:
    """K iterated function systems, padded to maps_max maps (unused maps have probability 0).

    Parameters, each (K, M): s1, s2 singular values; theta, phi rotations; d1, d2 reflections;
    tx, ty translations; used (bool) which maps exist.
    """

    s1: torch.Tensor
    s2: torch.Tensor
    theta: torch.Tensor
    phi: torch.Tensor
    d1: torch.Tensor
    d2: torch.Tensor
    tx: torch.Tensor
    ty: torch.Tensor
    used: torch.Tensor

    @classmethod
    def sample(cls, s: FractalSettings) -> "Categories":
        g = torch.Generator().manual_seed(_seed(s.seed, "categories"))
        k, m = s.categories, s.maps_max
        n_maps = torch.randint(s.maps_min, s.maps_max + 1, (k,), generator=g)
        used = torch.arange(m)[None] < n_maps[:, None]
        sv = _uniform(g, (k, m, 2)).sort(dim=-1, descending=True).values
        theta, phi = _uniform(g, (k, m), 0, 2 * math.pi), _uniform(g, (k, m), 0, 2 * math.pi)
        signs = torch.randint(0, 2, (k, m, 2), generator=g).float() * 2 - 1
        t = _uniform(g, (k, m, 2), -1, 1)
        # Rescale the singular values onto the sigma-factor band for each system's map count.
        target = 0.5 * (5 + n_maps.float()) + _uniform(g, (k,)) * 0.5
        factor = ((sv[..., 0] + 2 * sv[..., 1]) * used).sum(1)
        sv = (sv * (target / factor)[:, None, None]).clamp(max=_SIGMA_MAX)
        return cls(sv[..., 0], sv[..., 1], theta, phi, signs[..., 0], signs[..., 1],
                   t[..., 0], t[..., 1], used)


def _rot(a: torch.Tensor) -> torch.Tensor:
    c, s = a.cos(), a.sin()
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def _instance_maps(cat: Categories, labels: torch.Tensor, jitter: float, g: torch.Generator):
    """Jittered maps of one instance per label: A (B, M, 2, 2), t (B, M, 2), cumulative p (B, M)."""
    b, m = labels.shape[0], cat.s1.shape[1]

    def jit(x, scale):
        return x[labels] + _uniform(g, (b, m), -1, 1) * jitter * scale

    s1 = (cat.s1[labels] * (1 + _uniform(g, (b, m), -1, 1) * jitter)).clamp(0.0, _SIGMA_MAX)
    s2 = (cat.s2[labels] * (1 + _uniform(g, (b, m), -1, 1) * jitter)).clamp(0.0, _SIGMA_MAX)
    theta, phi = jit(cat.theta, math.pi / 4), jit(cat.phi, math.pi / 4)
    diag = torch.diag_embed(torch.stack([s1 * cat.d1[labels], s2 * cat.d2[labels]], -1))
    a = _rot(theta) @ diag @ _rot(phi)
    t = torch.stack([jit(cat.tx, 0.5), jit(cat.ty, 0.5)], -1)
    used = cat.used[labels]
    # Picking maps by area keeps the walkers' density even over the attractor; the floor keeps
    # a near-singular map (a thin stroke) from never being picked.
    p = torch.where(used, (s1 * s2).clamp(min=0.02), torch.zeros_like(s1))
    cum = (p / p.sum(1, keepdim=True)).cumsum(1)
    cum[:, -1] = 1.0 + 1e-9  # rounding must never leave a uniform draw past the last map
    return a, t, cum


def _chaos_game(a, t, cum, walkers: int, steps: int, burn_in: int, g) -> torch.Tensor:
    """Positions visited after the burn-in: (B, walkers * (steps - burn_in), 2), the last
    step's positions last."""
    b = a.shape[0]
    x, y = _uniform(g, (b, walkers), -1, 1), _uniform(g, (b, walkers), -1, 1)
    # Every step's map choice is drawn in one call; coefficients are gathered step by step, so
    # memory stays at one step's worth (large images need many walkers).
    u = _uniform(g, (b, steps * walkers))
    coef = torch.cat([a.reshape(b, -1, 4), t], -1)  # (B, M, 6): a11 a12 a21 a22 t1 t2
    visited = []
    for step in range(steps):
        pick = torch.searchsorted(cum, u[:, step * walkers:(step + 1) * walkers].contiguous())
        pick.clamp_(max=cum.shape[1] - 1)
        c = coef.gather(1, pick[..., None].expand(-1, -1, 6)).permute(2, 0, 1)  # (6, B, walkers)
        x, y = c[0] * x + c[1] * y + c[4], c[2] * x + c[3] * y + c[5]
        if step >= burn_in:
            visited.append(torch.stack([x, y], -1))
    return torch.cat(visited, 1)


def _rasterise(pts: torch.Tensor, walkers: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Place each point cloud at a random rotation, size and position; coverage (B, 1, size, size)."""
    b = pts.shape[0]
    pts = pts @ _rot(_uniform(g, (b,), -math.pi, math.pi)).transpose(1, 2)
    # The frame comes from the last step's positions only: every walker has converged onto the
    # attractor by then, whereas a slow walker early on could stretch the frame; the few
    # earlier positions that fall outside it are dropped.
    last = pts[:, -walkers:]
    lo, hi = last.amin(1, keepdim=True), last.amax(1, keepdim=True)
    extent = (hi - lo).amax(-1, keepdim=True).clamp(min=1e-6)
    fill = _uniform(g, (b, 1, 1), 0.6, 0.95)
    span = (hi - lo) / extent * fill  # fraction of the image the figure spans on each axis
    offset = (1 - span) * _uniform(g, (b, 1, 2))
    uv = ((pts - lo) / extent * fill + offset) * size
    ij = uv.floor().long()
    inside = ((ij >= 0) & (ij < size)).all(-1)
    flat = ij[..., 1] * size + ij[..., 0] + torch.arange(b)[:, None] * size * size
    counts = torch.bincount(flat[inside], minlength=b * size * size)
    return (counts > 0).to(torch.float32).view(b, 1, size, size)


def _colourise(mask: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Tinted figure on a background: light on dark or dark on light, flat plus a gradient."""
    b, _, s, _ = mask.shape
    light_fg = torch.rand((b, 1, 1, 1), generator=g) < 0.5
    dark, bright = torch.rand((b, 3, 1, 1), generator=g) * 0.4, 0.6 + torch.rand((b, 3, 1, 1), generator=g) * 0.4
    fg = torch.where(light_fg, bright, dark)
    bg = torch.where(light_fg, torch.rand((b, 3, 1, 1), generator=g) * 0.4,
                     0.6 + torch.rand((b, 3, 1, 1), generator=g) * 0.4)
    ramp = torch.linspace(-0.5, 0.5, s)
    direction = torch.rand((b, 1, 1, 1), generator=g) * 2 * math.pi
    gradient = (direction.cos() * ramp.view(1, 1, 1, s) + direction.sin() * ramp.view(1, 1, s, 1))
    bg = (bg + gradient * torch.rand((b, 1, 1, 1), generator=g) * 0.3).clamp(0, 1)
    return bg * (1 - mask) + fg * mask


def render(cat: Categories, labels: torch.Tensor, s: FractalSettings, g: torch.Generator) -> torch.Tensor:
    """One instance per label, as uint8 images (B, 3, image_size, image_size)."""
    a, t, cum = _instance_maps(cat, labels, s.jitter, g)
    pts = _chaos_game(a, t, cum, s.walkers, s.steps, s.burn_in, g)
    hi_res = s.image_size * s.supersample
    mask = _rasterise(pts, s.walkers, hi_res, g)
    if s.supersample > 1:  # antialiasing: coverage of each output pixel's sub-pixels
        mask = F.avg_pool2d(mask, s.supersample)
    return (_colourise(mask, g) * 255).round_().to(torch.uint8)


def chunk_labels(s: FractalSettings, chunk: int) -> torch.Tensor:
    """Labels of a chunk's images: image i shows category i mod K, so every chunk mixes them."""
    start = chunk * CHUNK
    return torch.arange(start, min(start + CHUNK, s.n_images)) % s.categories


def generate(s: FractalSettings, epoch: int = 0, workers: int = 1, progress: bool = False,
             cat: Categories | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole set of ``epoch`` (``epoch`` 0 is the cached set): uint8 images and labels.

    Chunks are independent, so ``workers`` threads render them side by side (torch releases the
    GIL in its kernels); the result does not depend on ``workers``.
    """
    cat = cat if cat is not None else Categories.sample(s)
    n_chunks = -(-s.n_images // CHUNK)

    def one(c: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(_seed(s.seed, "images", epoch, c))
        return render(cat, chunk_labels(s, c), s, g)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        parts = list(tqdm(pool.map(one, range(n_chunks)), total=n_chunks, leave=False,
                          desc=f"fractals (epoch {epoch})" if epoch else "fractals", disable=not progress))
    return torch.cat(parts), torch.arange(s.n_images) % s.categories


def cached(s: FractalSettings, cache_dir: str, workers: int = 1, progress: bool = False):
    """``generate(s)``, kept in ``cache_dir`` under the settings' hash and read back next time."""
    path = os.path.join(cache_dir, f"fractals-{s.key()}.pt")
    if os.path.isfile(path):
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # an unreadable cache is regenerated, not fatal
            saved = {"error": str(e)}
        if saved.get("settings") == s.to_dict():
            return saved["images"], saved["labels"]
    x, y = generate(s, workers=workers, progress=progress)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        torch.save({"settings": s.to_dict(), "images": x, "labels": y}, tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write the fractal cache {path!r}: {e.strerror}") from e
    return x, y


__all__ = ["CHUNK", "Categories", "FractalSettings", "cached", "generate", "render"]
