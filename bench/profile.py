#!/usr/bin/env python
"""Profile N training steps of the trainer with torch.profiler (CPU or GPU).

    python bench/profile.py [--warmup 3] [--active 5] [--task 1] [--trace out.json] [train flags]

Every flag of scripts/train.py is accepted (e.g. --sources, --batch-size, --precision, --compile).
Trains tasks before ``--task`` unprofiled (so replay and distillation are on), then profiles
``--active`` steps of ``--task`` after ``--warmup`` steps; writes a Chrome trace
(chrome://tracing or https://ui.perfetto.dev) and prints the top operators, peak memory and the
share of step time spent producing batches.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
# Run as a script, this file's folder heads sys.path and this file would shadow the standard
# library's `profile` module (imported by cProfile inside torch); put the checkout root there.
if sys.path and os.path.abspath(sys.path[0] or ".") == _HERE:
    sys.path[0] = os.path.dirname(_HERE)

import torch
from torch.profiler import ProfilerActivity, profile

from lmsrr.cli import build_parser, config_from_args
from lmsrr.engine import Trainer, make_optimizer
from lmsrr.perf import peak_memory_mb


def parse(argv=None):
    parser = build_parser()
    parser.prog = "bench/profile.py"
    parser.description = "Profile training steps with torch.profiler; write a Chrome trace."
    g = parser.add_argument_group("profiler options")
    g.add_argument("--warmup", type=int, default=3, help="steps run before recording (default: 3)")
    g.add_argument("--active", type=int, default=5, help="steps recorded (default: 5)")
    g.add_argument("--task", type=int, default=1,
                   help="task (0-based) whose steps are profiled; earlier tasks are trained one "
                   "epoch first, unprofiled (default: 1: replay and distillation on)")
    g.add_argument("--trace", default="profile_trace.json", help="Chrome trace output path")
    g.add_argument("--top", type=int, default=15, help="operators listed (default: 15)")
    args = parser.parse_args(argv)
    for name in ("warmup", "active"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            parser.error(f"--{name} is out of range")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    cfg = config_from_args(args)
    cfg = cfg.replace(optim={"epochs": 1}, log={"progress": False,
                      "out_dir": cfg.log.out_dir if args.__dict__.get("log.out_dir") else tempfile.mkdtemp()})
    tr = Trainer(cfg)
    if not 0 <= args.task < tr.stream.n_tasks:
        print(f"bench/profile.py: error: --task must be in 0..{tr.stream.n_tasks - 1}", file=sys.stderr)
        return 2
    for t in range(args.task):
        tr.train_task(t)
    method = tr.method
    tr.net.train()
    method.begin_task(args.task)
    opt = make_optimizer(method.parameters(), cfg.optim)
    scaler = tr.precision.scaler(tr.device)
    batches = []
    while len(batches) < args.warmup:  # enough warm-up steps even if an epoch is shorter
        batches.extend(b for b, _ in tr._batch_iter(args.task))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if tr.device.type == "cuda" else [])
    sync = torch.cuda.synchronize if tr.device.type == "cuda" else (lambda: None)
    for batch in batches[: args.warmup]:  # warm-up outside the recording (allocator, autotuning)
        tr._train_step(opt, scaler, batch)
    sync()
    data_s = step_s = 0.0
    with profile(activities=activities, profile_memory=True) as prof:
        it = tr._batch_iter(args.task)
        for i in range(args.active):
            t0 = time.perf_counter()
            try:
                batch, seconds_for_batch = next(it)
            except StopIteration:  # the task's epoch is shorter than --active
                it = tr._batch_iter(args.task)
                batch, seconds_for_batch = next(it)
            tr._train_step(opt, scaler, batch)
            sync()
            step_s += time.perf_counter() - t0
            data_s += seconds_for_batch
    prof.export_chrome_trace(args.trace)
    sort = "cuda_time_total" if tr.device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.top))
    print(f"device: {tr.device}   precision: {tr.precision.name}   steps recorded: {args.active}")
    print(f"step time: {1e3 * step_s / args.active:.1f} ms   "
          f"images/s: {args.active * cfg.data.batch_size / step_s:.1f}")
    print(f"data loading share: {100 * data_s / step_s:.1f}% of step wall time")
    print(f"peak memory: {peak_memory_mb(tr.device):.0f} MiB")
    print(f"chrome trace: {os.path.abspath(args.trace)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
