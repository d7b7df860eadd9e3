#!/usr/bin/env python
"""What one training step and one evaluation batch cost, counted exactly, against a baseline.

    python bench/costs.py             # count, print the table, compare with bench/costs.json
    python bench/costs.py --update    # count and rewrite bench/costs.json (the baseline)
    python bench/costs.py --only default/lmsrr --no-compare   # some rows, no comparison

Timings cannot guard on shared machines; counts can. For each configuration below it counts, for
one full training step through the engine (``Trainer.train_step``: the method's loss, backward, the
numerics record, the optimizer step, the method's after-step work) and for one evaluation batch
(``method.predict``): FLOPs, aten operators, bytes saved for backward, parameter / method-state /
optimizer-state bytes and host syncs (see ``cost_counters.py``); and, under ``torch.compile``
(backend ``eager``: dynamo's counters do not depend on the backend), graph breaks, the frames
compiled in the first task and those compiled again after two task switches.

Configurations (rows are ``<setting>/<method>/<what>``):

- ``paper``: the paper's step, 2 x ViT-B/16 at 224 (the released code's sources, ``--msidf
  reference``), batch 32 + replay 32, bf16 autocast, a CIFAR-100-shaped stream (100 classes,
  10 tasks, 32x32 inputs resized by the sources), on the first task and a later task, and one
  evaluation batch of 256. Counted under ``FakeTensorMode``: no weights, no data, no arithmetic.
- ``default``: the default job's step (``python scripts/train.py``: seq-digits, the two tiny
  random sources, fp32), on real tensors; every ``--method`` on a later task.
- ``batchnorm``: a BatchNorm source (a ResNet-18 at 32x32 next to the default ViT), whose
  stream and replay batches need separate forwards.
- ``released``: the released code's four-pass formulation (``lmsrr/released.py``) on the same
  network, batch and replay batch, for the ratios.

The guard (``tests/test_costs.py``) recounts and fails when a counter rises beyond its tolerance
(:data:`TOLERANCE`); an intended change is recorded with ``--update`` and shows up in review as a
diff of ``bench/costs.json``. Counts are exact for one torch / timm version (recorded in the file);
another version may dispatch other operators.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from unittest import mock

_HERE = os.path.dirname(os.path.abspath(__file__))
# Run as a script, this folder heads sys.path, and bench/profile.py would shadow the standard
# library's `profile` (imported by cProfile inside torch): put the checkout root first and this
# folder last, where only its own modules are found.
if sys.path and os.path.abspath(sys.path[0] or ".") == _HERE:
    sys.path[0] = os.path.dirname(_HERE)
if _HERE not in sys.path:
    sys.path.append(_HERE)

import timm  # noqa: E402
import torch  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

import lmsrr.engine  # noqa: E402
from cost_counters import (Counts, compile_events, counting, reset_compile_state,  # noqa: E402
                           state_storages, tensor_bytes)
from lmsrr.config import DEFAULT_SOURCES, Config  # noqa: E402
from lmsrr.data.augment import to_float  # noqa: E402
from lmsrr.engine import Trainer  # noqa: E402
from lmsrr.methods.registry import available_methods  # noqa: E402
from lmsrr.models import build_net  # noqa: E402
from lmsrr.released import released_loss  # noqa: E402
from step_setup import step_config  # noqa: E402
from lmsrr.synthetic import synthetic_stream  # noqa: E402

BASELINE = os.path.join(_HERE, "costs.json")

# How far a counter may rise above the baseline before the guard fails (a fraction; 0: not at all).
TOLERANCE = {
    "flops": 0.01,
    "saved_bytes": 0.01,
    "ops": 0.05,
    "syncs": 0,
    "param_bytes": 0.01,
    "trainable_bytes": 0.01,
    "method_state_bytes": 0.01,
    "optimizer_bytes": 0.01,
    "graph_breaks": 0,
    "first_task_compiles": 0,
    "recompiles": 0,
}

# The default job's ViT next to a ResNet-18 at 32x32: BatchNorm in the trainable stages.
BATCHNORM_SOURCES = DEFAULT_SOURCES.split("),")[0] + "),resnet18(input_size=32)"
PAPER_EVAL_BATCH = 256
COMPILE_STEPS = 2  # per task: the first step has no replay yet, the second has


@dataclass(frozen=True)
class Setting:
    """One network and configuration whose rows are counted on one trainer."""
    name: str
    method: str = "lmsrr"
    sources: str = ""  # "" = the default job's
    paper: bool = False  # FakeTensor, the paper's sizes
    first_task: bool = False  # also count a first-task step
    released: bool = False  # also count the released formulation
    compiled: bool = False  # count graph breaks and recompiles instead

    @property
    def prefix(self) -> str:
        return f"{self.name}/{self.method}"

    @property
    def row_prefixes(self) -> list[str]:
        if self.compiled:
            return [f"{self.prefix}/compile"]
        return [f"{self.prefix}/step", f"{self.prefix}/eval"] + ([f"{self.name}/released"] if self.released else [])


def settings() -> list[Setting]:
    out = [
        Setting("paper", paper=True, first_task=True, released=True),
        Setting("default", first_task=True, released=True),
        Setting("default", compiled=True),
        Setting("batchnorm", sources=BATCHNORM_SOURCES),
    ]
    out += [Setting("default", method=m) for m in available_methods() if m != "lmsrr"]
    return out


# ---------------------------------------------------------------------------------- set-up
def config_for(s: Setting) -> Config:
    if s.paper:
        cfg = step_config(gpu=True)  # the paper's sources and recipe, as the step benchmark
        return cfg.replace(runtime={"device": "cpu", "precision": "bf16"},
                           data={"eval_batch_size": PAPER_EVAL_BATCH})
    cfg = Config().replace(method={"name": s.method}, model={"pretrained": "none"}, log={"progress": False},
                           runtime={"device": "cpu", "precision": "fp32"})
    if s.sources:
        cfg = cfg.replace(model={"sources": s.sources})
    if s.compiled:
        cfg = cfg.replace(runtime={"compile": True, "compile_backend": "eager"})
    return cfg


class Run:
    """A trainer and what a step needs (optimizer, scaler, the task's batches).

    With ``fake``, the network is built on the meta device (no initialisation work) and every
    parameter and buffer becomes a fake tensor: steps run in a FakeTensorMode, with shapes,
    dtypes and autograd as usual but no data and no arithmetic, so the paper's sizes are counted
    in seconds. Batches are drawn outside the mode, from the stream's real data, and enter it as
    fake tensors. ``stream``: the stream the trainer gets instead of the configured one."""

    def __init__(self, cfg: Config, run_dir: str, fake: bool = False, stream=None):
        self.cfg = cfg
        self.fake = fake
        self.mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
        torch.manual_seed(0)
        with contextlib.ExitStack() as stack:
            # The trainer takes a stream; it builds its network by name: this patch hands it another.
            if fake:
                n_classes = (stream or lmsrr.engine.build_stream(cfg.data)).n_classes
                net = self.storage_free_net(n_classes)
                stack.enter_context(mock.patch.object(lmsrr.engine, "build_net", lambda *_: net))
            self.trainer = Trainer(cfg, run_dir=run_dir, stream=stream)
        self.method = self.trainer.method
        self.net = self.trainer.net
        self.device = self.trainer.device
        self.opt = self.scaler = self.batches = None
        if fake:
            # Parameters and buffers become fake twins in place, once (the trainer and the
            # method keep the same objects): a real tensor entering the mode would be converted
            # again at every use. Not earlier: moving a module of fake tensors (the trainer's
            # .to(device)) is not supported.
            self.net._apply(self.mode.from_tensor)
            torch.nn.ParameterList(self.method.outside_parameters())._apply(self.mode.from_tensor)

    def storage_free_net(self, n_classes: int):
        """The configured network, built on the meta device (timm reads values while it builds,
        which fake tensors cannot give), with CPU storage that is never written."""
        with torch.device("meta"):
            net = build_net(self.cfg.model, n_classes)
        return net.to_empty(device="cpu")

    def whole_copy(self):
        """A second network like the trainer's (the released code's old model)."""
        if not self.fake:
            return copy.deepcopy(self.net)
        return self.storage_free_net(self.trainer.stream.n_classes)._apply(self.mode.from_tensor).train()

    @contextlib.contextmanager
    def inside(self):
        """The fake mode, when there is one."""
        if not self.fake:
            yield
            return
        with warnings.catch_warnings(), self.mode:
            # copy.deepcopy of a module (the old model's snapshot) asks each tensor for its
            # data pointer, which a fake tensor answers with a deprecation warning.
            warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
            yield

    def start_task(self, t: int) -> None:
        """What the trainer does at a task's start: begin_task, a fresh optimizer and scaler."""
        self.net.train()
        with self.inside():
            self.method.begin_task(t)
            self.opt = self.trainer.new_optimizer()
        self.scaler = self.trainer.precision.scaler(self.device)
        self.batches = self.trainer.batches(t)

    def end_task(self, t: int) -> None:
        with self.inside():
            self.method.end_task(t)

    def next_batch(self):
        return next(self.batches)[0]  # outside the fake mode: the stream's data is real

    def step(self, batch=None) -> None:
        batch = batch if batch is not None else self.next_batch()
        with self.inside():
            self.trainer.train_step(self.opt, self.scaler, batch)

    def state(self) -> list:
        """Everything the method keeps across steps, whose storages are not activations."""
        return [self.net, self.method.parameters(), self.method.state_dict()]

    def sizes(self) -> dict[str, int]:
        return {"param_bytes": tensor_bytes(list(self.net.parameters())),
                "trainable_bytes": tensor_bytes(self.method.parameters()),
                "method_state_bytes": tensor_bytes(self.method.state_dict()),
                "optimizer_bytes": tensor_bytes(list(self.opt.state.values()))}


