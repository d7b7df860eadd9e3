"""Helpers shared by the dataset modules: config -> stream options, and clear data errors."""
from __future__ import annotations

import os

from lmsrr.errors import DataNotFoundError


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
