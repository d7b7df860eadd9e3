"""The trainer: tasks, epochs and steps; backward and the optimizer step; evaluation; results.

Methods return a loss (:class:`lmsrr.methods.StepOutput`); the engine owns backward, the optimizer
(re-created at every task start, as in the released code) and everything written to disk.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import random
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from lmsrr.config import Config
from lmsrr.data import build_stream
from lmsrr.evaluate import evaluate_seen_tasks
from lmsrr.methods import Batch, build_method
from lmsrr.metrics import summarize
from lmsrr.models import build_net
from lmsrr.results import RunDir, format_summary

log = logging.getLogger("lmsrr")


def resolve_device(name: str) -> torch.device:
    from lmsrr.errors import ConfigError

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


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | None = None):
        self.cfg = cfg
        rt = cfg.runtime
        if rt.threads:
            torch.set_num_threads(rt.threads)
        if rt.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.device = resolve_device(rt.device)
        seed_everything(rt.seed)
        # Validate everything cheap before any heavy work: stream and method names, data on disk.
        self.stream = build_stream(cfg.data)
        from lmsrr.methods.registry import method_class

        method_class(cfg.method.name)
        self.net = build_net(cfg.model, cfg.method, self.stream.n_classes).to(self.device)
        self.method = build_method(cfg, self.net, self.stream, self.device)
        name = cfg.log.run_name or f"{cfg.data.stream}-{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.run = RunDir(run_dir or os.path.join(cfg.log.out_dir, name))
        self.run.write_json("config.json", cfg.to_dict())
        self.shuffle = torch.Generator().manual_seed(rt.seed)
        self.step = 0

    # ------------------------------------------------------------------ training
    def train_task(self, t: int) -> None:
        cfg, net, method = self.cfg, self.net, self.method
        net.train()
        method.begin_task(t)
        opt = make_optimizer(method.parameters(), cfg.optim)
        steps_per_epoch = method.num_train_batches(t, cfg.data.batch_size)
        bar = tqdm(total=steps_per_epoch * cfg.optim.epochs, desc=f"task {t + 1}/{self.stream.n_tasks}",
                   disable=not cfg.log.progress, leave=False)
        seen, t0 = 0, time.perf_counter()
        for epoch in range(cfg.optim.epochs):
            for x, x_aug, y in method.train_batches(t, cfg.data.batch_size, self.shuffle):
                batch = Batch(x=x, x_aug=x_aug, y=y, task=t)
                out = method.loss(batch)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                method.after_backward(batch, out)
                opt.step()
                method.after_step(batch, out)
                self.step += 1
                seen += x.shape[0]
                bar.update()
                if self.step % cfg.log.log_every == 0:
                    # Host sync, on log steps only.
                    rec = {k: v.detach().item() for k, v in out.terms.items()}
                    rec.update({"loss/total": out.loss.detach().item(), "step": self.step, "task": t,
                                "epoch": epoch,
                                "throughput/img_s": seen / (time.perf_counter() - t0)})
                    self.run.log(rec, step=self.step)
                    bar.set_postfix(loss=f"{rec['loss/total']:.3f}")
        bar.close()
        method.end_task(t)

    # ------------------------------------------------------------------ main loop
    def fit(self) -> dict:
        cfg = self.cfg
        acc_c, acc_t = [], []
        t_start = time.perf_counter()
        log.info("run directory: %s", self.run.path)
        for t in range(self.stream.n_tasks):
            t0 = time.perf_counter()
            self.train_task(t)
            train_s = time.perf_counter() - t0
            self.net.eval()
            cil, til = evaluate_seen_tasks(self.method.predict, self.stream, t, self.device,
                                           cfg.data.eval_batch_size, cfg.log.progress)
            acc_c.append(cil)
            acc_t.append(til)
            rec = {"task": t, "cl/acc_class_il": float(np.mean(cil)), "cl/acc_task_il": float(np.mean(til)),
                   "cl/acc_class_il_per_task": cil, "cl/acc_task_il_per_task": til,
                   "time/train_task_s": train_s}
            self.run.log(rec, step=self.step)
            log.info("task %d/%d: class-IL %.2f  task-IL %.2f  (%.1fs)", t + 1, self.stream.n_tasks,
                     rec["cl/acc_class_il"], rec["cl/acc_task_il"], train_s)
            results = self._results(acc_c, acc_t, time.perf_counter() - t_start, complete=False)
            self.run.write_json("results.json", results)  # after every task: nothing lost on a crash
        results["complete"] = True
        self.run.write_json("results.json", results)
        self.run.save_heatmaps({"class-IL": acc_c, "task-IL": acc_t})
        self.run.close()
        return results

    def _results(self, acc_c, acc_t, wall_s, complete) -> dict:
        return {
            "stream": self.stream.name,
            "method": self.cfg.method.name,
            "tasks_trained": len(acc_c),
            "n_tasks": self.stream.n_tasks,
            "complete": complete,
            "acc_class_il": acc_c,
            "acc_task_il": acc_t,
            "summary_class_il": summarize(acc_c),
            "summary_task_il": summarize(acc_t),
            "wall_time_s": wall_s,
            "steps": self.step,
        }


def run(cfg: Config, run_dir: str | None = None) -> dict:
    trainer = Trainer(cfg, run_dir)
    results = trainer.fit()
    print(format_summary(results))
    print(f"results: {trainer.run.path}")
    return results
