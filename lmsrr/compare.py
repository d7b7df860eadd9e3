"""Compare methods on one stream with the same configuration: ``lmsrr-compare`` / ``scripts/compare.py``.

Every method runs through :class:`lmsrr.engine.Trainer` with the same configuration (seed,
sources, stream, loaders, precision, epochs, batch size, ...) except ``--method``, so they differ
only in the method. Each run keeps its own run directory (``<out>/<method>/``); the comparison
writes, next to them:

    comparison.md    a Markdown table, best final class-IL accuracy first
    comparison.csv   the same numbers and more (per-task curves, task-IL forgetting, run paths)
    comparison.png   average class-IL accuracy after each task, one line per method

The report is rewritten after every method, so a long comparison loses nothing finished; the
same command with ``--resume auto`` continues an interrupted one (each method's run directory
keeps its checkpoints; finished methods resume at their end).
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import shlex
import sys
import time

from lmsrr.errors import UserError

log = logging.getLogger("lmsrr.compare")

# The line-up: LMSRR, the upper and lower bounds, replay, distillation, regularisation,
# and the pre-trained nearest-mean baseline.
DEFAULT_METHODS = ("lmsrr", "joint", "derpp", "der", "er", "icarl", "agem", "lwf", "ewc", "si",
                   "nmc", "finetune")

CSV_FIELDS = ("method", "class_il", "task_il", "forgetting", "bwt", "task_il_forgetting",
              "task_il_bwt", "wall_time_s", "train_time_s", "images_per_s", "steps")


def parse_methods(text: str) -> list[str]:
    """Comma-separated registered names, in order, without repeats; unknown names are an error
    that suggests the closest registered one."""
    from lmsrr.methods.registry import method_class

    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise UserError("--methods names no method")
    dup = sorted({m for m in names if names.count(m) > 1})
    if dup:
        raise UserError(f"--methods names {', '.join(dup)} more than once")
    for name in names:
        method_class(name)
    return names


def row_from_results(method: str, results: dict, run_dir: str = "") -> dict:
    """One table row from a run's ``results.json``."""
    cil = results["summary_class_il"]
    til = results.get("summary_task_il")  # absent for domain-IL streams or --metrics class-il
    curve = [sum(r) / len(r) for r in results["acc_class_il"]]
    return {
        "method": method,
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
        "curve": curve,
        "run_dir": run_dir,
    }


def failed_row(method: str, error: str, run_dir: str = "") -> dict:
    """A method whose run stopped on non-finite values: listed last, with the reason."""
    row = {k: None for k in CSV_FIELDS}
    row.update({"method": method, "curve": [], "run_dir": run_dir, "error": error})
    return row


def ranked(rows: list[dict]) -> list[dict]:
    """Best final class-IL accuracy first, failed runs last (ties: the order the methods ran in)."""
    return sorted(rows, key=lambda r: (r["class_il"] is None, -(r["class_il"] or 0.0)))


def _fmt(v, digits: int = 1, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.{digits}f}{unit}"


