"""Registry of stream builders: ``@register_dataset("seq-x")`` on a function returning a stream.

A builder registered with ``takes_path=True`` is named ``name:PATH`` on the command line (e.g.
``folder:/data/my-images``) and reads its path from ``data_cfg.stream`` itself.
"""
from __future__ import annotations

import difflib
import os
from typing import Callable

from lmsrr.data.images import SHOW_PROGRESS
from lmsrr.errors import ConfigError
from lmsrr.inputs import released_input

_BUILDERS: dict[str, Callable] = {}
_TAKES_PATH: set[str] = set()


def register_dataset(name: str, takes_path: bool = False):
    def deco(fn):
        if name in _BUILDERS:
            raise ValueError(f"stream {name!r} is registered twice")
        _BUILDERS[name] = fn
        if takes_path:
            _TAKES_PATH.add(name)
        return fn

    return deco


def available_streams() -> list[str]:
    return sorted(f"{n}:PATH" if n in _TAKES_PATH else n for n in _BUILDERS)


def split_stream_name(stream: str) -> tuple[str, str | None]:
    """('folder', '/data/x') for 'folder:/data/x'; (name, None) for a stream without a path."""
    kind, sep, path = stream.partition(":")
    if sep and kind in _TAKES_PATH:
        return kind, path
    return stream, None


def stream_label(stream: str) -> str:
    """A name for the stream that is safe in a file name: 'folder:/data/my-images' gives
    'folder-my-images' (run directories are named after it)."""
    kind, path = split_stream_name(stream)
    if path is None:
        return stream
    base = os.path.basename(os.path.normpath(path)) or "root"
    return f"{kind}-{''.join(c if c.isalnum() or c in '-_.' else '_' for c in base)}"


def check_stream_name(stream: str) -> None:
    """Raise :class:`ConfigError` (with the closest name) unless ``stream`` names a registered
    stream (with a path exactly for the streams read from a folder)."""
    name, path = split_stream_name(stream)
    if name not in _BUILDERS or (name in _TAKES_PATH) != (path is not None):
        close = difflib.get_close_matches(name, _BUILDERS, n=1)
        hint = f" (did you mean {close[0] + ':PATH' if close[0] in _TAKES_PATH else close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown stream {stream!r}{hint}; available: {', '.join(available_streams())}"
        )


def build_stream(data_cfg, progress: bool = True):
    """Build the stream named by ``data_cfg.stream`` (a :class:`ContinualStream`); ``progress``:
    show the bars of an image scan or decode it needs."""
    check_stream_name(data_cfg.stream)
    name = split_stream_name(data_cfg.stream)[0]
    token = SHOW_PROGRESS.set(progress)
    try:
        stream = _BUILDERS[name](data_cfg)
    finally:
        SHOW_PROGRESS.reset(token)
    if data_cfg.pipeline == "released":  # the builders made the released views; add the input stage
        stream.input_transform = released_input(name)
    return stream
