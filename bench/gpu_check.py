#!/usr/bin/env python
"""Everything a GPU machine has to check and measure, as one command.

    python bench/gpu_check.py [--out DIR]     # on a machine with one GPU: under 8 minutes
    python bench/gpu_check.py --dry-run       # the same steps at tiny sizes on CPU

Steps (each one's outcome is recorded, a failing step does not stop the others):

  a. gpu_tests     the GPU-marked tests (``pytest -m gpu tests bench``)
  b. kernels       the kernel benchmarks at real sizes (eager / compile / triton, update backends)
  c. train_step    the training-step benchmark: the released four passes vs ours eager vs ours
                   compiled (2 x ViT-B/16 at 224, bf16, batch 32 and 128 on a GPU)
  d. input         the input pipeline (DALI on the GPU) against what the step consumes
  e. end_to_end    --preset cifar100 on a synthetic in-memory CIFAR-100-shaped stream (random
                   weights, 2 tasks) with --compile --precision bf16 --loader dali and the Triton
                   kernels: finite losses, images/s, MFU, data share, peak memory, evaluation time
                   with and without the prefix cache
  f. report        gpu_check.json and gpu_check.md (device, driver, versions, git revision, date),
                   the table ready to paste into bench/RESULTS.md

``--dry-run`` runs every step that can run on a CPU at tiny sizes (GPU-only steps say
"skipped: no CUDA"), so the script is exercised by the test suite and cannot rot.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(_HERE)
# Run as a script, bench/ heads sys.path, where bench/profile.py would shadow the standard library's
# profile module (torch imports cProfile); the checkout root takes its place.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

KERNEL_BENCHES = ["bench/test_bench_msidf.py", "bench/test_bench_distill.py",
                  "bench/test_bench_masked_update.py", "bench/test_bench_update.py"]


def environment() -> dict:
    def version(mod: str) -> str:
        try:
            return __import__(mod).__version__
        except Exception:
            return "not installed"

    env = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "revision": _git("rev-parse", "--short", "HEAD") + ("+dirty" if _git("status", "--porcelain") else ""),
           "torch": torch.__version__, "triton": version("triton"), "python": platform.python_version()}
    try:
        import nvidia.dali as dali
        env["dali"] = dali.__version__
    except Exception:
        env["dali"] = "not installed"
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        env["driver"] = _nvidia_smi("driver_version")
    else:
        env["device"] = f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    return env


def _git(*args) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception:
        return "unknown"


def _nvidia_smi(field: str) -> str:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout
        return out.strip().splitlines()[0]
    except Exception:
        return "unknown"


# ---------------------------------------------------------------------- steps
def _pytest(args: list[str], timeout: int) -> tuple[int, str]:
    # A fresh pytest: real launches on the GPU (no interpreter), and none of the state of a pytest
    # this check may itself run under (an xdist worker's variables turn benchmarks off).
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "PYTEST_CURRENT_TEST") and not k.startswith("PYTEST_XDIST")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    return proc.returncode, proc.stdout + proc.stderr


def _counts(output: str) -> dict:
    counts = {}
    for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", output):
        counts[what.rstrip("s") if what.startswith("error") else what] = int(n)
    return counts


def step_gpu_tests(ctx) -> dict:
    if not ctx.cuda:
        return {"status": "skipped: no CUDA"}
    code, out = _pytest(["-m", "gpu", "tests", "bench", "-rfE"], timeout=300)  # -rfE: name the failures
    return {"status": "ok" if code == 0 else "failed", **_counts(out), "tail": out[-2000:] if code else ""}


def _bench(ctx, files: list[str], name: str, timeout: int, dry_select: str = "") -> dict:
    present = [f for f in files if os.path.exists(os.path.join(ROOT, f))]
    path = os.path.join(ctx.out, f"{name}.json")
    args = [*present, "--benchmark-only", f"--benchmark-json={path}"]
    if not ctx.cuda and dry_select:  # a dry run keeps the cases that finish in seconds on a CPU
        args += ["-k", dry_select]
    if ctx.cuda:
        # On a GPU timings are stable enough to guard: each run is saved under .benchmarks/ and
        # compared with the previous saved run of the same step, failing on a 10% slowdown.
        storage = os.path.join(ROOT, ".benchmarks")
        earlier = sorted(f for _, _, files in os.walk(storage) for f in files
                         if f.endswith(f"_gpu_check-{name}.json"))
        args += [f"--benchmark-storage={storage}", f"--benchmark-save=gpu_check-{name}"]
        if earlier:  # the saved run of this step with the highest number ("0007_gpu_check-...")
            args += [f"--benchmark-compare={earlier[-1].split('_')[0]}", "--benchmark-compare-fail=mean:10%"]
    code, out = _pytest(args, timeout=timeout)
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for b in json.load(f).get("benchmarks", []):
                info = b.get("extra_info", {})
                rows.append({k: info.get(k) for k in ("op", "case", "provider", "mean_ms", "GB/s",
                                                     "%peak", "img_s", "peak_MiB") if k in info})
    return {"status": "ok" if code == 0 else "failed", **_counts(out), "rows": rows,
            "files": present, "tail": out[-2000:] if code else ""}


def step_kernels(ctx) -> dict:
    return _bench(ctx, KERNEL_BENCHES, "kernels", timeout=240)


def step_train_step(ctx) -> dict:
    # CPU dry run: batch 32, no torch.compile (Inductor's CPU compile alone takes minutes)
    return _bench(ctx, ["bench/test_bench_step.py"], "train_step", timeout=240,
                  dry_select="32 and not compile")


def step_input(ctx) -> dict:
    res = _bench(ctx, ["bench/bench_loader.py"], "input", timeout=180, dry_select="not torch_dataloader")
    # The step consumes images at the training step's rate; the pipeline must deliver well above it.
    loader = {r.get("provider"): r.get("img_s") for r in res["rows"] if r.get("img_s")}
    step = ctx.results.get("train_step", {}).get("rows", [])
    eager = [r["img_s"] for r in step if r.get("provider") == "eager" and r.get("img_s")]
    if loader.get("dali") and eager:
        res["data_share_at_step_rate"] = max(eager) / loader["dali"]
    return res


def step_end_to_end(ctx) -> dict:
    """A short run of the cifar100 recipe on a synthetic stream (no dataset, no weights)."""
    from lmsrr.config import PRESETS, Config
    from lmsrr.engine import Trainer
    from lmsrr.evaluate import PrefixCache, evaluate_seen_tasks
    from lmsrr.synthetic import synthetic_stream

    d = {g: dict(v) for g, v in PRESETS["cifar100"].items()}
    d["model"]["pretrained"] = "none"  # random weights: timing does not depend on them
    if ctx.cuda:  # 3,200 images per task: 100 steps of 32, 200 in all
        per_class, runtime, log_every = 320, {"compile": True, "precision": "bf16"}, 10
        d["data"]["loader"] = "dali"
    else:  # dry run: the default job's tiny sources, 5 steps per task
        per_class, runtime, log_every = 16, {"precision": "fp32", "threads": 2}, 2
        d["model"] = {"pretrained": "none"}
        d["data"]["loader"] = "torch"
    d["runtime"] = {**runtime, "stop_after": 2, "checkpoint_every": 0}
    d["log"] = {"out_dir": os.path.join(ctx.out, "runs"), "progress": False, "log_every": log_every}
    cfg = Config.from_dict(d)
    stream = synthetic_stream(n_classes=100, n_tasks=10, per_class=per_class, loader=cfg.data.loader)
    trainer = Trainer(cfg, stream=stream)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    results = trainer.fit()
    wall = time.perf_counter() - t0
    with open(os.path.join(trainer.run_path, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    steps = [r for r in records if "loss/total" in r]
    finite = all(abs(r["loss/total"]) < float("inf") and r["loss/total"] == r["loss/total"] for r in steps)
    mfu = [r["perf/mfu"] for r in steps if "perf/mfu" in r]
    share = [r["time/data_share"] for r in steps if "time/data_share" in r]
    evals = {}
    for label, budget in (("without_cache", 0), ("with_cache", 1024)):
        cache = PrefixCache(budget) if budget else None
        times = []
        for _ in range(2):  # the second pass is the one a cache speeds up
            t = time.perf_counter()
            evaluate_seen_tasks(trainer.method, trainer.stream, 1, trainer.device,
                                cfg.data.eval_batch_size, False, cache)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        evals[label] = times[-1]
    return {"status": "ok" if finite and steps else "failed", "finite_losses": finite,
            "steps": results["steps"], "images_per_s": results["images_per_s"], "wall_s": wall,
            "mfu": max(mfu) if mfu else None, "data_share": sum(share) / len(share) if share else None,
            "peak_memory_mb": max((r.get("memory/peak_mb", 0) for r in steps), default=None),
            "eval_s": evals, "class_il": results["summary_class_il"]["avg_acc"],
            "setting": f"{cfg.model.sources[:60]}, {cfg.runtime.precision}, compile={cfg.runtime.compile}, "
                       f"loader={cfg.data.loader}"}


STEPS = {"gpu_tests": step_gpu_tests, "kernels": step_kernels, "train_step": step_train_step,
         "input": step_input, "end_to_end": step_end_to_end}


# ---------------------------------------------------------------------- report
def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"### GPU check: {env['device']}, {env['date']}, revision {env['revision']}", "",
             f"torch {env['torch']}, triton {env['triton']}, DALI {env['dali']}"
             + (f", CUDA {env.get('cuda')}, driver {env.get('driver')}" if "cuda" in env else "")
             + (" (dry run: tiny sizes on CPU)" if report["dry_run"] else ""), "",
             "| step | status | figures |", "|---|---|---|"]
    for name, res in report["steps"].items():
        figures = {k: v for k, v in res.items() if k not in ("status", "rows", "tail", "files")}
        text = ", ".join(f"{k} {_fmt(v)}" for k, v in figures.items())
        lines.append(f"| {name} | {res['status']} | {text} |")
    for name in ("kernels", "train_step", "input"):
        rows = report["steps"].get(name, {}).get("rows", [])
        if rows:
            lines += ["", f"{name}:", "", "| op | case | provider | ms | GB/s | img/s |", "|---|---|---|---|---|---|"]
            for r in rows:
                lines.append(f"| {r.get('op', '')} | {r.get('case', '')} | {r.get('provider', '')} | "
                             f"{_fmt(r.get('mean_ms'))} | {_fmt(r.get('GB/s'))} | {_fmt(r.get('img_s'))} |")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return "-" if v is None else str(v)


class Context:
    def __init__(self, out: str, dry_run: bool):
        self.out, self.dry_run = out, dry_run
        self.cuda = torch.cuda.is_available()
        self.results: dict = {}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true",
                   help="run every step at tiny sizes on CPU (GPU-only steps are skipped)")
    p.add_argument("--out", default="", help="folder for gpu_check.json, gpu_check.md and the "
                   "benchmark JSON files (default: a new temporary folder)")
    p.add_argument("--steps", default=",".join(STEPS),
                   help=f"comma-separated steps to run (default: all of {','.join(STEPS)})")
    args = p.parse_args(argv)
    wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STEPS]
    if unknown:
        print(f"bench/gpu_check.py: error: unknown step(s) {', '.join(unknown)}; choose from "
              f"{', '.join(STEPS)}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available() and not args.dry_run:
        print("bench/gpu_check.py: error: no CUDA device here; run it on a GPU machine, or add "
              "--dry-run to exercise every step at tiny sizes on CPU", file=sys.stderr)
        return 2
    out = os.path.abspath(args.out or tempfile.mkdtemp(prefix="gpu_check-"))
    os.makedirs(out, exist_ok=True)
    ctx = Context(out, args.dry_run)
    report = {"environment": environment(), "dry_run": args.dry_run, "steps": ctx.results}
    for name in wanted:
        t0 = time.perf_counter()
        print(f"gpu_check: {name} ...", flush=True)
        try:
            res = STEPS[name](ctx)
        except subprocess.TimeoutExpired as e:
            res = {"status": f"failed: timed out after {e.timeout:.0f} s"}
        except Exception as e:  # one broken step must not hide the others' figures
            res = {"status": f"failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}"}
        res["seconds"] = time.perf_counter() - t0
        ctx.results[name] = res
        print(f"gpu_check: {name}: {res['status']} ({res['seconds']:.0f} s)", flush=True)
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)
    text = markdown(report)
    with open(os.path.join(out, "gpu_check.md"), "w") as f:
        f.write(text)
    print(text)
    print(f"written: {os.path.join(out, 'gpu_check.json')}, {os.path.join(out, 'gpu_check.md')}")
    failed = [n for n, r in ctx.results.items() if r["status"].startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
