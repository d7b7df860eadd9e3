"""Compare methods on one stream with the same configuration: ``lmsrr-compare`` / ``scripts/compare.py``.

Every method runs through :class:`lmsrr.engine.Trainer` with the same configuration (seed,
sources, stream, loaders, precision, epochs, batch size, ...) except ``--method``, so they differ
only in the method; with ``--seeds a,b,c`` every method runs once per seed and the report gives
mean ± sample standard deviation; with ``--grid`` (:mod:`lmsrr.grid`) all of that runs once per
grid setting. Each run keeps its own run directory (``<out>/[<setting>/]<method>[-seed<N>]/``);
the comparison writes, next to them:

    comparison.md    a Markdown table, best mean final class-IL accuracy first (per setting)
    comparison.csv   the same numbers and more (standard deviations, per-seed accuracy, per-task
                     curves, task-IL forgetting and BWT, run paths)
    comparison.png   average class-IL accuracy after each task, one line per method (a band of
                     one standard deviation with several seeds)

Runs execute where ``--launcher`` says (:mod:`lmsrr.launchers`: in this process, as local
processes, as a SLURM job array, as Ray tasks). The report is gathered from the run directories
and rewritten as each run ends, so a long comparison loses nothing finished; the same command
again skips the finished runs and resumes the interrupted ones from their checkpoints.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shlex
import signal
import sys
import time

from lmsrr import distributed
from lmsrr.cli import build_parser as train_parser
from lmsrr.cli import config_from_args
from lmsrr.data import build_stream
from lmsrr.config import RESOLVED
from lmsrr.data.registry import stream_label
from lmsrr.engine import Interrupted
from lmsrr.errors import UserError, WriteError
from lmsrr.grid import Setting, parse_grid, setting_config
from lmsrr.launchers import (LAUNCHERS, InlineLauncher, LocalLauncher, PlannedRun, RayLauncher, SlurmLauncher,
                             visible_gpus)
from lmsrr.methods.registry import method_class

log = logging.getLogger("lmsrr.compare")

# The line-up: LMSRR, the upper and lower bounds, replay, distillation, regularisation,
# and the pre-trained nearest-mean baseline.
DEFAULT_METHODS = ("lmsrr", "joint", "derpp", "der", "er", "icarl", "agem", "lwf", "ewc", "si",
                   "nmc", "finetune")

# Per-run metrics; a method's row holds their mean over its seeds and, next to each, "<name>_std".
METRICS = ("class_il", "task_il", "forgetting", "bwt", "task_il_forgetting", "task_il_bwt",
           "wall_time_s", "train_time_s", "images_per_s", "steps")


def parse_methods(text: str) -> list[str]:
    """Comma-separated registered names, in order, without repeats; unknown names are an error
    that suggests the closest registered one."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise UserError("--methods names no method")
    dup = sorted({m for m in names if names.count(m) > 1})
    if dup:
        raise UserError(f"--methods names {', '.join(dup)} more than once")
    for name in names:
        method_class(name)
    return names


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r}: use comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r}: name at least one seed, each once")
    return seeds


def run_from_results(results: dict, seed: int, run_dir: str = "") -> dict:
    """The metrics of one run, from its ``results.json``."""
    cil = results["summary_class_il"]
    til = results.get("summary_task_il")  # absent for domain-IL streams or --metrics class-il
    return {
        "seed": seed,
        "class_il": cil["avg_acc"],
        "task_il": til["avg_acc"] if til else None,
        "forgetting": cil["forgetting"],
        "bwt": cil["bwt"],
        "task_il_forgetting": til["forgetting"] if til else None,
        "task_il_bwt": til["bwt"] if til else None,
        "wall_time_s": results["wall_time_s"],
        "train_time_s": results.get("train_time_s"),
        # Methods that take no training steps (nmc) have no training throughput.
        "images_per_s": results.get("images_per_s") if results.get("steps") else None,
        "steps": results.get("steps"),
        "curve": [sum(r) / len(r) for r in results["acc_class_il"]],
        "run_dir": run_dir,
    }


