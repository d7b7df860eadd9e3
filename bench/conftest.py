"""pytest hooks and the ``measure`` fixture for the kernel benchmarks (see bench_common.py)."""
from __future__ import annotations

import pytest
import torch

from bench_common import _NOTES, _RESULTS, ENV, HAS_CUDA, sync


@pytest.fixture
def measure(benchmark, request):
    """measure(fn, case=..., provider=..., bytes_moved=None, rounds=...): time ``fn`` (synchronised
    inside the timed body), then run it once more for the peak-memory figure (CUDA)."""

    def run(fn, *, op, case, provider, bytes_moved=None, images=None, rounds=None, warmup=2):
        def body():
            fn()
            sync()

        for _ in range(warmup):  # compile / autotune / first-launch costs stay out of the timing
            body()
        rounds = rounds or (50 if HAS_CUDA else 5)
        benchmark.pedantic(body, rounds=rounds, iterations=1, warmup_rounds=0)
        mean = benchmark.stats.stats.mean
        info = {"op": op, "case": case, "provider": provider, "mean_ms": mean * 1e3, **ENV}
        if images:
            info["img_s"] = images / mean
        if bytes_moved:
            info["GB/s"] = bytes_moved / mean / 1e9
            if ENV["peak_GBps"]:
                info["%peak"] = 100 * info["GB/s"] / ENV["peak_GBps"]
        if HAS_CUDA:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            body()
            info["peak_MiB"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        benchmark.extra_info.update(info)
        _RESULTS.append(info)

    return run


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["lmsrr"] = dict(ENV)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _RESULTS:
        return
    tr = terminalreporter
    tr.section("lmsrr kernel benchmarks")
    tr.write_line(f"device: {ENV['device']}   revision: {ENV['revision']}   date: {ENV['date']}")
    if ENV["peak_GBps"]:
        tr.write_line(f"theoretical memory bandwidth: {ENV['peak_GBps']:.0f} GB/s")
    for text in _NOTES:
        tr.write_line(f"note: {text}")
    eager = {(r["op"], r["case"]): r["mean_ms"] for r in _RESULTS if r["provider"] == "eager"}
    tr.write_line(f"{'op':<16}{'case':<34}{'provider':<13}{'mean ms':>10}{'vs eager':>10}{'GB/s':>10}{'%peak':>8}{'peak MiB':>10}")
    for r in sorted(_RESULTS, key=lambda r: (r["op"], r["case"], r["provider"])):
        base = eager.get((r["op"], r["case"]))
        speed = f"{base / r['mean_ms']:.2f}x" if base else "-"
        gbs = f"{r['GB/s']:.1f}" if "GB/s" in r else "-"
        pk = f"{r['%peak']:.0f}%" if "%peak" in r else "-"
        mem = f"{r['peak_MiB']:.1f}" if "peak_MiB" in r else "-"
        tr.write_line(f"{r['op']:<16}{r['case']:<34}{r['provider']:<13}{r['mean_ms']:>10.3f}{speed:>10}{gbs:>10}{pk:>8}{mem:>10}")

    steps = [r for r in _RESULTS if "img_s" in r]
    if steps:
        tr.section("lmsrr training step (images/s, ratio to the released four-pass step)")
        base = {r["case"]: r["img_s"] for r in steps if r["provider"] == "released"}
        tr.write_line(f"{'case':<40}{'provider':<12}{'img/s':>10}{'vs released':>13}")
        for r in sorted(steps, key=lambda r: (r["case"], r["provider"])):
            ratio = f"{r['img_s'] / base[r['case']]:.2f}x" if r["case"] in base else "-"
            tr.write_line(f"{r['case']:<40}{r['provider']:<12}{r['img_s']:>10.1f}{ratio:>13}")
