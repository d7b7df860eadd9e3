"""``lmsrr-eval`` (``scripts/eval.py``) and ``lmsrr-export`` (``scripts/export.py``).

lmsrr-eval RUN_DIR | CHECKPOINT_FOLDER | EXPORT.safetensors [--stream ...]
    rebuilds the network and the method from what was saved and reports the accuracy on the test
    split of every task trained so far (class-IL, and task-IL where defined), with the trainer's
    own evaluation code and prefix cache. No training.

lmsrr-export RUN_DIR | CHECKPOINT_FOLDER --out model.safetensors
    writes the trained weights, the method's state and the configuration to one file that
    lmsrr-eval reads.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np
import torch

from lmsrr.data import build_stream
from lmsrr.distributed import resolve_device
from lmsrr.engine import seed_everything
from lmsrr.errors import UserError
from lmsrr.evaluate import PrefixCache, evaluate_seen_tasks
from lmsrr.methods import build_method
from lmsrr.models import build_net, frozen_fingerprint
from lmsrr.saved_run import SavedRun, export, read_saved_run

log = logging.getLogger("lmsrr")

# Flags of lmsrr-eval that override the saved configuration: flag -> (group, field).
OVERRIDES = {
    "stream": ("data", "stream"), "data_root": ("data", "data_root"), "loader": ("data", "loader"),
    "eval_batch_size": ("data", "eval_batch_size"), "device": ("runtime", "device"),
    "eval_cache_mb": ("runtime", "eval_cache_mb"),
}


def evaluate_saved(run: SavedRun, overrides: dict | None = None, progress: bool = True) -> dict:
    """Accuracy of a saved run on every task it trained: {"acc_class_il": [...], ...}."""
    cfg = run.cfg()
    groups: dict[str, dict] = {}
    for (group, name), value in (overrides or {}).items():
        groups.setdefault(group, {})[name] = value
    cfg = cfg.replace(**groups)
    device = resolve_device(cfg.runtime.device)
    # The same order of random draws as the trainer: frozen weights initialised at random are
    # rebuilt exactly (the fingerprint check below proves it).
    seed_everything(cfg.runtime.seed)
    stream = build_stream(cfg.data)
    saved_classes = run.net["classifier.weight"].shape[0] if "classifier.weight" in run.net else None
    if saved_classes != stream.n_classes:
        raise UserError(f"{run.origin} was trained for {saved_classes} classes; stream "
                        f"{stream.name!r} has {stream.n_classes}: evaluate it on a stream of the same classes")
    if run.tasks_done > stream.n_tasks or run.tasks_done < 1:
        raise UserError(f"{run.origin} trained {run.tasks_done} task(s); stream {stream.name!r} has "
                        f"{stream.n_tasks}")
    net = build_net(cfg.model, stream.n_classes, stream.input_transform).to(device)
    if frozen_fingerprint(net) != run.frozen_fingerprint:
        raise UserError(f"{run.origin}: the frozen source weights rebuilt from its configuration "
                        f"(--sources {cfg.model.sources!r}, --pretrained {cfg.model.pretrained!r}, "
                        f"--seed {cfg.runtime.seed}) differ from those it was trained with; make the "
                        f"same weights available (e.g. the same weight files or hub cache)")
    missing, unexpected = net.load_state_dict(run.net, strict=False)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    lost = sorted(trainable & set(missing))
    if unexpected or lost:
        raise UserError(f"{run.origin} does not fit this network (unexpected: {sorted(unexpected)[:3]}, "
                        f"missing: {lost[:3]}); it was saved by another version of lmsrr")
    method = build_method(cfg, net, stream, device)
    method.load_state_dict(run.method)
    net.eval()
    cache = PrefixCache(cfg.runtime.eval_cache_mb) if cfg.runtime.eval_cache_mb > 0 else None
    cil, til = evaluate_seen_tasks(method, stream, run.tasks_done - 1, device,
                                   cfg.data.eval_batch_size, progress, cache)
    out = {"origin": run.origin, "stream": stream.name, "method": cfg.method.name,
           "tasks": run.tasks_done, "acc_class_il": cil, "avg_class_il": float(np.mean(cil))}
    if stream.setting != "domain-il":
        out.update({"acc_task_il": til, "avg_task_il": float(np.mean(til))})
    return out


def format_eval(res: dict) -> str:
    has_til = "acc_task_il" in res
    lines = [f"{res['origin']}: {res['method']} on {res['stream']}, {res['tasks']} task(s)",
             "task | class-IL" + (" | task-IL" if has_til else "")]
    for t, c in enumerate(res["acc_class_il"]):
        lines.append(f"{t + 1:>4} | {c:8.2f}" + (f" | {res['acc_task_il'][t]:7.2f}" if has_til else ""))
    lines.append(" avg | " + f"{res['avg_class_il']:8.2f}" + (f" | {res['avg_task_il']:7.2f}" if has_til else ""))
    return "\n".join(lines)


def build_eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmsrr-eval",
        description="Evaluate a saved run (run directory, checkpoint folder or lmsrr-export file) "
        "on the test split of every task it trained, without training.")
    p.add_argument("path", help="run directory, checkpoint folder (.../checkpoints/step-N) or "
                   ".safetensors file written by lmsrr-export")
    p.add_argument("--stream", help="evaluate on this stream instead of the one trained on (same classes)")
    p.add_argument("--data-root", help="folder holding the datasets (default: the run's)")
    p.add_argument("--loader", help="input pipeline: auto, dali or torch (default: the run's)")
    p.add_argument("--device", help="'auto', 'cpu', 'cuda' or 'cuda:N' (default: the run's)")
    p.add_argument("--eval-batch-size", type=int, help="evaluation batch size (default: the run's)")
    p.add_argument("--eval-cache-mb", type=int,
                   help="prefix-cache budget in MiB, 0 disables (default: the run's)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    p.add_argument("--json", metavar="PATH", help="also write the accuracies as JSON to PATH")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show progress bars (default: on)")
    return p


def eval_main(argv: list[str] | None = None) -> int:
    args = build_eval_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {OVERRIDES[k]: v for k, v in vars(args).items() if k in OVERRIDES and v is not None}
    try:
        res = evaluate_saved(read_saved_run(args.path), overrides, args.progress)
        if args.json:
            try:
                with open(args.json, "w") as f:
                    json.dump(res, f, indent=2)
            except OSError as e:
                raise UserError(f"cannot write --json {args.json!r} ({e.strerror})") from e
    except UserError as e:
        print(f"lmsrr-eval: error: {e}", file=sys.stderr)
        return 2
    print(format_eval(res))
    return 0


def export_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="lmsrr-export",
        description="Write a run's trained weights, method state and configuration to one "
        "safetensors file that lmsrr-eval reads.")
    p.add_argument("path", help="run directory (its newest complete checkpoint) or checkpoint folder")
    p.add_argument("--out", required=True, help="output .safetensors file")
    args = p.parse_args(argv)
    try:
        run = read_saved_run(args.path)
        export(run, args.out)
    except UserError as e:
        print(f"lmsrr-export: error: {e}", file=sys.stderr)
        return 2
    print(f"exported {run.origin} ({run.tasks_done} task(s) trained) to {args.out}")
    return 0