def failed_run(seed: int, error: str, run_dir: str = "", diverged: bool = True) -> dict:
    """A run without results: it diverged (non-finite values), or failed (crashed, killed)."""
    return {"seed": seed, "error": error, "run_dir": run_dir, "diverged": diverged}


def _mean_std(values: list) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if len(vals) != len(values) or not vals:  # undefined for some seed: undefined overall
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))  # sample std


def method_row(method: str, runs: list[dict], setting: str = "") -> dict:
    """One table row: the mean (and sample standard deviation) of each metric over the method's
    runs (one per seed) in one grid setting, and the mean accuracy curve. Any diverged or
    failed run marks the row so."""
    row = {"method": method, "setting": setting, "seeds": [r["seed"] for r in runs],
           "run_dirs": [r["run_dir"] for r in runs]}
    errors = [f"seed {r['seed']}: {r['error']}" for r in runs if r.get("error")]
    if errors:
        row["failure"] = "diverged" if all(r.get("diverged", True) for r in runs if r.get("error")) else "failed"
        row.update({k: None for k in METRICS})
        row.update({f"{k}_std": None for k in METRICS})
        row.update({"curve": [], "curve_std": [], "class_il_per_seed": [], "error": "; ".join(errors)})
        return row
    for k in METRICS:
        row[k], row[f"{k}_std"] = _mean_std([r[k] for r in runs])
    n_tasks = min(len(r["curve"]) for r in runs)
    points = [_mean_std([r["curve"][t] for r in runs]) for t in range(n_tasks)]
    row["curve"] = [m for m, _ in points]
    row["curve_std"] = [sd for _, sd in points]
    row["class_il_per_seed"] = [r["class_il"] for r in runs]
    row["error"] = None
    return row


def ranked(rows: list[dict]) -> list[dict]:
    """Grid settings in their order; within each, best mean final class-IL accuracy first,
    diverged or failed methods last (ties: run order)."""
    order = {}
    for r in rows:
        order.setdefault(r.get("setting", ""), len(order))
    return sorted(rows, key=lambda r: (order[r.get("setting", "")], r["class_il"] is None, -(r["class_il"] or 0.0)))


def _label(row: dict) -> str:
    return f"{row['method']} [{row['setting']}]" if row.get("setting") else row["method"]


def _fmt(v, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.{digits}f}"


def _cell(row: dict, key: str, digits: int = 1) -> str:
    std = row.get(f"{key}_std")
    return _fmt(row[key], digits) + (f" ± {std:.{digits}f}" if std is not None and row[key] is not None else "")


def markdown_table(rows: list[dict]) -> str:
    grid = any(r.get("setting") for r in rows)  # a grid: one more column, the setting
    lines = [("| setting " if grid else "") + "| method | class-IL (%) | task-IL (%) | forgetting | BWT | wall time (s) | images/s |",
             ("|---" if grid else "") + "|---|---:|---:|---:|---:|---:|---:|"]
    for r in ranked(rows):
        first = f"| {r.get('setting', '')} " if grid else ""
        if r.get("error"):
            lines.append(f"{first}| {r['method']} | {r['failure']} (see below) | — | — | — | — | — |")
            continue
        lines.append(f"{first}| {r['method']} | {_cell(r, 'class_il')} | {_cell(r, 'task_il')} | "
                     f"{_cell(r, 'forgetting')} | {_cell(r, 'bwt')} | {_fmt(r['wall_time_s'], 0)} | "
                     f"{_fmt(r['images_per_s'], 0)} |")
    return "\n".join(lines)


def notes(n_seeds: int) -> str:
    spread = (f"Mean ± sample standard deviation over {n_seeds} seeds (each seed changes the initial "
              f"weights, shuffling, augmentation and replay draws); wall time and images/s are means. "
              if n_seeds > 1 else "")
    return spread + """\
Accuracy: final average over all tasks after the last one. Forgetting and BWT are class-IL (mean
over earlier tasks of best-earlier minus final accuracy, and of final minus just-learned accuracy).
Wall time: the whole run (training, evaluation after every task, checkpoints). images/s: stream
images per second of training time (replayed samples not counted). joint: cumulative training on
the union of all tasks seen so far, evaluated after each task (the upper bound). nmc: no training
steps (class means of the frozen network's fused features), hence no images/s."""


