"""Registry of methods: ``@register_method("name")`` on a :class:`ContinualMethod` subclass."""
from __future__ import annotations

import difflib

from lmsrr.errors import ConfigError

_METHODS: dict[str, type] = {}


def register_method(name: str):
    def deco(cls):
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return deco


def available_methods() -> list[str]:
    return sorted(_METHODS)


def method_class(name: str) -> type:
    if name not in _METHODS:
        close = difflib.get_close_matches(name, _METHODS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown method {name!r}{hint}; available: {', '.join(available_methods())}")
    return _METHODS[name]


def build_method(cfg, net, stream, device):
    return method_class(cfg.method.name)(cfg, net, stream, device)
