"""Helpers shared by the dataset modules: config -> stream options, clear data errors, and the
content checks every reader runs before a stream is built."""
from __future__ import annotations

import os

import numpy as np

from lmsrr.errors import DataError, DataNotFoundError


def loader_kwargs(data_cfg) -> dict:
    return dict(loader=data_cfg.loader, workers=data_cfg.loader_workers)


def require_dir(path: str, stream: str, what: str, source: str, download_hint: str = "") -> str:
    """``path`` must be a folder; otherwise say where it was expected and how to get it."""
    if not os.path.isdir(path):
        hint = download_hint or "put it there or point --data-root at its parent"
        raise DataNotFoundError(f"{stream}: dataset not found; expected {what} at {os.path.abspath(path)} "
                                f"(get it from {source}); {hint}")
    return path


def require_file(path: str, stream: str) -> str:
    if not os.path.isfile(path):
        raise DataNotFoundError(f"{stream}: incomplete dataset: {os.path.abspath(path)} is missing")
    return path


def require_files(paths: list[str], stream: str) -> None:
    """Every file an annotation lists must exist (a partial extraction is an error, not a skip)."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(os.path.abspath(p) for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataNotFoundError(f"{stream}: incomplete dataset: {len(missing)} listed image file(s) are "
                                f"missing: {shown}{more}; re-extract the dataset")


def one_line(text) -> str:
    """A foreign exception's text on one line (some span several), so an error stays one message."""
    return " ".join(str(text).split())


def plain_name(name: str, stream: str, where: str) -> str:
    """A name used as one path component: no path separators, NUL or '.'/'..' (which would point
    elsewhere, or fail inside the file system calls)."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise DataError(f"{stream}: {where}: {name!r} is not a valid file or folder name; re-extract the dataset")
    return name


def os_reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def read_bytes(path: str, stream: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:  # EACCES, EISDIR, EIO: the file exists but cannot be read
        raise DataError(f"{stream}: cannot read {os.path.abspath(path)}: {os_reason(e)}") from e


def read_text_lines(path: str, stream: str) -> list[str]:
    """The lines of an annotation file (UTF-8); unreadable or binary files name the file."""
    data = read_bytes(require_file(path, stream), stream)
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{stream}: {os.path.abspath(path)} is not a text file (byte {e.start} is not "
                        f"UTF-8); re-extract the dataset") from e


def list_dir(path: str, stream: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError as e:
        raise DataError(f"{stream}: cannot list the folder {os.path.abspath(path)}: {os_reason(e)}") from e


def parse_int(text: str, stream: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{stream}: {where}: {text!r} is not an integer; re-extract the dataset") from None


def check_labels(stream: str, y, n_classes: int, where: str, require_all: bool = True) -> None:
    """Labels are integers in [0, n_classes) and (``require_all``) every class occurs: a class
    without samples would train or evaluate on nothing without any sign of it."""
    y = np.asarray(y)
    if y.size and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        i = int(np.flatnonzero((y < 0) | (y >= n_classes))[0])
        raise DataError(f"{stream}: {where}: label {int(y[i])} at position {i} is out of range "
                        f"0..{n_classes - 1}; re-extract the dataset")
    if require_all:
        missing = np.setdiff1d(np.arange(n_classes), y)
        if missing.size:
            shown = ", ".join(str(int(c)) for c in missing[:10])
            more = f" and {missing.size - 10} more" if missing.size > 10 else ""
            raise DataError(f"{stream}: {where}: no sample of class(es) {shown}{more} (of {n_classes}); "
                            f"the dataset is incomplete, re-extract it")


def fetch_with(stream: str, root: str, fetch) -> None:
    """Run a torchvision downloader ``fetch()`` into ``root``, turning its failures (no network, a
    root that is a file or not writable) into one message."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise DataError(f"{stream}: --data-root {os.path.abspath(root)} is a file, not a folder; "
                        f"--download needs a folder to unpack the dataset into")
    try:
        fetch()
    except Exception as e:  # urllib, tarfile, OSError and checksum failures all mean "not fetched"
        raise DataNotFoundError(f"{stream}: --download into {os.path.abspath(root)} failed "
                                f"({type(e).__name__}: {one_line(e)}); download the dataset by hand") from e