def write_markdown(rows: list[dict], path: str, header: str = "") -> None:
    n_seeds = max((len(r["seeds"]) for r in rows), default=1)
    text = (header + "\n\n" if header else "") + markdown_table(rows) + "\n\n" + notes(n_seeds) + "\n"
    for r in rows:
        if r.get("error"):
            text += f"\n{_label(r)}: {r['error']}\n"
    _atomic_write(path, text)


def write_csv(rows: list[dict], path: str) -> None:
    n = max((len(r["curve"]) for r in rows), default=0)
    fields = (["setting", "method", "seeds"] + [f for k in METRICS for f in (k, f"{k}_std")] + ["class_il_per_seed"]
              + [f"class_il_after_task_{t + 1}" for t in range(n)] + ["run_dirs", "error"])
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in ranked(rows):
            rec = {k: ("" if r.get(k) is None else r[k]) for k in fields if k in r}
            rec["setting"] = r.get("setting", "")
            rec["seeds"] = " ".join(str(s) for s in r["seeds"])
            rec["class_il_per_seed"] = " ".join(f"{v:.4f}" for v in r["class_il_per_seed"])
            rec.update({f"class_il_after_task_{t + 1}": v for t, v in enumerate(r["curve"])})
            rec["run_dirs"] = " ".join(r["run_dirs"])
            rec["error"] = r.get("error") or ""
            w.writerow(rec)
    os.replace(tmp, path)


