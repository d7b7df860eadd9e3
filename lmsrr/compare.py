"""Compare methods on one stream with the same configuration: ``lmsrr-compare`` / ``scripts/compare.py``.

Every method runs through :class:`lmsrr.engine.Trainer` with the same configuration (seed,
sources, stream, loaders, precision, epochs, batch size, ...) except ``--method``, so they differ
only in the method; with ``--seeds a,b,c`` every method runs once per seed and the report gives
mean ± sample standard deviation. Each run keeps its own run directory (``<out>/<method>/``, or
``<out>/<method>-seed<N>/``); the comparison writes, next to them:

    comparison.md    a Markdown table, best mean final class-IL accuracy first
    comparison.csv   the same numbers and more (standard deviations, per-seed accuracy, per-task
                     curves, task-IL forgetting and BWT, run paths)
    comparison.png   average class-IL accuracy after each task, one line per method (a band of
                     one standard deviation with several seeds)

The report is rewritten after every run, so a long comparison loses nothing finished; the
same command with ``--resume auto`` continues an interrupted one (each method's run directory
keeps its checkpoints; finished methods resume at their end).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shlex
import sys
import time

from lmsrr import distributed
from lmsrr.cli import build_parser as train_parser
from lmsrr.cli import config_from_args
from lmsrr.data import build_stream
from lmsrr.engine import Interrupted, Trainer
from lmsrr.data.registry import stream_label
from lmsrr.errors import UserError, WriteError
from lmsrr.guard import NonFiniteError
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


def failed_run(seed: int, error: str, run_dir: str = "") -> dict:
    return {"seed": seed, "error": error, "run_dir": run_dir}


def _mean_std(values: list) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if len(vals) != len(values) or not vals:  # undefined for some seed: undefined overall
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))  # sample std


def method_row(method: str, runs: list[dict]) -> dict:
    """One table row: the mean (and sample standard deviation) of each metric over the method's
    runs (one per seed) and the mean accuracy curve. Any diverged run marks the method diverged."""
    row = {"method": method, "seeds": [r["seed"] for r in runs],
           "run_dirs": [r["run_dir"] for r in runs]}
    errors = [f"seed {r['seed']}: {r['error']}" for r in runs if r.get("error")]
    if errors:
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
    """Best mean final class-IL accuracy first, diverged methods last (ties: run order)."""
    return sorted(rows, key=lambda r: (r["class_il"] is None, -(r["class_il"] or 0.0)))


def _fmt(v, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.{digits}f}"


def _cell(row: dict, key: str, digits: int = 1) -> str:
    std = row.get(f"{key}_std")
    return _fmt(row[key], digits) + (f" ± {std:.{digits}f}" if std is not None and row[key] is not None else "")


def markdown_table(rows: list[dict]) -> str:
    lines = ["| method | class-IL (%) | task-IL (%) | forgetting | BWT | wall time (s) | images/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in ranked(rows):
        if r.get("error"):
            lines.append(f"| {r['method']} | diverged (see below) | — | — | — | — | — |")
            continue
        lines.append(f"| {r['method']} | {_cell(r, 'class_il')} | {_cell(r, 'task_il')} | "
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
            text += f"\n{r['method']}: {r['error']}\n"
    _atomic_write(path, text)


def write_csv(rows: list[dict], path: str) -> None:
    n = max((len(r["curve"]) for r in rows), default=0)
    fields = (["method", "seeds"] + [f for k in METRICS for f in (k, f"{k}_std")] + ["class_il_per_seed"]
              + [f"class_il_after_task_{t + 1}" for t in range(n)] + ["run_dirs", "error"])
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in ranked(rows):
            rec = {k: ("" if r.get(k) is None else r[k]) for k in fields if k in r}
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
                          label=f"{r['method']} ({r['class_il']:.1f})")
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


def describe(cfg, command: str, seeds: list[int]) -> str:
    m, o, d = cfg.model, cfg.optim, cfg.data
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
    return (f"Comparison on `{d.stream}`, {seed_text}, sources `{m.sources}` "
            f"(pretrained: {m.pretrained}), {o.epochs} epoch(s) per task, {o.optimizer} lr {o.lr}, "
            f"batch {d.batch_size}, buffer {cfg.method.buffer_size}, replay batch "
            f"{cfg.method.replay_batch_size}.\n\nCommand: `{command}`")


def run_comparison(cfg, methods: list[str], out: str, command: str = "",
                   seeds: list[int] | None = None) -> list[dict]:
    """Train every method in ``methods`` with ``cfg`` (only ``method.name`` differs) once per seed
    (default: ``cfg.runtime.seed``); write the report under ``out`` after each run; return the
    rows. A run that stops on non-finite values (e.g. a penalty too stiff for the learning rate)
    marks its method diverged and the comparison goes on; any other error ends it."""
    seeds = seeds or [cfg.runtime.seed]
    # Every method's start-up checks before the first one trains: a bad combination fails in
    # seconds, not after an hour of other methods.
    stream = build_stream(cfg.data)
    configs = {}
    for name in methods:
        for seed in seeds:
            run_name = name if len(seeds) == 1 else f"{name}-seed{seed}"
            configs[name, seed] = cfg.replace(method={"name": name}, runtime={"seed": seed},
                                              log={"out_dir": out, "run_name": run_name})
        method_class(name).check_config(configs[name, seeds[0]], stream)
    del stream

    header = describe(cfg, command, seeds) if command else ""
    title = f"{cfg.data.stream}: average class-IL accuracy after each task"
    runs: dict[str, list[dict]] = {}
    rows: list[dict] = []
    try:
        for i, name in enumerate(methods):
            for seed in seeds:
                log.info("comparison %d/%d: %s (seed %d)", i + 1, len(methods), name, seed)
                trainer = Trainer(configs[name, seed])
                try:
                    runs.setdefault(name, []).append(run_from_results(trainer.fit(), seed, trainer.run_path))
                except NonFiniteError as e:
                    log.error("%s (seed %d) diverged: %s", name, seed, e)
                    runs.setdefault(name, []).append(failed_run(seed, str(e), trainer.run_path))
                rows = [method_row(m, rs) for m, rs in runs.items()]
                if distributed.is_main():
                    write_report(rows, out, header, title)
                    last = runs[name][-1]
                    if not last.get("error"):
                        log.info("%s (seed %d): class-IL %.2f (%.0f s)", name, seed, last["class_il"],
                                 last["wall_time_s"])
    finally:
        distributed.cleanup()  # under torchrun every Trainer joined the same process group
    return rows


# ---------------------------------------------------------------------- command line
def build_parser(prog: str = "lmsrr-compare") -> argparse.ArgumentParser:
    p = train_parser()
    p.prog = prog
    p.description = (
        "Train several methods on one stream with the same configuration (every training flag "
        "of lmsrr-train applies to all of them), optionally over several seeds, and write "
        "comparison.md, comparison.csv and comparison.png: final class-IL and task-IL accuracy, "
        "forgetting, backward transfer, wall time and images/s, and average accuracy after each task.")
    for action in p._actions:  # one method per run, named after it: refused in main()
        if action.dest in ("method.name", "log.run_name"):
            action.help = argparse.SUPPRESS
    g = p.add_argument_group("comparison options")
    g.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated methods to run, in order (default: {','.join(DEFAULT_METHODS)})")
    g.add_argument("--seeds", default="",
                   help="comma-separated seeds: every method runs once per seed and the report shows "
                        "mean ± standard deviation (default: --seed alone)")
    g.add_argument("--out", default="",
                   help="folder for the report and one run directory per method "
                        "(default: <out-dir>/compare-<stream>-<timestamp>)")
    return p


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
        methods = parse_methods(args.methods)
        cfg = config_from_args(args)
        seeds = parse_seeds(args.seeds) if args.seeds else [cfg.runtime.seed]
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=2))
            return 0
        out = args.out or os.path.join(cfg.log.out_dir,
                                       f"compare-{stream_label(cfg.data.stream)}-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the comparison folder {out!r} ({e.strerror}); "
                            f"choose another with --out") from e
        rows = run_comparison(cfg, methods, out, command=" ".join([prog] + [shlex.quote(a) for a in argv]),
                              seeds=seeds)
        print(markdown_table(rows))
        print(f"report: {os.path.join(out, 'comparison.md')}")
        failed = [r["method"] for r in rows if r.get("error")]
        if failed:
            print(f"{prog}: error: diverged: {', '.join(failed)} (see the report)", file=sys.stderr)
            return 1
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except WriteError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        # The finished methods are in the report; rerunning with --resume auto and the same
        # --out continues the interrupted method from its checkpoint (finished ones resume at
        # their end, where nothing is left to train).
        print(f"{prog}: {e}", file=sys.stderr)
        return 128 + e.signum
    return 0
