#!/usr/bin/env python
"""Profile training steps with torch.profiler (CPU or GPU): the trainer's own ``--profile``.

    python bench/profile.py [--profile-task 2] [--profile-active 5] [--profile-trace out.json] [train flags]

Every flag of scripts/train.py is accepted (e.g. --sources, --batch-size, --precision, --compile).
Trains one epoch of every task up to ``--profile-task`` (earlier ones unprofiled, so replay and
distillation are on), records the profiler window of that task's first steps, writes a Chrome
trace (chrome://tracing or https://ui.perfetto.dev) and prints the top operators, step time,
images/s, the share of step time spent producing batches and peak memory.
"""
from __future__ import annotations

import os
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
# Run as a script, this file's folder heads sys.path and this file would shadow the standard
# library's `profile` module (imported by cProfile inside torch); put the checkout root there.
if sys.path and os.path.abspath(sys.path[0] or ".") == _HERE:
    sys.path[0] = os.path.dirname(_HERE)

from lmsrr.cli import build_parser, config_from_args  # noqa: E402
from lmsrr.engine import Trainer  # noqa: E402
from lmsrr.errors import UserError  # noqa: E402


def main(argv=None) -> int:
    parser = build_parser()
    parser.prog = "bench/profile.py"
    parser.description = "Profile training steps with torch.profiler; write a Chrome trace."
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        given = vars(args)
        cfg = cfg.replace(
            optim={"epochs": 1},
            runtime={"stop_after": cfg.profile.task},
            profile={"enabled": True,
                     "trace": cfg.profile.trace or os.path.abspath("profile_trace.json")},
            log={"progress": False,
                 "out_dir": cfg.log.out_dir if "log.out_dir" in given else tempfile.mkdtemp()})
        trainer = Trainer(cfg)
        trainer.fit()
    except UserError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    summary = trainer.profiler.summary
    if not summary or not summary["steps_recorded"]:
        print(f"{parser.prog}: error: task {cfg.profile.task} has fewer steps than the profiler's "
              f"wait + warmup ({cfg.profile.wait} + {cfg.profile.warmup}); lower them", file=sys.stderr)
        return 2
    print(summary["table"])
    print(f"device: {trainer.device}   precision: {trainer.precision.name}   "
          f"steps recorded: {summary['steps_recorded']}")
    print(f"step time: {summary['step_ms']:.1f} ms   images/s: {summary['images_per_s']:.1f}")
    print(f"data loading share: {100 * summary['data_share']:.1f}% of step wall time")
    print(f"peak memory: {summary['peak_memory_mb']:.0f} MiB")
    print(f"chrome trace: {summary['trace']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
