"""The trainer: tasks, epochs and steps; backward and the optimizer step; evaluation; results.

Methods return a loss (:class:`lmsrr.methods.StepOutput`); the engine owns everything around it:
mixed precision and loss scaling, ``torch.compile`` of the trainable top (before the DDP wrap;
the uncompiled network serves evaluation and checkpoints), DDP under torchrun, the optimizer
(re-created at every task start, as in the released code), evaluation and the run directory.
"""
from __future__ import annotations

import logging
import os
import random
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from lmsrr import distributed
from lmsrr.config import Config
from lmsrr.data import build_stream
from lmsrr.errors import ConfigError
from lmsrr.evaluate import PrefixCache, evaluate_seen_tasks
from lmsrr.methods import Batch, build_method
from lmsrr.metrics import summarize
from lmsrr.models import TrainableTop, build_net
from lmsrr.perf import StepTimer, count_flops, peak_flops, peak_memory_mb
from lmsrr.precision import resolve_precision
from lmsrr.results import RunDir, format_summary

log = logging.getLogger("lmsrr")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; use --device cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(params, optim_cfg) -> torch.optim.Optimizer:
    if optim_cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                               weight_decay=optim_cfg.weight_decay)
    return torch.optim.AdamW(params, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)


def wrap_top(method, net, rt, device) -> torch.nn.Module:
    """Compile (optionally) and DDP-wrap the trainable top; the method trains through it."""
    top = TrainableTop(net)
    if rt.compile:
        top = torch.compile(top, backend=rt.compile_backend)
    if distributed.is_initialized():
        # The switch vector is used outside the top's forward (its gates weight the loss), so
        # DDP's reducer cannot track it; its tiny gradient is averaged by hand instead.
        switch = {id(p) for p in net.switch.parameters()}
        ignore = [n for n, p in top.named_parameters() if id(p) in switch]
        DDP._set_params_and_buffers_to_ignore_for_model(top, ignore)
        top = DDP(top, device_ids=[device.index] if device.type == "cuda" else None)
    method.top = top
    return top


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | None = None):
        self.cfg = cfg
        rt = cfg.runtime
        if rt.threads:
            torch.set_num_threads(rt.threads)
        if rt.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.device = distributed.init(rt.device, rt.dist_backend)
        self.main = distributed.is_main()
        # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
        seed_everything(rt.seed)
        # Validate everything cheap before any heavy work: stream and method names, data on disk.
        self.stream = build_stream(cfg.data)
        from lmsrr.methods.registry import method_class

        # The method's own start-up checks (e.g. a replay method without --buffer-size).
        method_class(cfg.method.name).check_config(cfg, self.stream)
        self.net = build_net(cfg.model, cfg.method, self.stream.n_classes).to(self.device)
        self.precision = resolve_precision(rt.precision, self.device)
        self.method = build_method(cfg, self.net, self.stream, self.device)
        wrap_top(self.method, self.net, rt, self.device)
        # Augmentation, replay sampling and Gumbel noise may differ across ranks.
        torch.manual_seed(rt.seed + distributed.rank())
        self.run = None
        if self.main:
            name = cfg.log.run_name or f"{cfg.data.stream}-{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            self.run = RunDir(run_dir or os.path.join(cfg.log.out_dir, name))
            self.run.write_json("config.json", cfg.to_dict())
            skipped = getattr(self.stream, "skipped_files", [])
            if skipped:  # unreadable images the stream left out: on record with the run
                self.run.write_json("skipped_files.json", skipped)
                self.run.log({"data/skipped_files": len(skipped)}, step=0)
        # Same shuffling generator on every rank: one permutation, dealt out by rank.
        self.shuffle = torch.Generator().manual_seed(rt.seed)
        self.eval_cache = PrefixCache(rt.eval_cache_mb) if rt.eval_cache_mb > 0 else None
        self.progress = cfg.log.progress and self.main
        self.step = 0
        self.images = 0
        self.flops_per_step: dict[int, int] = {}

    def log(self, record: dict) -> None:
        if self.run is not None:
            self.run.log(record, step=self.step)

    # ------------------------------------------------------------------ training
    def _batch_iter(self, t: int):
        """(batch, seconds spent producing it) pairs: the data-time share of the step."""
        it = iter(self.method.train_batches(t, self.cfg.data.batch_size, self.shuffle))
        while True:
            t0 = time.perf_counter()
            try:
                x, x_aug, y = next(it)
            except StopIteration:
                return
            yield Batch(x=x, x_aug=x_aug, y=y, task=t), time.perf_counter() - t0

    def _train_step(self, opt, scaler, batch: Batch):
        method = self.method
        with self.precision.autocast(self.device):
            out = method.loss(batch)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(out.loss).backward()
            scaler.unscale_(opt)  # methods that edit gradients see their true values
        else:
            out.loss.backward()
        distributed.average_grads_(self.net.switch.parameters())
        method.after_backward(batch, out)
        if scaler is not None:
            scaler.step(opt)  # skipped when a gradient is inf/NaN; the scale then shrinks
            scaler.update()
        else:
            opt.step()
        method.after_step(batch, out)
        return out

    def _measure_flops(self, batch: Batch) -> None:
        """FLOPs of one training step (forward + backward), for MFU; GPU only, once per task."""

        def step():
            with self.precision.autocast(self.device):
                out = self.method.loss(batch)
            out.loss.backward()

        top = self.method.top
        self.method.top = TrainableTop(self.net)  # eager and unsynchronised: a dry run
        try:
            self.flops_per_step[batch.task] = count_flops(step)
        finally:
            self.method.top = top
            self.net.zero_grad(set_to_none=True)

    def train_task(self, t: int) -> None:
        cfg, net, method = self.cfg, self.net, self.method
        net.train()
        method.begin_task(t)
        opt = make_optimizer(method.parameters(), cfg.optim)
        scaler = self.precision.scaler(self.device)
        steps = method.num_train_batches(t, cfg.data.batch_size) * cfg.optim.epochs
        bar = tqdm(total=steps, desc=f"task {t + 1}/{self.stream.n_tasks}",
                   disable=not self.progress, leave=False)
        timer = StepTimer()
        peak = peak_flops(self.device, self.precision.name)
        for epoch in range(cfg.optim.epochs):
            for batch, data_s in self._batch_iter(t):
                if peak is not None and t not in self.flops_per_step:
                    self._measure_flops(batch)
                    timer.reset()
                timer.data(data_s)
                out = self._train_step(opt, scaler, batch)
                self.step += 1
                self.images += batch.y.shape[0] * distributed.world_size()
                timer.step(batch.y.shape[0] * distributed.world_size())
                bar.update()
                if self.step % cfg.log.log_every == 0:
                    self._log_step(out, t, epoch, timer, peak)
                    timer.reset()
        bar.close()
        method.end_task(t)

    def _log_step(self, out, t, epoch, timer, peak) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # honest timings
        # Host sync, on log steps only.
        rec = {k: v.detach().float().item() for k, v in out.terms.items()}
        rec["loss/total"] = out.loss.detach().float().item()
        rec.update(timer.summary())
        rec.update({"step": self.step, "task": t, "epoch": epoch,
                    "memory/peak_mb": peak_memory_mb(self.device)})
        if peak is not None and t in self.flops_per_step:
            # flops were counted for one rank's step; every rank does the same work.
            rec["perf/mfu"] = self.flops_per_step[t] * rec["throughput/steps_s"] / peak
        self.log(rec)

    # ------------------------------------------------------------------ main loop
    def fit(self) -> dict:
        cfg = self.cfg
        acc_c, acc_t = [], []
        t_start = time.perf_counter()
        train_s_total = 0.0
        if self.run is not None:
            log.info("run directory: %s", self.run.path)
        results = {}
        for t in range(self.stream.n_tasks):
            t0 = time.perf_counter()
            self.train_task(t)
            train_s = time.perf_counter() - t0
            train_s_total += train_s
            self.net.eval()
            cil, til = evaluate_seen_tasks(self.method, self.stream, t, self.device,
                                           cfg.data.eval_batch_size, self.progress, self.eval_cache)
            acc_c.append(cil)
            acc_t.append(til)
            rec = {"task": t, "cl/acc_class_il": float(np.mean(cil)), "cl/acc_task_il": float(np.mean(til)),
                   "cl/acc_class_il_per_task": cil, "cl/acc_task_il_per_task": til,
                   "time/train_task_s": train_s}
            if distributed.is_initialized():
                hashes = distributed.gather_objects(distributed.state_hash(self.net))
                rec["ddp/weight_hashes"] = hashes
                rec["ddp/weights_in_sync"] = len(set(hashes)) == 1
                if not rec["ddp/weights_in_sync"]:
                    log.error("ranks hold different weights after task %d", t + 1)
            self.log(rec)
            if self.main:
                log.info("task %d/%d: class-IL %.2f  task-IL %.2f  (%.1fs)", t + 1,
                         self.stream.n_tasks, rec["cl/acc_class_il"], rec["cl/acc_task_il"], train_s)
            results = self._results(acc_c, acc_t, time.perf_counter() - t_start, train_s_total)
            if self.run is not None:
                self.run.write_json("results.json", results)  # after every task: nothing lost
        results["complete"] = True
        if self.run is not None:
            self.run.write_json("results.json", results)
            self.run.save_heatmaps({"class-IL": acc_c, "task-IL": acc_t})
            self.run.close()
        return results

    def _results(self, acc_c, acc_t, wall_s, train_s) -> dict:
        return {
            "stream": self.stream.name,
            "method": self.cfg.method.name,
            "tasks_trained": len(acc_c),
            "n_tasks": self.stream.n_tasks,
            "complete": False,
            "acc_class_il": acc_c,
            "acc_task_il": acc_t,
            "summary_class_il": summarize(acc_c),
            "summary_task_il": summarize(acc_t),
            "wall_time_s": wall_s,
            "train_time_s": train_s,
            "images_per_s": self.images / max(train_s, 1e-9),
            "steps": self.step,
            "world_size": distributed.world_size(),
            "precision": self.precision.name,
        }


def run(cfg: Config, run_dir: str | None = None) -> dict:
    try:
        trainer = Trainer(cfg, run_dir)
        results = trainer.fit()
        if trainer.main:
            print(format_summary(results))
            print(f"results: {trainer.run.path}")
        return results
    finally:
        distributed.cleanup()