def markdown_table(rows: list[dict]) -> str:
    lines = ["| method | class-IL (%) | task-IL (%) | forgetting | BWT | wall time (s) | images/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in ranked(rows):
        if r.get("error"):
            lines.append(f"| {r['method']} | diverged (see below) | — | — | — | — | — |")
            continue
        lines.append(f"| {r['method']} | {_fmt(r['class_il'])} | {_fmt(r['task_il'])} | "
                     f"{_fmt(r['forgetting'])} | {_fmt(r['bwt'])} | {_fmt(r['wall_time_s'], 0)} | "
                     f"{_fmt(r['images_per_s'], 0)} |")
    return "\n".join(lines)


NOTES = """\
Final average accuracy over all tasks after the last one. Forgetting and BWT are class-IL (mean
over earlier tasks of best-earlier minus final accuracy, and of final minus just-learned accuracy).
Wall time: the whole run (training, evaluation after every task, checkpoints). images/s: stream
images per second of training time (replayed samples not counted). joint: cumulative training on
the union of all tasks seen so far, evaluated after each task (the upper bound). nmc: no training
steps (class means of the frozen network's fused features), hence no images/s."""


def write_markdown(rows: list[dict], path: str, header: str = "") -> None:
    text = (header + "\n\n" if header else "") + markdown_table(rows) + "\n\n" + NOTES + "\n"
    for r in rows:
        if r.get("error"):
            text += f"\n{r['method']}: {r['error']}\n"
    _atomic_write(path, text)


def write_csv(rows: list[dict], path: str) -> None:
    n = max((len(r["curve"]) for r in rows), default=0)
    fields = list(CSV_FIELDS) + [f"class_il_after_task_{t + 1}" for t in range(n)] + ["run_dir", "error"]
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in ranked(rows):
            rec = {k: ("" if r.get(k) is None else r[k]) for k in CSV_FIELDS}
            rec.update({f"class_il_after_task_{t + 1}": v for t, v in enumerate(r["curve"])})
            rec["run_dir"] = r["run_dir"]
            rec["error"] = r.get("error", "")
            w.writerow(rec)
    os.replace(tmp, path)


def plot_curves(rows: list[dict], path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in ranked(rows):
        if r.get("error"):
            continue
        xs = range(1, len(r["curve"]) + 1)
        ax.plot(xs, r["curve"], marker="o", markersize=3, label=f"{r['method']} ({r['class_il']:.1f})")
    n = max((len(r["curve"]) for r in rows), default=1)
    ax.set_xticks(range(1, n + 1))
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


def describe(cfg, command: str) -> str:
    m, o, d = cfg.model, cfg.optim, cfg.data
    return (f"Comparison on `{d.stream}`, seed {cfg.runtime.seed}, sources `{m.sources}` "
            f"(pretrained: {m.pretrained}), {o.epochs} epoch(s) per task, {o.optimizer} lr {o.lr}, "
            f"batch {d.batch_size}, buffer {cfg.method.buffer_size}, replay batch "
            f"{cfg.method.replay_batch_size}.\n\nCommand: `{command}`")


def run_comparison(cfg, methods: list[str], out: str, command: str = "") -> list[dict]:
    """Train every method in ``methods`` with ``cfg`` (only ``method.name`` differs); write the
    report under ``out`` after each one; return the rows. A method whose training stops on
    non-finite values (e.g. a too stiff penalty for the learning rate) is reported as diverged
    and the comparison goes on; any other error ends it."""
    from lmsrr import distributed
    from lmsrr.data import build_stream
    from lmsrr.engine import Trainer
    from lmsrr.guard import NonFiniteError
    from lmsrr.methods.registry import method_class

    # Every method's start-up checks before the first one trains: a bad combination fails in
    # seconds, not after an hour of other methods.
    stream = build_stream(cfg.data)
    configs = {}
    for name in methods:
        configs[name] = cfg.replace(method={"name": name}, log={"out_dir": out, "run_name": name})
        method_class(name).check_config(configs[name], stream)
    del stream

    header = describe(cfg, command) if command else ""
    title = f"{cfg.data.stream}: average class-IL accuracy after each task"
    rows = []
    try:
        for i, name in enumerate(methods):
            log.info("comparison %d/%d: %s", i + 1, len(methods), name)
            t0 = time.perf_counter()
            trainer = Trainer(configs[name])
            try:
                rows.append(row_from_results(name, trainer.fit(), trainer.run_path))
            except NonFiniteError as e:
                log.error("%s diverged: %s", name, e)
                rows.append(failed_row(name, str(e), trainer.run_path))
            if distributed.is_main():
                write_report(rows, out, header, title)
                if rows[-1].get("error") is None:
                    log.info("%s: class-IL %.2f (%.0f s)", name, rows[-1]["class_il"],
                             time.perf_counter() - t0)
    finally:
        distributed.cleanup()  # under torchrun every Trainer joined the same process group
    return rows


# ---------------------------------------------------------------------- command line
def build_parser(prog: str = "lmsrr-compare") -> argparse.ArgumentParser:
    from lmsrr.cli import build_parser as train_parser

    p = train_parser()
    p.prog = prog
    p.description = (
        "Train several methods on one stream with the same configuration (every training flag "
        "of lmsrr-train applies to all of them) and write comparison.md, comparison.csv and "
        "comparison.png: final class-IL and task-IL accuracy, forgetting, backward transfer, "
        "wall time and images/s, and average accuracy after each task.")
    for action in p._actions:  # one method per run, named after it: refused in main()
        if action.dest in ("method.name", "log.run_name"):
            action.help = argparse.SUPPRESS
    g = p.add_argument_group("comparison options")
    g.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated methods to run, in order (default: {','.join(DEFAULT_METHODS)})")
    g.add_argument("--out", default="",
                   help="folder for the report and one run directory per method "
                        "(default: <out-dir>/compare-<stream>-<timestamp>)")
    return p


def main(argv: list[str] | None = None, prog: str = "lmsrr-compare") -> int:
    from lmsrr.cli import config_from_args
    from lmsrr.engine import Interrupted
    from lmsrr.guard import NonFiniteError

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
        if args.print_config:
            import json

            print(json.dumps(cfg.to_dict(), indent=2))
            return 0
        out = args.out or os.path.join(cfg.log.out_dir,
                                       f"compare-{cfg.data.stream}-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the comparison folder {out!r} ({e.strerror}); "
                            f"choose another with --out") from e
        rows = run_comparison(cfg, methods, out, command=" ".join([prog] + [shlex.quote(a) for a in argv]))
        print(markdown_table(rows))
        print(f"report: {os.path.join(out, 'comparison.md')}")
        failed = [r["method"] for r in rows if r.get("error")]
        if failed:
            print(f"{prog}: error: diverged: {', '.join(failed)} (see the report)", file=sys.stderr)
            return 1
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        # The finished methods are in the report; rerunning with --resume auto and the same
        # --out continues the interrupted method from its checkpoint (finished ones resume at
        # their end, where nothing is left to train).
        print(f"{prog}: {e}", file=sys.stderr)
        return 128 + e.signum
    except NonFiniteError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    return 0
