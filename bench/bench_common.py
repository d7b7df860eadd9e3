"""Helpers shared by the benchmarks (imported by bench/conftest.py and the bench modules).

Benchmark harness for bench/test_bench_*.py (pytest-benchmark).

Run ``pytest bench/ --benchmark-only`` (add ``-m gpu`` on a GPU machine for the real-size cases
only). Each timed body ends with a device synchronisation, so GPU time is measured, not launch
time. On CPU the Triton provider is skipped and the sizes that would take minutes per round are
scaled down (the summary says which). The summary printed at the end holds device, git revision
and date, every case's mean time, speed-up over eager and achieved memory bandwidth; the same
fields go into ``--benchmark-json`` output via ``extra_info`` / machine info.
"""
from __future__ import annotations

import datetime
import os
import subprocess

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROVIDERS = ["eager", "compile", "triton"]

_RESULTS: list = []
_NOTES: list = []


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "kernels", "bench"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev or "unknown") + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def device_name() -> str:
    if HAS_CUDA:
        return torch.cuda.get_device_name(0)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__})"


def peak_bandwidth_gbs() -> float | None:
    """Theoretical DRAM bandwidth of the GPU (GB/s), from its memory clock and bus width."""
    if not HAS_CUDA:
        return None
    props = torch.cuda.get_device_properties(0)
    clock = getattr(props, "memory_clock_rate", None)      # kHz
    bus = getattr(props, "memory_bus_width", None)         # bits
    if clock and bus:
        return 2 * clock * 1e3 * bus / 8 / 1e9
    table = {"H100 SXM": 3350, "H100 PCIe": 2000, "H100": 3350, "H200": 4800, "A100-SXM4-80GB": 2039,
             "A100": 1555, "L40S": 864, "A10": 600, "RTX 4090": 1008}
    name = torch.cuda.get_device_name(0)
    for key, value in table.items():
        if key in name:
            return float(value)
    return None


ENV = {"device": device_name(), "revision": git_revision(),
       "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "peak_GBps": peak_bandwidth_gbs()}


def sync() -> None:
    if HAS_CUDA:
        torch.cuda.synchronize()


def note(text: str) -> None:
    if text not in _NOTES:
        _NOTES.append(text)


def skip_unavailable(provider: str) -> None:
    if provider == "triton" and not HAS_CUDA:
        pytest.skip("Triton provider needs a CUDA device (the CPU interpreter is for tests, not timing)")
    if provider == "compile" and os.environ.get("LMSRR_BENCH_NO_COMPILE"):
        pytest.skip("torch.compile provider disabled by LMSRR_BENCH_NO_COMPILE")


