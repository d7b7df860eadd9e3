"""What each kernel costs on a GPU, measured without one.

Every Triton kernel is compiled exactly as a real launch compiles it: through the JIT's
``warmup()`` with the wrappers' real integer arguments (their values decide Triton's
specialisations: ``== 1`` and divisibility by 16) and 16-byte aligned tensors (what the caching
allocator returns), under a stand-in driver that reports an sm_90 (or sm_80) target. The cubin
is then read with the ``cuobjdump`` that ships inside the triton package: registers, stack and
shared memory from ``-res-usage``; the widths of the global loads and the fences from ``-sass``;
spills from ``ptxas -v`` on the same PTX. Occupancy follows from the per-SM limits of an H100
SXM (sm_90) or A100 (sm_80).

    python -m kernels.resources                 # table, sm_90 and sm_80
    python -m kernels.resources --json out.json # also the rows as a list of objects
    python -m kernels.resources --markdown      # the table as Markdown (bench/RESULTS.md)

Needs a process where ``TRITON_INTERPRET`` is unset (that switch is read when triton is imported).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from kernels._util import Launch, aligned, interpret_mode  # noqa: F401 (Launch, aligned: re-exported)


# Per-SM limits used for occupancy (CUDA occupancy calculator values).
@dataclass(frozen=True)
class SMLimits:
    name: str
    regs: int = 65536
    max_warps: int = 64
    max_blocks: int = 32
    shared: int = 233472        # bytes per SM usable by blocks
    shared_reserved: int = 1024  # per block, taken by the system
    reg_unit: int = 256          # registers are allocated per warp in units of this many


LIMITS = {90: SMLimits("H100 SXM", shared=233472), 80: SMLimits("A100", shared=167936)}


def occupancy(regs: int, shared: int, num_warps: int, lim: SMLimits) -> Tuple[int, float]:
    """(blocks per SM, fraction of the SM's warp slots in use)."""
    per_warp = -(-max(regs, 1) * 32 // lim.reg_unit) * lim.reg_unit
    by_regs = (lim.regs // per_warp) // num_warps
    by_warps = lim.max_warps // num_warps
    by_smem = lim.shared // (shared + lim.shared_reserved) if shared else lim.max_blocks
    blocks = max(0, min(by_regs, by_warps, by_smem, lim.max_blocks))
    return blocks, blocks * num_warps / lim.max_warps


class _StandInDriver:
    """Just enough of a Triton driver to compile for a GPU that is not there: the JIT asks it for
    the target, the current device and stream; nothing is ever launched."""

    def __init__(self, capability: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", capability, 32)
        # a distinct device id per target: the JIT keeps one binder (and target) per device id
        self.device = 1000 + capability

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return self.device

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


@contextlib.contextmanager
def stand_in_driver(capability: int):
    from triton.runtime.driver import driver

    previous = driver._active
    driver.set_active(_StandInDriver(capability))
    try:
        yield
    finally:
        driver._active = previous


def _bin(tool: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)


_WIDTH = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128}


def _access_widths(sass: str, op: str) -> Dict[int, int]:
    """Histogram {bits: count} of the global loads (``LDG``) or stores (``STG``) in the SASS."""
    hist: Dict[int, int] = {}
    for mods in re.findall(rf"\b{op}((?:\.[A-Z0-9_]+)*)", sass):
        bits = 32
        for m in mods.split(".")[1:]:
            bits = _WIDTH.get(m, bits)
        hist[bits] = hist.get(bits, 0) + 1
    return hist


def measure(launch: Launch, capability: int, workdir: str) -> dict:
    """Compile ``launch`` for ``capability`` as a real launch would and read the cubin."""
    with stand_in_driver(capability):
        compiled = launch.kernel.warmup(*launch.args, grid=launch.grid, **launch.kwargs)
    name = compiled.metadata.name
    cubin = os.path.join(workdir, f"{name}_{capability}.cubin")
    with open(cubin, "wb") as f:
        f.write(compiled.asm["cubin"])
    res = subprocess.run([_bin("cuobjdump"), "-res-usage", cubin], capture_output=True, text=True,
                         check=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", res))
    sass = subprocess.run([_bin("cuobjdump"), "-sass", cubin], capture_output=True, text=True,
                          check=True).stdout
    ptx = os.path.join(workdir, f"{name}_{capability}.ptx")
    with open(ptx, "w") as f:
        f.write(compiled.asm["ptx"])
    arch = f"sm_{capability}a" if capability == 90 else f"sm_{capability}"
    verbose = subprocess.run([_bin("ptxas"), "-v", f"-arch={arch}", ptx, "-o", os.devnull],
                             capture_output=True, text=True)
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", verbose.stderr))
    regs = int(fields["REG"])
    # dynamic shared memory requested at launch plus any static shared memory in the cubin
    shared = int(compiled.metadata.shared) + int(fields.get("SHARED", 0))
    warps = int(compiled.metadata.num_warps)
    blocks, occ = occupancy(regs, shared, warps, LIMITS[capability])
    loads = _access_widths(sass, "LDG")
    stores = _access_widths(sass, "STG")
    return {
        "kernel": launch.kernel_name,
        "config": launch.config,
        "arch": f"sm_{capability}",
        "num_warps": warps,
        "registers": regs,
        "spills": spills,
        "stack": int(fields.get("STACK", 0)),
        "shared_bytes": shared,
        "blocks_per_sm": blocks,
        "occupancy": round(occ, 4),
        "load_bits": max(loads) if loads else 0,
        "loads": {str(k): v for k, v in sorted(loads.items())},
        "stores": {str(k): v for k, v in sorted(stores.items())},
        "fences": len(re.findall(r"\b(?:MEMBAR|FENCE)\.", sass)),
        "atomics": len(re.findall(r"\b(?:ATOMG|ATOM|RED)\.", sass)),
    }


def all_launches(sms: int = 132) -> List[Launch]:
    from kernels.distill import triton as distill
    from kernels.masked_update import triton as masked
    from kernels.msidf import triton as msidf

    return [*msidf.launch_cases(sms), *distill.launch_cases(sms), *masked.launch_cases(sms)]


def collect(capabilities=(90, 80), only: Optional[Callable[[Launch], bool]] = None) -> List[dict]:
    if interpret_mode():
        raise RuntimeError("TRITON_INTERPRET is set; measure resources in a process without it")
    rows = []
    with tempfile.TemporaryDirectory(prefix="lmsrr-res-") as workdir:
        for cap in capabilities:
            for launch in all_launches():
                if only is None or only(launch):
                    rows.append(measure(launch, cap, workdir))
    return rows


_COLUMNS = ("kernel", "config", "arch", "registers", "spills", "stack", "shared_bytes",
            "blocks_per_sm", "occupancy", "load_bits", "fences")


BUDGETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "budgets.json")


def _figures(row: dict) -> Dict[str, float]:
    narrow = sum(n for bits, n in row["loads"].items() if int(bits) < 128)
    return {
        "registers": row["registers"], "occupancy": row["occupancy"], "spills": row["spills"],
        "stack": row["stack"], "atomics": row["atomics"], "fences": row["fences"],
        "load128": row["loads"].get("128", 0), "store128": row["stores"].get("128", 0),
        "narrow_loads": narrow,
    }


def check_budgets(rows: List[dict], budgets: dict) -> List[str]:
    """Every broken budget as one line naming the kernel, the configuration and the figure; also
    a kernel without a budget and a budget that no measured kernel uses."""
    problems = []
    seen = set()
    for row in rows:
        name = row["kernel"]
        seen.add(name)
        budget = budgets.get(name)
        where = f"{name} [{row['arch']}, {row['config']}]"
        if budget is None:
            problems.append(f"{where}: no budget in kernels/budgets.json")
            continue
        figures = _figures(row)
        for key, limit in budget.items():
            figure, bound = key.rsplit("_", 1)
            value = figures[figure]
            if (bound == "max" and value > limit) or (bound == "min" and value < limit):
                sign = "<=" if bound == "max" else ">="
                problems.append(f"{where}: {figure} = {value}, budget {sign} {limit}")
    for name in budgets:
        if not name.startswith("_") and name not in seen:
            problems.append(f"{name}: budget for a kernel that is not measured")
    return problems


def markdown(rows: List[dict]) -> str:
    head = ["kernel", "config", "arch", "regs", "spills", "stack", "shared B", "blocks/SM",
            "occupancy", "widest LDG", "LDG by width", "fences"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        by_width = ", ".join(f"{n}x{b}" for b, n in r["loads"].items())
        lines.append(
            f"| `{r['kernel']}` | {r['config']} | {r['arch']} | {r['registers']} | {r['spills']} | "
            f"{r['stack']} | {r['shared_bytes']} | {r['blocks_per_sm']} | {r['occupancy']:.1%} | "
            f"{r['load_bits']} | {by_width} | {r['fences']} |"
        )
    return "\n".join(lines)


def text_table(rows: List[dict]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in _COLUMNS}
    out = ["  ".join(c.ljust(widths[c]) for c in _COLUMNS)]
    for r in rows:
        out.append("  ".join(str(r[c]).ljust(widths[c]) for c in _COLUMNS))
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="PATH", help="also write the rows as a JSON list of objects")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 and name each figure over its budget (kernels/budgets.json)")
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=sorted(LIMITS),
                    help="compute capabilities to compile for (default: 90 80)")
    ns = ap.parse_args(argv)
    if interpret_mode():
        print("TRITON_INTERPRET is set; run kernels.resources in a process without it",
              file=sys.stderr)
        return 2
    rows = collect(tuple(ns.arch))
    print(markdown(rows) if ns.markdown else text_table(rows))
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(rows, f, indent=1)
    if ns.check:
        with open(BUDGETS) as f:
            problems = check_budgets(rows, json.load(f))
        for line in problems:
            print("OVER BUDGET " + line)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
