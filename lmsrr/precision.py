"""Mixed precision: which autocast dtype to use, and whether a gradient scaler is needed."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

log = logging.getLogger("lmsrr")


@dataclass
class Precision:
    name: str  # fp32 | bf16 | fp16
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler | None:
        # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range.
        return torch.amp.GradScaler(device.type) if self.name == "fp16" else None


def resolve_precision(requested: str, device: torch.device) -> Precision:
    if requested != "auto":
        p = Precision(requested, "requested")
    elif device.type == "cuda" and torch.cuda.is_bf16_supported():
        p = Precision("bf16", "auto: CUDA device with bf16 support")
    elif device.type == "cuda":
        p = Precision("fp16", "auto: CUDA device without bf16 support")
    else:
        p = Precision("fp32", f"auto: {device.type} device")
    log.info("precision: %s (%s)", p.name, p.reason)
    return p
