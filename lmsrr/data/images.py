"""Image files: decoding, and the scan that finds unreadable files before training starts.

A corrupt file must never stop a run in the middle of a task, and DALI's decoders cannot skip a
bad sample. So file streams scan their images once when the stream is built (threads, progress
bar): each file is opened and decoded (JPEG at reduced scale, which still reads every byte of the
compressed stream), its size recorded for the crop geometry, and every unreadable file reported
with its path and left out. ``--no-verify-images`` only reads the headers (faster; a file that is
truncated after its header then fails when it is decoded).
"""
from __future__ import annotations

import contextvars
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from tqdm.auto import tqdm

from lmsrr.data.augment import resize_u8
from lmsrr.data.common import one_line
from lmsrr.errors import DataError

log = logging.getLogger("lmsrr.data")

# Whether the scan and decode bars show when a caller does not say: the stream being built
# follows the run's --progress / --no-progress (set by lmsrr.data.registry.build_stream).
SHOW_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar("lmsrr_show_progress", default=True)


def _show(progress: bool | None) -> bool:
    return SHOW_PROGRESS.get() if progress is None else progress


# What every decoder here reads (torchvision, DALI on the CPU and on the GPU).
SUPPORTED_FORMATS = {"JPEG", "PNG", "WEBP", "MPO"}  # MPO: multi-picture JPEGs from some cameras


def decode_rgb(path: str) -> torch.Tensor:
    """(3, H, W) uint8; EXIF orientation ignored (as in DALI with ``adjust_orientation=False``)."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    img = decode_image(read_file(path), mode=ImageReadMode.RGB)
    if img.dtype != torch.uint8:  # 16-bit PNGs decode to uint16
        img = torch.div(img.to(torch.int32), 257, rounding_mode="floor").to(torch.uint8)
    return img


def probe(path: str, verify: bool = True) -> tuple[int, int] | str:
    """(height, width) of a readable image, or the reason it is unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format not in SUPPORTED_FORMATS:
                return f"unsupported format {im.format}"
            w, h = im.size
            if verify:
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                im.load()
        if h < 1 or w < 1:
            return "empty image"
        return h, w
    except Exception as e:  # PIL raises many types for broken files; all mean "unreadable"
        return f"{type(e).__name__}: {one_line(e)}"


def scan_images(paths: list[str], desc: str, verify: bool = True, threads: int = 0,
                progress: bool | None = None) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """Probe every file. Returns (hw (N, 2) int64 with zeros for bad files, indices of readable
    files, [(path, reason)] of unreadable ones)."""
    threads = threads or min(16, os.cpu_count() or 1)
    hw = torch.zeros(len(paths), 2, dtype=torch.long)
    good, bad = [], []
    with ThreadPoolExecutor(threads) as pool:  # PIL releases the GIL while decoding
        results = pool.map(lambda p: probe(p, verify), paths, chunksize=64)
        for i, r in enumerate(tqdm(results, total=len(paths), desc=desc, disable=not _show(progress),
                                   leave=False, mininterval=1.0)):
            if isinstance(r, str):
                bad.append((paths[i], r))
            else:
                hw[i] = torch.tensor(r)
                good.append(i)
    return hw, good, bad


def report_unreadable(stream_name: str, bad: list[tuple[str, str]]) -> None:
    if not bad:
        return
    lines = "\n".join(f"  {p} ({why})" for p, why in bad[:20])
    more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    log.warning("%s: skipped %d unreadable image file(s):\n%s%s", stream_name, len(bad), lines, more)


def check_classes(name: str, items, offset: int, good: set[int], reasons: dict[str, str], n_classes: int,
                  what: str, required: bool = True) -> None:
    """Every class keeps at least one readable ``what`` image after the scan (``required``): a
    class whose files are all unreadable would otherwise train on nothing without any sign of it.
    For the test split (not ``required``) a class without readable images is a warning: one
    unreadable file can be a small class's only test image, and its accuracy is then taken over
    the other classes."""
    listed: list[list[int]] = [[] for _ in range(n_classes)]
    for i, (_, y) in enumerate(items):
        if not 0 <= y < n_classes:
            raise DataError(f"{name}: {items[i][0]} has label {y}, outside 0..{n_classes - 1}")
        listed[y].append(i)
    for c, idx in enumerate(listed):
        if any(i + offset in good for i in idx):
            continue
        if not idx:
            problem = f"class {c} has no {what} images"
        else:
            folders = {os.path.dirname(os.path.abspath(items[i][0])) for i in idx}
            where = f"class folder {folders.pop()}" if len(folders) == 1 else f"class {c}"
            first = items[idx[0]][0]
            problem = (f"every {what} image of {where} is unreadable ({len(idx)} file(s); "
                       f"{os.path.basename(first)}: {reasons.get(first, 'unreadable')})")
        if required:
            raise DataError(f"{name}: {problem}; replace them with readable images or re-extract the dataset")
        log.warning("%s: %s; it is left out of the evaluation", name, problem)


def _decode_to(path: str, size: int):
    from PIL import Image

    import numpy as np

    try:
        with Image.open(path) as im:
            if im.format not in SUPPORTED_FORMATS:
                return f"unsupported format {im.format}"
            arr = np.asarray(im.convert("RGB"))
    except Exception as e:  # any decoding failure means the file is unreadable
        return f"{type(e).__name__}: {one_line(e)}"
    img = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    return resize_u8(img, (size, size))


def decode_all(paths: list[str], size: int, desc: str, threads: int = 0, progress: bool | None = None
               ) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """Decode every file into one uint8 (N, 3, size, size) tensor (resized when not already that
    size). Returns (images of the readable files, their indices, [(path, reason)] of the rest)."""
    threads = threads or min(16, os.cpu_count() or 1)
    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    good, bad = [], []
    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(lambda p: _decode_to(p, size), paths, chunksize=64)
        for i, r in enumerate(tqdm(results, total=len(paths), desc=desc, disable=not _show(progress),
                                   leave=False, mininterval=1.0)):
            if isinstance(r, str):
                bad.append((paths[i], r))
            else:
                out[len(good)] = r
                good.append(i)
    return out[: len(good)], good, bad