def step_row(c: Counts) -> dict:
    return {"flops": c.flops, "ops": c.ops, "saved_bytes": c.saved_bytes, "syncs": c.syncs,
            "sync_ops": c.sync_ops}


def count_step(run: Run) -> dict:
    batch = run.next_batch()
    with run.inside(), counting(state_storages(*run.state()), fake=run.fake) as c:
        run.trainer.train_step(run.opt, run.scaler, batch)
    return {**step_row(c), **run.sizes()}


def count_eval(run: Run, task: int) -> dict:
    run.net.eval()
    x, _ = next(iter(run.trainer.stream.test_batches(task, run.cfg.data.eval_batch_size, run.device)))
    with run.inside(), counting(fake=run.fake) as c:
        run.method.predict(to_float(x))
    row = step_row(c)
    del row["saved_bytes"]  # nothing is saved without autograd
    return row


def count_released(run: Run, task: int, old_net) -> dict:
    """The released formulation's step on the same network, batch and replay batch: its four
    passes, backward and the optimizer step (the old model is a whole copy of the network)."""
    method, net, stream = run.method, run.net, run.trainer.stream
    net.train()
    batch = run.next_batch()
    with run.inside():
        opt = run.trainer.update.build([method.parameters()], run.cfg.optim)
    with run.inside(), counting(state_storages(*run.state(), old_net), fake=run.fake) as c:
        buf_x, _, buf_logits, _ = method.buffer.sample(method.replay_batch)
        noise = method.switch.sample_noise()
        with run.trainer.precision.autocast(run.device):
            loss = released_loss(net, old_net, method.switch, task, batch.x_aug, batch.y,
                                 stream.augment(buf_x), buf_logits, noise, method.alpha, method.beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    row = {**step_row(c), **run.sizes()}
    row["optimizer_bytes"] = tensor_bytes(list(opt.state.values()))
    row["param_bytes"] = tensor_bytes(list(net.parameters()), list(old_net.parameters()))
    row["method_state_bytes"] = tensor_bytes(method.switch, method.buffer.state_dict())
    return row


def count_setting(s: Setting, run_dir: str) -> dict[str, dict]:
    """The rows of one setting: a first-task step (one step earlier has filled the replay
    buffer), a later-task step, an evaluation batch, and the released formulation's steps."""
    torch.manual_seed(0)
    if s.compiled:
        return {f"{s.prefix}/compile": count_compile(s, run_dir)}
    stream = synthetic_stream(per_class=-(-PAPER_EVAL_BATCH // 10)) if s.paper else None  # a full eval batch per task
    run = Run(config_for(s), run_dir, fake=s.paper, stream=stream)
    rows = {}
    has_steps = run.method.num_train_batches(0, run.cfg.data.batch_size) > 0
    run.start_task(0)
    if has_steps:
        run.step()  # the buffer fills: from the next step on, replay is on
        if s.first_task:
            rows[f"{s.prefix}/step-task1"] = count_step(run)
    run.end_task(0)
    run.start_task(1)  # the old model exists; distillation (where the method has it) is on
    if has_steps:
        rows[f"{s.prefix}/step-task2"] = count_step(run)
    rows[f"{s.prefix}/eval"] = count_eval(run, 1)
    if s.released:
        old_net = run.whole_copy()  # the released code keeps a whole second network
        rows[f"{s.name}/released/step-task1"] = count_released(run, 0, old_net)
        rows[f"{s.name}/released/step-task2"] = count_released(run, 1, old_net)
    return rows


def count_compile(s: Setting, run_dir: str) -> dict:
    """Graph breaks and compiled frames over three tasks (two switches) of a compiled top."""
    reset_compile_state()
    try:
        run = Run(config_for(s), run_dir, fake=False)
        frames_after_first = 0
        for t in range(3):
            run.start_task(t)
            for _ in range(COMPILE_STEPS):
                run.step()
            run.end_task(t)
            if t == 0:
                frames_after_first = compile_events()["compiled_frames"]
        events = compile_events()
    finally:
        reset_compile_state()  # leave no compiled frames behind for whoever runs next
    return {"graph_breaks": events["graph_breaks"], "first_task_compiles": frames_after_first,
            "recompiles": events["compiled_frames"] - frames_after_first}


@contextlib.contextmanager
def fixed_global_state():
    """Global switches that change which operators run, as a fresh process has them."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def count_all(only: list[str] | None = None, released: bool = True) -> dict[str, dict]:
    """Rows of every setting (or those whose row names start with one of ``only``); without
    ``released``, the released formulation's rows (a reference, not code under guard) are
    left out."""
    rows: dict[str, dict] = {}
    with fixed_global_state(), tempfile.TemporaryDirectory() as tmp:
        for i, s in enumerate(settings()):
            if only and not any(_overlap(o, prefix) for o in only for prefix in s.row_prefixes):
                continue
            if not released:
                s = dataclasses.replace(s, released=False)
            rows.update(count_setting(s, os.path.join(tmp, f"run{i}")))
    if only:
        rows = {k: v for k, v in rows.items() if any(_overlap(o, k) for o in only)}
    return rows


def _overlap(a: str, b: str) -> bool:
    return a.startswith(b) or b.startswith(a)


# ---------------------------------------------------------------------------------- baseline
def versions() -> dict[str, str]:
    return {"torch": torch.__version__, "timm": timm.__version__}


def load_baseline(path: str = BASELINE) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_baseline(rows: dict[str, dict], path: str = BASELINE) -> None:
    data = {"about": "written by `python bench/costs.py --update`; guarded by tests/test_costs.py",
            **versions(), "rows": rows}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")


@dataclass
class Change:
    row: str
    counter: str
    old: float | None
    new: float | None

    @property
    def limit(self) -> float | None:
        if self.old is None:
            return None
        return self.old * (1 + TOLERANCE[self.counter])

    @property
    def regressed(self) -> bool:
        if self.old is None or self.new is None:
            return True  # a row or counter without a baseline (or gone): update the baseline
        return self.new > self.limit

    def describe(self) -> str:
        if self.old is None:
            return "no baseline"
        if self.new is None:
            return "not counted any more"
        if self.old == 0:
            return "new" if self.new else "="
        pct = 100 * (self.new - self.old) / self.old
        tol = TOLERANCE[self.counter]
        return f"{pct:+.2f}% (limit +{100 * tol:g}%)" if tol else f"{self.new - self.old:+g} (limit +0)"


def compare(baseline: dict, rows: dict[str, dict], complete: bool = True) -> list[Change]:
    """Every guarded counter of every row that differs from the baseline (regressions and
    improvements alike; :attr:`Change.regressed` tells which). ``complete``: ``rows`` is a full
    count, so a baseline row missing from it is a change; otherwise only the rows counted are
    compared."""
    old_rows = baseline["rows"]
    changes = []
    for name in sorted(set(old_rows) | set(rows)):
        if not complete and name not in rows:
            continue
        old, new = old_rows.get(name, {}), rows.get(name, {})
        for counter in TOLERANCE:
            if counter not in old and counter not in new:
                continue
            o, n = old.get(counter), new.get(counter)
            if o != n:
                changes.append(Change(name, counter, o, n))
    return changes


def format_changes(changes: list[Change], sync_ops: dict[str, dict] | None = None) -> str:
    if not changes:
        return "every counter equals the baseline"
    w = max(len(c.row) for c in changes) + 2
    lines = [f"{'row':<{w}}{'counter':<22}{'old':>18}{'new':>18}  change"]
    for c in changes:
        mark = "  REGRESSION" if c.regressed else ""
        fmt = lambda v: "-" if v is None else f"{v:,.0f}"  # noqa: E731
        lines.append(f"{c.row:<{w}}{c.counter:<22}{fmt(c.old):>18}{fmt(c.new):>18}  {c.describe()}{mark}")
        if c.counter == "syncs" and sync_ops and c.row in sync_ops:
            lines.append(f"{'':<{w}}  host syncs now: {sync_ops[c.row] or 'none'}")
    return "\n".join(lines)


def regressions(baseline: dict, rows: dict[str, dict], complete: bool = True) -> list[Change]:
    return [c for c in compare(baseline, rows, complete) if c.regressed]


def version_note(baseline: dict) -> str:
    now = versions()
    diff = [f"{k} {baseline.get(k)} -> {v}" for k, v in now.items() if baseline.get(k) != v]
    return ("baseline recorded with other versions (" + ", ".join(diff) + "): operator counts may "
            "differ for that reason alone") if diff else ""


# ---------------------------------------------------------------------------------- table
GIB, MIB = 2**30, 2**20


def format_table(rows: dict[str, dict]) -> str:
    steps = {k: v for k, v in rows.items() if "flops" in v}
    w = max([len(k) for k in rows] + [20]) + 2
    out = [f"{'row':<{w}}{'GFLOP':>10}{'ops':>8}{'saved MiB':>11}{'syncs':>6}"
           f"{'params MiB':>11}{'trained MiB':>12}{'state MiB':>10}{'optim MiB':>10}"]
    for k, v in steps.items():
        saved = f"{v['saved_bytes'] / MIB:.1f}" if "saved_bytes" in v else "-"
        sizes = "".join(f"{v[f] / MIB:>{n}.1f}" if f in v else f"{'-':>{n}}" for f, n in
                        (("param_bytes", 11), ("trainable_bytes", 12), ("method_state_bytes", 10),
                         ("optimizer_bytes", 10)))
        out.append(f"{k:<{w}}{v['flops'] / 1e9:>10.2f}{v['ops']:>8}{saved:>11}{v['syncs']:>6}{sizes}")
    compiled = {k: v for k, v in rows.items() if "graph_breaks" in v}
    if compiled:
        out += ["", f"{'torch.compile (backend eager), 3 tasks':<{w}}{'graph breaks':>14}"
                    f"{'first-task compiles':>21}{'recompiles after switches':>27}"]
        for k, v in compiled.items():
            out.append(f"{k:<{w}}{v['graph_breaks']:>14}{v['first_task_compiles']:>21}{v['recompiles']:>27}")
    ratios = format_ratios(rows)
    if ratios:
        out += ["", ratios]
    syncing = {k: v["sync_ops"] for k, v in steps.items() if v.get("sync_ops")}
    if syncing:
        out += ["", "host syncs:"] + [f"  {k}: {v}" for k, v in syncing.items()]
    return "\n".join(out)


def format_ratios(rows: dict[str, dict]) -> str:
    lines = []
    for setting in ("paper", "default"):
        for task in ("task1", "task2"):
            ours, rel = rows.get(f"{setting}/lmsrr/step-{task}"), rows.get(f"{setting}/released/step-{task}")
            if ours and rel:
                lines.append(f"{setting} step {task}: released / ours  FLOPs {rel['flops'] / ours['flops']:.2f}x"
                             f"  saved for backward {rel['saved_bytes'] / ours['saved_bytes']:.2f}x"
                             f"  ops {rel['ops'] / ours['ops']:.2f}x  syncs {rel['syncs']} vs {ours['syncs']}")
    return "\n".join(lines)


def paper_summary(rows: dict[str, dict]) -> str:
    """The README's table: the paper's step, ours vs the released formulation."""
    lines = ["| step (2 x ViT-B/16 at 224, batch 32 + replay 32, bf16) | GFLOP / step | "
             "activations saved for backward (GiB) | host syncs / step |", "|---|---:|---:|---:|"]
    for task, label in (("task1", "first task"), ("task2", "later task (distillation on)")):
        for who, name in (("lmsrr", "ours"), ("released", "released four passes")):
            r = rows.get(f"paper/{who}/step-{task}")
            if r:
                lines.append(f"| {label}, {name} | {r['flops'] / 1e9:,.0f} | {r['saved_bytes'] / GIB:.2f} | {r['syncs']} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--update", action="store_true", help=f"rewrite the baseline {os.path.relpath(BASELINE)}")
    p.add_argument("--only", default="", help="comma-separated row-name prefixes (e.g. paper,default/lmsrr)")
    p.add_argument("--no-compare", action="store_true", help="print the counts only")
    p.add_argument("--markdown", action="store_true", help="also print the README's paper-size table")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # counts do not depend on it; shared machines prefer it
    only = [o for o in args.only.split(",") if o]
    if args.update and only:
        p.error("--update rewrites the whole baseline: drop --only")
    t0 = time.perf_counter()
    rows = count_all(only)
    print(format_table(rows))
    if args.markdown:
        print("\n" + paper_summary(rows))
    print(f"\ncounted {len(rows)} rows in {time.perf_counter() - t0:.1f} s (torch {torch.__version__}, "
          f"timm {timm.__version__})")
    if args.update:
        save_baseline(rows)
        print(f"baseline written: {BASELINE}")
        return 0
    if args.no_compare or not os.path.exists(BASELINE):
        return 0
    baseline = load_baseline()
    changes = compare(baseline, rows, complete=not only)
    print("\nagainst the baseline " + os.path.relpath(BASELINE) + ":")
    print(format_changes(changes, {k: v.get("sync_ops") for k, v in rows.items()}))
    note = version_note(baseline)
    if note:
        print(note)
    return 1 if any(c.regressed for c in changes) else 0


if __name__ == "__main__":
    sys.exit(main())
