"""Registry of stream builders: ``@register_dataset("seq-x")`` on a function returning a stream."""
from __future__ import annotations

import difflib
from typing import Callable

from lmsrr.errors import ConfigError

_BUILDERS: dict[str, Callable] = {}


def register_dataset(name: str):
    def deco(fn):
        if name in _BUILDERS:
            raise ValueError(f"stream {name!r} is registered twice")
        _BUILDERS[name] = fn
        return fn

    return deco


def available_streams() -> list[str]:
    return sorted(_BUILDERS)


def check_stream_name(name: str) -> None:
    """Raise :class:`ConfigError` (with the closest name) unless ``name`` is a registered stream."""
    if name not in _BUILDERS:
        close = difflib.get_close_matches(name, _BUILDERS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown stream {name!r}{hint}; available: {', '.join(available_streams())}"
        )


def build_stream(data_cfg):
    """Build the stream named by ``data_cfg.stream`` (a :class:`ContinualStream`)."""
    check_stream_name(data_cfg.stream)
    return _BUILDERS[data_cfg.stream](data_cfg)
