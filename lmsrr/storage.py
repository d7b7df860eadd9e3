"""Writing files so that a crash or a full disk never leaves a half-written one behind.

Every file of a run (checkpoints, results, the config) is written to ``<name>.tmp-<pid>``, flushed,
fsync'd and renamed over its final name. A failed write (no space left, quota, I/O error) removes
the temporary file and raises :class:`WriteError` saying what was written, where, how many bytes
it needed and how many were free; temporary files a killed writer left behind are removed with
:func:`remove_stale_temporaries` when the next run starts.
"""
from __future__ import annotations

import errno
import os
import re
import shutil

from lmsrr.errors import WriteError

_TMP = re.compile(r"\.tmp-\d+$")


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(f, data: bytes) -> None:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def atomic_write_bytes(path: str, data: bytes, what: str = "") -> None:
    """Write ``data`` to ``path`` atomically; :class:`WriteError` (temporary file removed) on failure."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            _write_all(f, data)
        os.replace(tmp, path)
    except OSError as e:
        remove_quietly(tmp)
        raise write_error(what or os.path.basename(path), path, len(data), e) from e
    fsync_dir(os.path.dirname(path) or ".")


def write_error(what: str, path: str, needed: int, e: OSError) -> WriteError:
    """One message: what could not be written where, why, and the space it needed."""
    reason = e.strerror or str(e)
    space = f"; it needed {format_bytes(needed)}"
    free = free_bytes(os.path.dirname(path) or ".")
    if free is not None:
        space += f", {format_bytes(free)} free on that file system"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += " (disk full or quota exceeded)"
    return WriteError(f"could not write {what} to {path}: {reason}{space}")


def free_bytes(folder: str) -> int | None:
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        return shutil.disk_usage(folder or ".").free
    except OSError:
        return None


def format_bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def remove_stale_temporaries(folder: str, depth: int = 2) -> list[str]:
    """Remove ``*.tmp-<pid>`` files under ``folder`` (``depth`` levels): a killed writer's leftovers,
    which would otherwise keep the disk full. Call only when no writer of this run is active."""
    removed = []
    if depth < 0 or not os.path.isdir(folder):
        return removed
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            removed += remove_stale_temporaries(entry.path, depth - 1)
        elif _TMP.search(entry.name):
            remove_quietly(entry.path)
            removed.append(entry.path)
    return removed