def plot_curves(rows: list[dict], path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    # The default cycle has ten colours; cycling linestyles as well keeps every method's line
    # distinct in a comparison of more methods (the line-up has twelve).
    colours = plt.get_cmap("tab10").colors
    styles = ("-", "--", ":", "-.")
    for i, r in enumerate(ranked(rows)):
        if r.get("error"):
            continue
        xs = list(range(1, len(r["curve"]) + 1))
        (line,) = ax.plot(xs, r["curve"], marker="o", markersize=3, color=colours[i % len(colours)],
                          linestyle=styles[(i // len(colours)) % len(styles)],
                          label=f"{_label(r)} ({r['class_il']:.1f})")
        if all(sd is not None for sd in r["curve_std"]):  # several seeds: a band of one std
            lo = [m - sd for m, sd in zip(r["curve"], r["curve_std"])]
            hi = [m + sd for m, sd in zip(r["curve"], r["curve_std"])]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.12, linewidth=0)
    n = max((len(r["curve"]) for r in rows), default=1)
    ax.set_xticks(range(1, max(n, 1) + 1))
    ax.set_xlabel("after training task")
    ax.set_ylabel("average class-IL accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if ax.lines:  # none when every method so far diverged
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_report(rows: list[dict], out: str, header: str = "", title: str = "") -> None:
    write_markdown(rows, os.path.join(out, "comparison.md"), header)
    write_csv(rows, os.path.join(out, "comparison.csv"))
    plot_curves(rows, os.path.join(out, "comparison.png"), title)


def describe(cfg, command: str, seeds: list[int], settings: list[Setting] | None = None) -> str:
    m, o, d = cfg.model, cfg.optim, cfg.data
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
    if settings and settings[0].values:
        # The settings change what the sentence below would state; the command says the rest.
        return (f"Comparison over {len(settings)} grid setting(s) ({'; '.join(s.label for s in settings)}), "
                f"{seed_text}.\n\nCommand: `{command}`")
    return (f"Comparison on `{d.stream}`, {seed_text}, sources `{m.sources}` "
            f"(pretrained: {m.pretrained}), {o.epochs} epoch(s) per task, {o.optimizer} lr {o.lr}, "
            f"batch {d.batch_size}, buffer {cfg.method.buffer_size}, replay batch "
            f"{cfg.method.replay_batch_size}.\n\nCommand: `{command}`")


# Fields that say how a run executes, not what it computes: a finished or interrupted run is
# reused when only these differ (another launcher divides threads or GPUs differently).
HOW_IT_RUNS = {"runtime.resume", "runtime.threads", "runtime.device", "runtime.dist_backend",
               "log.progress", "log.out_dir", "log.log_every", "data.loader_workers", "data.data_root"}


def config_differences(saved: dict, planned: dict) -> list[str]:
    """``group.field`` names whose values differ between two config dictionaries (execution details aside)."""
    out = []
    for group in sorted(set(saved) | set(planned)):
        a, b = saved.get(group, {}), planned.get(group, {})
        for name in sorted(set(a) | set(b)):
            key = f"{group}.{name}"
            if key not in HOW_IT_RUNS and a.get(name) != b.get(name):
                out.append(key)
    return out


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def finished_results(run: PlannedRun) -> dict | None:
    """The run's results when its run directory holds a finished run."""
    res = _read_json(os.path.join(run.run_dir, "results.json"))
    return res if res and res.get("complete") else None


def check_reusable(run: PlannedRun) -> None:
    """A run directory left by an earlier launch must hold this very run, or resuming or
    skipping it would report another configuration's numbers."""
    saved = _read_json(os.path.join(run.run_dir, "config.json"))
    if saved is None:
        return
    # what the earlier run resolved on its machine ('auto' choices) is not part of its configuration
    saved = {k: v for k, v in saved.items() if k != RESOLVED}
    diff = config_differences(saved, run.cfg.to_dict())
    if diff:
        raise UserError(f"{run.run_dir} holds a run of another configuration (differs in "
                        f"{', '.join(diff[:5])}{', ...' if len(diff) > 5 else ''}); choose another --out, "
                        f"or --resume none to start every run afresh")


def plan_runs(points: list[tuple[Setting, object]], methods: list[str], seeds: list[int], out: str,
              resume: str = "auto", threads: int | None = None) -> list[PlannedRun]:
    """Every (setting, method, seed) run with its configuration and run directory:
    ``<out>/[<setting>/]<method>[-seed<N>]``."""
    runs = []
    for setting, cfg in points:
        folder = os.path.join(out, setting.dirname) if setting.values else out
        for name in methods:
            for seed in seeds:
                runtime = {"seed": seed, "resume": resume}
                if threads:
                    runtime["threads"] = threads
                run_name = name if len(seeds) == 1 else f"{name}-seed{seed}"
                run_cfg = cfg.replace(method={"name": name}, runtime=runtime,
                                      log={"out_dir": folder, "run_name": run_name})
                runs.append(PlannedRun(setting.label, name, seed, run_cfg, os.path.join(folder, run_name)))
    return runs


def check_methods(runs: list[PlannedRun]) -> None:
    """Every method's start-up checks on every stream of the grid before the first run trains:
    a bad combination fails in seconds, not after an hour of other runs."""
    streams: dict[str, object] = {}
    checked = set()
    for r in runs:
        data_key = json.dumps(r.cfg.to_dict()["data"], sort_keys=True)
        if (data_key, r.method) in checked:
            continue
        if data_key not in streams:
            streams[data_key] = build_stream(r.cfg.data)
        method_class(r.method).check_config(r.cfg, streams[data_key])
        checked.add((data_key, r.method))


def gather_rows(runs: list[PlannedRun], outcomes: dict[str, dict]) -> list[dict]:
    """Report rows from the run directories: finished runs' results, and the runs that diverged
    or failed in this launch (with their log); runs still going are left out."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        res = finished_results(r)
        status = outcomes.get(r.run_dir)
        if res is not None:
            entry = run_from_results(res, r.seed, r.run_dir)
        elif status and status["status"] == "diverged":
            entry = failed_run(r.seed, status["message"], r.run_dir)
        elif status and status["status"] == "error":
            where = f" (log: {status['log']})" if status.get("log") else ""
            entry = failed_run(r.seed, f"failed: {status['message']}{where}", r.run_dir, diverged=False)
        else:
            continue
        groups.setdefault((r.setting, r.method), []).append(entry)
    return [method_row(method, entries, setting) for (setting, method), entries in groups.items()]


def run_comparison(cfg, methods: list[str], out: str, command: str = "",
                   seeds: list[int] | None = None, launcher=None,
                   settings: list[tuple[Setting, object]] | None = None, resume: str = "auto",
                   threads: int | None = None) -> tuple[list[dict], int | None, list[str]]:
    """Train every method in ``methods`` once per seed in every grid setting (default: ``cfg``
    alone) through ``launcher`` (default: inline); rewrite the report under ``out`` as runs
    finish; return the rows and the signal that stopped the launch early (or None). Runs
    finished by an earlier launch of the same comparison are skipped, interrupted ones resume
    from their checkpoints (``resume='auto'``). A run that diverges or fails is reported and the
    others go on."""
    seeds = seeds or [cfg.runtime.seed]
    launcher = launcher or InlineLauncher()
    points = settings or [(Setting(), cfg)]
    runs = plan_runs(points, methods, seeds, out, resume, threads)
    check_methods(runs)
    todo = []
    for r in runs:
        if resume == "auto":
            check_reusable(r)
            if finished_results(r) is not None:
                log.info("%s: finished in an earlier launch, skipped", r.title)
                continue
        todo.append(r)
    if launcher.name != "inline":
        for r in todo:  # the child processes read their configuration from the run directory
            os.makedirs(r.run_dir, exist_ok=True)
            _atomic_write(r.config_path, json.dumps(r.cfg.to_dict(), indent=2))
    log.info("comparison: %d run(s), %d finished earlier, %d to run (launcher: %s)",
             len(runs), len(runs) - len(todo), len(todo), launcher.name)

    header = describe(cfg, command, seeds, [s for s, _ in points]) if command else ""
    title = (f"{cfg.data.stream}: " if not points[0][0].values else "") + "average class-IL accuracy after each task"
    outcomes: dict[str, dict] = {}

    def on_done(run: PlannedRun, status: dict) -> None:
        outcomes[run.run_dir] = status
        if status["status"] == "complete":
            log.info("%s: class-IL %.2f", run.title, status["class_il"])
        elif status["status"] == "diverged":
            log.error("%s diverged: %s", run.title, status["message"])
        elif status["status"] == "error":
            log.error("%s failed: %s (log: %s)", run.title, status["message"], status.get("log", "-"))
        if distributed.is_main():
            write_report(gather_rows(runs, outcomes), out, header, title)

    try:
        stopped = launcher.run(todo, on_done)
    finally:
        distributed.cleanup()  # under torchrun every inline Trainer joined the same process group
    rows = gather_rows(runs, outcomes)
    if distributed.is_main() and rows:
        write_report(rows, out, header, title)  # also when every run had finished before
    unfinished = [r.title for r in todo if finished_results(r) is None
                  and outcomes.get(r.run_dir, {}).get("status") not in ("diverged", "error")]
    return rows, stopped, unfinished


# ---------------------------------------------------------------------- command line
def build_parser(prog: str = "lmsrr-compare") -> argparse.ArgumentParser:
    p = train_parser()
    p.prog = prog
    p.description = (
        "Train several methods on one stream with the same configuration (every training flag "
        "of lmsrr-train applies to all of them), optionally over several seeds and a grid of "
        "settings, and write comparison.md, comparison.csv and comparison.png: final class-IL and "
        "task-IL accuracy, forgetting, backward transfer, wall time and images/s, and average "
        "accuracy after each task. Runs execute in this process, as local processes, as a SLURM "
        "job array or as Ray tasks (--launcher); re-running the same command skips finished runs "
        "and resumes interrupted ones.")
    for action in p._actions:  # one method per run, named after it: refused in main()
        if action.dest in ("method.name", "log.run_name"):
            action.help = argparse.SUPPRESS
        if action.dest == "runtime.resume":
            action.help = ("'auto' (default: skip runs finished by an earlier launch of the same "
                           "comparison, resume interrupted ones from their checkpoints) or 'none' "
                           "(start every run afresh)")
    g = p.add_argument_group("comparison options")
    g.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated methods to run, in order (default: {','.join(DEFAULT_METHODS)})")
    g.add_argument("--seeds", default="",
                   help="comma-separated seeds: every method runs once per seed and the report shows "
                        "mean ± standard deviation (default: --seed alone)")
    g.add_argument("--out", default="",
                   help="folder for the report and one run directory per method "
                        "(default: <out-dir>/compare-<stream>-<timestamp>)")
    g.add_argument("--grid", nargs="+", metavar="KEY=V1,V2",
                   help="run the comparison in every setting of a grid: KEY=V1,V2 tokens (their product; "
                        "keys are config field names such as lr, stream, der_alpha, or preset) or one "
                        "JSON / YAML file holding a mapping of lists or a list of such mappings")
    g = p.add_argument_group("launcher options")
    g.add_argument("--launcher", choices=LAUNCHERS, default="inline",
                   help="where runs execute: inline (this process, one after the other), local (--jobs "
                        "processes at once on this machine), slurm (one job array through submitit), "
                        "ray (one Ray task per run) (default: inline)")
    g.add_argument("--jobs", type=int, default=None,
                   help="local: runs at once, each on one GPU where there are GPUs, otherwise each with "
                        "--threads threads (default: the CPU cores divided between them) "
                        "(default: one per GPU, or 1 without GPUs)")
    g.add_argument("--gpus-per-run", type=int, default=None,
                   help="slurm, ray: GPUs per run; more than one makes each run a DDP job (default: 0)")
    g.add_argument("--cpus-per-run", type=int, default=None,
                   help="slurm, ray: CPU cores per run, also its --threads unless given (default: the "
                        "scheduler's default; ray: 1)")
    g.add_argument("--nodes-per-run", type=int, default=None,
                   help="slurm: nodes per run, each with --gpus-per-run DDP ranks (default: 1)")
    g.add_argument("--partition", default=None, help="slurm: partition to submit to")
    g.add_argument("--time-limit", type=int, default=None, metavar="MINUTES",
                   help="slurm: time limit of each run; a run that reaches it is requeued and resumes "
                        "from its newest checkpoint (default: 1440)")
    g.add_argument("--array-parallelism", type=int, default=None,
                   help="slurm: runs of the job array running at once (default: 256)")
    g.add_argument("--slurm-param", action="append", default=None, metavar="KEY=VALUE",
                   help="slurm: one more sbatch parameter passed through (repeatable), e.g. "
                        "account=myproj, qos=high, constraint=h100")
    g.add_argument("--slurm-cluster", choices=("slurm", "local"), default=None,
                   help="slurm: 'slurm' submits with sbatch; 'local' runs the same submission with "
                        "submitit's local executor on this machine (default: slurm)")
    g.add_argument("--ray-address", default=None,
                   help="ray: address of a running Ray cluster (e.g. auto, ray://head:10001) "
                        "(default: start a local Ray instance)")
    return p


# Each launcher's own flags: given with another launcher they would silently do nothing.
LAUNCHER_FLAGS = {
    "jobs": ("local",), "gpus_per_run": ("slurm", "ray"), "cpus_per_run": ("slurm", "ray"),
    "nodes_per_run": ("slurm",), "partition": ("slurm",), "time_limit": ("slurm",),
    "array_parallelism": ("slurm",), "slurm_param": ("slurm",), "slurm_cluster": ("slurm",),
    "ray_address": ("ray",),
}


def _positive(args, name: str, minimum: int = 1) -> None:
    value = getattr(args, name)
    if value is not None and value < minimum:
        raise UserError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def parse_slurm_params(items: list[str] | None) -> dict:
    params = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--slurm-param {item!r}: write KEY=VALUE, e.g. account=myproj")
        params[key.strip().lstrip("-").replace("-", "_")] = value.strip()
    return params


def make_launcher(args, out: str, given: dict):
    """The launcher the flags ask for, its optional dependency checked, plus the threads each
    run gets (None: as configured)."""
    for name, launchers in LAUNCHER_FLAGS.items():
        if getattr(args, name) is not None and args.launcher not in launchers:
            raise UserError(f"--{name.replace('_', '-')} applies to --launcher {' or '.join(launchers)}, "
                            f"not {args.launcher}")
    for name in ("jobs", "nodes_per_run", "time_limit", "array_parallelism"):
        _positive(args, name)
    _positive(args, "gpus_per_run", 0)
    _positive(args, "cpus_per_run", 0)
    if args.launcher != "inline" and distributed.launched_by_torchrun():
        raise UserError(f"--launcher {args.launcher} starts its own processes: run it without torchrun "
                        f"(--gpus-per-run makes each run a DDP job on slurm and ray)")
    threads_given = "runtime.threads" in given
    if args.launcher == "inline":
        return InlineLauncher(), None
    if args.launcher == "local":
        gpus = visible_gpus() if given.get("runtime.device", "auto") != "cpu" else []
        jobs = args.jobs or max(1, len(gpus))
        # The cores are divided between the runs (with GPUs too: their input pipelines and
        # host-side work): N runs of all cores each would spin against each other.
        threads = None if threads_given else max(1, (os.cpu_count() or 1) // jobs)
        per_run = given.get("runtime.threads") if threads_given else threads
        return LocalLauncher(jobs, gpus, per_run or 0), threads
    gpus, cpus = args.gpus_per_run or 0, args.cpus_per_run or 0
    threads = cpus if cpus and not threads_given else None
    if args.launcher == "slurm":
        launcher = SlurmLauncher(os.path.join(out, "slurm"), args.slurm_cluster or "slurm", args.partition,
                                 gpus, cpus, args.nodes_per_run or 1, args.time_limit or 1440,
                                 args.array_parallelism or 256, parse_slurm_params(args.slurm_param),
                                 poll_s=1.0 if args.slurm_cluster == "local" else 20.0)
    else:
        launcher = RayLauncher(args.ray_address or "", gpus, cpus)
    launcher.check()
    return launcher, threads


def main(argv: list[str] | None = None, prog: str = "lmsrr-compare") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        given = vars(args)
        if "method.name" in given:
            raise UserError("--method picks one method; lmsrr-compare takes --methods a,b,c")
        if "log.run_name" in given:
            raise UserError("--run-name: lmsrr-compare names each run after its method under --out")
        resume = given.get("runtime.resume", "auto")
        if resume not in ("auto", "none"):
            raise UserError(f"--resume {resume!r}: lmsrr-compare takes auto (skip finished runs, resume "
                            f"interrupted ones; the default) or none (start every run afresh)")
        methods = parse_methods(args.methods)
        cfg = config_from_args(args)
        seeds = parse_seeds(args.seeds) if args.seeds else [cfg.runtime.seed]
        settings = [(s, setting_config(args, s)) for s in parse_grid(args.grid)] if args.grid else None
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=2))
            return 0
        out = args.out or os.path.join(cfg.log.out_dir,
                                       f"compare-{stream_label(cfg.data.stream)}-{time.strftime('%Y%m%d-%H%M%S')}")
        launcher, threads = make_launcher(args, out, given)
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the comparison folder {out!r} ({e.strerror}); "
                            f"choose another with --out") from e
        rows, stopped, unfinished = run_comparison(cfg, methods, out, command=" ".join([prog] + [shlex.quote(a) for a in argv]),
                                       seeds=seeds, launcher=launcher, settings=settings, resume=resume,
                                       threads=threads)
        print(markdown_table(rows))
        print(f"report: {os.path.join(out, 'comparison.md')}")
        if stopped is not None:
            print(f"{prog}: stopped by {signal.Signals(stopped).name}: finished runs are in the report; "
                  f"the same command again skips them and resumes the others from their checkpoints",
                  file=sys.stderr)
            return 128 + stopped
        if unfinished:
            print(f"{prog}: error: stopped before their end: {', '.join(unfinished)}; the same command "
                  f"again resumes them from their checkpoints", file=sys.stderr)
            return 1
        bad = {kind: [_label(r) for r in rows if r.get("failure") == kind] for kind in ("diverged", "failed")}
        if bad["diverged"] or bad["failed"]:
            text = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in bad.items() if names)
            print(f"{prog}: error: {text} (see the report)", file=sys.stderr)
            return 1
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except WriteError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        # The finished runs are in the report; the same command again (same --out) skips them
        # and continues the interrupted run from its checkpoint.
        print(f"{prog}: {e}", file=sys.stderr)
        return 128 + e.signum
    return 0
