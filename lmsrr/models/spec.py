"""Parse ``--sources``: ``name(key=value,...)`` items separated by top-level commas.

Values are read as int, float, bool (true/false) or string; ``a/b/c`` is a tuple. The key
``input_size`` is ours (the source's input resolution; models that take an ``img_size`` -- ViTs,
Swin, EVA, LeViT -- also get it as that);
every other key goes to ``timm.create_model``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lmsrr.errors import ConfigError


@dataclass
class SourceSpec:
    name: str
    kwargs: dict = field(default_factory=dict)
    input_size: int | None = None

    def __str__(self) -> str:
        return self.name


def _value(text: str):
    text = text.strip()
    if "/" in text:
        return tuple(_value(t) for t in text.split("/"))
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _split_top_level(text: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"sources={text!r}: unbalanced ')'")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise ConfigError(f"sources={text!r}: unbalanced '('")
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_sources(text: str) -> list[SourceSpec]:
    specs = []
    for item in _split_top_level(text):
        name, _, rest = item.partition("(")
        name = name.strip()
        kwargs = {}
        if rest:
            if not rest.endswith(")"):
                raise ConfigError(f"source {item!r}: arguments must end with ')'")
            for kv in _split_top_level(rest[:-1]):
                key, eq, val = kv.partition("=")
                if not eq or not key.strip():
                    raise ConfigError(f"source {item!r}: expected key=value, got {kv!r}")
                kwargs[key.strip()] = _value(val)
        input_size = kwargs.pop("input_size", None)
        if input_size is not None and (not isinstance(input_size, int) or input_size < 1):
            raise ConfigError(f"source {item!r}: input_size must be a positive integer")
        specs.append(SourceSpec(name, kwargs, input_size))
    if not specs:
        raise ConfigError("sources must name at least one timm model")
    return specs
