"""The LMSRR network: timm sources split into frozen prefix and trainable top, MSIDF, ARO."""
from lmsrr.models.net import LMSRRNet, build_net
from lmsrr.models.source import Source, SourceSpec, parse_sources

__all__ = ["LMSRRNet", "Source", "SourceSpec", "build_net", "parse_sources"]
