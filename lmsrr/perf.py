"""Throughput, data-loading share, peak memory and (on GPU) model FLOPs utilisation."""
from __future__ import annotations

import resource
import time

import torch

# Dense peak tensor throughput (FLOP/s) by device-name fragment and autocast dtype; fp32 means
# TF32 tensor cores where they exist. Unknown devices report no MFU rather than a guess.
PEAK_FLOPS = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 494e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 494e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 156e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "fp32": 183e12},
}


def peak_flops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, table in PEAK_FLOPS.items():
        if key in name:
            return table.get(precision)
    return None


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def count_flops(fn) -> int:
    """FLOPs of running ``fn()`` once (forward and backward ops alike), by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


class StepTimer:
    """Accumulates wall time spent waiting for data and in whole steps between log points."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.t0 = time.perf_counter()
        self.data_s = 0.0
        self.images = 0
        self.steps = 0

    def data(self, seconds: float):
        self.data_s += seconds

    def step(self, images: int):
        self.images += images
        self.steps += 1

    def summary(self) -> dict:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        return {"throughput/img_s": self.images / wall, "throughput/steps_s": self.steps / wall,
                "time/data_share": self.data_s / wall}
