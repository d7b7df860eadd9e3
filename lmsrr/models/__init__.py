"""The LMSRR network: timm sources split into frozen prefix and trainable top, MSIDF, ARO."""
from lmsrr.models.net import (LMSRRNet, TrainableTop, build_net, check_sources, frozen_fingerprint,
                              trainable_state, weights_description)
from lmsrr.models.source import Source, SourceSpec, parse_sources

__all__ = ["LMSRRNet", "TrainableTop", "Source", "SourceSpec", "build_net", "check_sources",
           "parse_sources"]
