"""The trainer: tasks, epochs and steps; backward and the optimizer step; evaluation; results.

Methods return a loss (:class:`lmsrr.methods.StepOutput`); the engine owns everything around it:
mixed precision and loss scaling, ``torch.compile`` of the trainable top (before the DDP wrap;
the uncompiled network serves evaluation and checkpoints), DDP under torchrun, the optimizer
(re-created at every task start, as in the released code), evaluation and the run directory.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import threading
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

import kernels.dispatch
from lmsrr import checkpoint as ckpt
from lmsrr import distributed
from lmsrr.config import RESOLVED, Config
from lmsrr.data import build_stream, check_stream_name
from lmsrr.data.registry import stream_label
from lmsrr.errors import ConfigError, UserError, WriteError
from lmsrr.evaluate import PrefixCache, evaluate_seen_tasks
from lmsrr.guard import NonFiniteError, NumericsGuard, first_nonfinite
from lmsrr.methods import Batch, build_method
from lmsrr.methods.registry import method_class
from lmsrr.metrics import summarize
from lmsrr.models import (TrainableTop, build_net, check_sources, frozen_fingerprint, trainable_state,
                          weights_description)
from lmsrr.optim import resolve_update_backend
from lmsrr.perf import StepTimer, count_flops, peak_flops, peak_memory_mb
from lmsrr.position import StreamPosition, TaskCursor
from lmsrr.precision import resolve_precision
from lmsrr.profiling import StepProfiler
from lmsrr.results import RunDir, check_writable, format_summary, holds_a_run

log = logging.getLogger("lmsrr")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_kernel_backend(device: torch.device) -> None:
    """A kernel backend forced through LMSRR_KERNEL_BACKEND must be able to run here."""
    try:
        requested = kernels.dispatch.get_backend()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if requested != "triton":
        return
    if not kernels.dispatch.triton_available():
        raise ConfigError("LMSRR_KERNEL_BACKEND=triton but triton does not import here; unset it "
                          "(or use 'auto') to run the PyTorch references")
    if device.type != "cuda" and not kernels.dispatch.interpret_mode():
        raise ConfigError(f"LMSRR_KERNEL_BACKEND=triton runs Triton kernels, which need CUDA tensors "
                          f"(this run is on {device.type}); unset it or use 'auto', or set "
                          f"TRITON_INTERPRET=1 to run them in Triton's interpreter (slow, for tests)")


def wrap_top(net, rt, device) -> torch.nn.Module:
    """The trainable top, compiled (optionally, before the DDP wrap) and DDP-wrapped under
    torchrun: the module every training forward goes through."""
    top = TrainableTop(net)
    if rt.compile:
        top = torch.compile(top, backend=rt.compile_backend)
    if distributed.is_initialized():
        top = DDP(top, device_ids=[device.index] if device.type == "cuda" else None)
    return top


class Interrupted(Exception):
    """SIGTERM / SIGINT arrived; a checkpoint was written and the run can be resumed."""

    def __init__(self, signum: int, checkpoint: str, run_dir: str):
        self.signum = signum
        self.checkpoint = checkpoint
        self.run_dir = run_dir
        name = signal.Signals(signum).name
        super().__init__(
            f"{name} received: checkpoint written to {checkpoint}. Resume with the same command "
            f"plus --resume auto (or --resume {run_dir})."
        )


class Trainer:
    """Construction reads as: checks that need no data -> data -> model -> method -> run directory.
    Nothing is written to disk before every check has passed."""

    def __init__(self, cfg: Config, run_dir: str | None = None, stream=None):
        """``stream``: train on this stream instead of building the one ``cfg.data`` names
        (benchmarks and the GPU check bring a synthetic one)."""
        self.cfg = cfg
        self._set_up_runtime(cfg.runtime)
        self.run_path, self.resume_state = self._preflight(run_dir)
        # data
        self.stream = stream if stream is not None else build_stream(
            cfg.data, progress=cfg.log.progress and distributed.is_main())
        self.n_tasks = self._check_against_stream()
        # model
        self.net = build_net(cfg.model, self.stream.n_classes, self.stream.input_transform).to(self.device)
        log.info("sources: %s from %s", cfg.model.sources, weights_description(cfg.model.pretrained))
        self.precision = resolve_precision(cfg.runtime.precision, self.device)
        # method
        self.method = build_method(cfg, self.net, self.stream, self.device)
        self.top = wrap_top(self.net, cfg.runtime, self.device)
        self.method.bind_top(self.top)
        # Augmentation, replay sampling and Gumbel noise may differ across ranks.
        torch.manual_seed(cfg.runtime.seed + distributed.rank())
        # run directory
        self.ckpt_root = os.path.join(self.run_path, "checkpoints")
        self._check_resume_fits_the_model()  # before config.json is rewritten
        self.run = self._open_run_dir()
        self._init_training_state()
        self._maybe_resume()

    def _set_up_runtime(self, rt) -> None:
        if rt.threads:
            torch.set_num_threads(rt.threads)
        if rt.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.device = distributed.init(rt.device, rt.dist_backend)
        self.main = distributed.is_main()
        if self.device.type == "cpu":
            # Tiny values (ConvNeXt's layer scale starts at 1e-6) make denormal floats in the
            # backward pass, which x86 CPUs process ~20x slower; flushing them to zero costs
            # nothing measurable in accuracy (GPUs flush them in fast paths anyway).
            torch.set_flush_denormal(True)
        check_kernel_backend(self.device)
        # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
        seed_everything(rt.seed)

    def _preflight(self, run_dir: str | None) -> tuple[str, tuple[dict, str] | None]:
        """Every check that needs no data, in seconds and before anything touches the disk:
        the stream and method names, the sources (names resolve in timm, weight files exist),
        the output directory, and the resume target (its checkpoint is loaded and verified
        here). Returns the run directory and the checkpoint to resume from (state, folder)."""
        cfg = self.cfg
        check_stream_name(cfg.data.stream)
        method_class(cfg.method.name)
        check_sources(cfg.model)
        self.update = resolve_update_backend(cfg.optim.update_backend, self.device,
                                             method_class(cfg.method.name).gated_updates(cfg))
        self.resume_mode = self._resume_mode()
        run_path = self._run_path(run_dir)
        check_writable(run_path)
        earlier = holds_a_run(run_path)
        if earlier and self.resume_mode == "none":
            raise UserError(
                f"{run_path} already holds a run ({', '.join(earlier)}); nothing of it is "
                f"overwritten unless you resume it: add --resume auto to continue it, or choose "
                f"another --run-name (without --run-name every run gets a new directory)")
        state = self._find_checkpoint(run_path)
        # No rank creates the run directory before every rank has passed these checks.
        distributed.barrier()
        return run_path, state

    def _resume_mode(self) -> str:
        """'none', 'auto' or 'path' (a run directory or a named checkpoint folder)."""
        resume = self.cfg.runtime.resume
        if resume == "none" and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
            log.info("torchrun restart detected: resuming from the newest checkpoint")
            return "auto"  # torchrun restarted the job after a failure: continue, don't restart
        return resume if resume in ("none", "auto") else "path"

    def _find_checkpoint(self, run_path: str) -> tuple[dict, str] | None:
        """The checkpoint to resume from: exactly the named one for ``--resume RUN/checkpoints/
        step-N``, else the newest valid one of the run (older ones when newer are unusable)."""
        resume, mode = self.cfg.runtime.resume, self.resume_mode
        if mode == "none":
            return None
        rank, world = distributed.rank(), distributed.world_size()
        if mode == "path" and ckpt.is_checkpoint_folder(resume):
            return ckpt.load_named(os.path.abspath(resume), rank, world)
        root = os.path.join(resume if mode == "path" else run_path, "checkpoints")
        found = ckpt.load_latest(root, rank, world)
        if found is None and mode == "path":
            raise UserError(f"--resume {resume!r}: no valid checkpoint under {root}")
        if found is None:
            log.info("no checkpoint in %s: starting from scratch", run_path)
        return found

    def _check_against_stream(self) -> int:
        """Checks that need the stream: the method's own (e.g. a replay method without
        --buffer-size) and the options that depend on the stream's tasks and setting."""
        cfg, stream = self.cfg, self.stream
        method_class(cfg.method.name).check_config(cfg, stream)
        if cfg.log.metrics == "class-il,task-il" and stream.setting == "domain-il":
            raise ConfigError(
                f"--metrics class-il,task-il: {stream.name} is a domain-IL stream (every task has "
                f"the same classes), so task-IL accuracy is not defined; use --metrics auto or class-il"
            )
        n = cfg.runtime.stop_after or stream.n_tasks
        if n > stream.n_tasks:
            raise ConfigError(f"--stop-after {n}: {stream.name} has only {stream.n_tasks} tasks")
        if cfg.profile.enabled and cfg.profile.task > n:
            raise ConfigError(f"--profile-task {cfg.profile.task}: this run trains {n} task(s)")
        return n

    def _open_run_dir(self) -> RunDir | None:
        """Create the run directory (rank 0), clean up what a killed writer left there, and write
        the resolved config and the data scan's record."""
        if not self.main:
            return None
        run = RunDir(self.run_path)
        ckpt.clean_stale(self.ckpt_root)
        try:
            run.write_json("config.json", {**self.cfg.to_dict(),
                                           RESOLVED: {"update_backend": self.update.record()}})
            skipped = getattr(self.stream, "skipped_files", [])
            if skipped:  # unreadable images the stream left out: on record with the run
                run.write_json("skipped_files.json", skipped)
                run.log({"data/skipped_files": len(skipped)}, step=0)
        except WriteError as e:
            run.close()
            raise WriteError(f"{e}. {self.resume_hint()}") from e
        return run

    def _init_training_state(self) -> None:
        cfg, rt = self.cfg, self.cfg.runtime
        # Same shuffling generator on every rank: one permutation, dealt out by rank.
        self.shuffle = torch.Generator().manual_seed(rt.seed)
        self.eval_cache = PrefixCache(rt.eval_cache_mb) if rt.eval_cache_mb > 0 else None
        self.progress = cfg.log.progress and self.main
        self.step = 0
        self.images = 0
        self.flops_per_step: dict[int, int] = {}
        self.acc_c: list[list[float]] = []
        self.acc_t: list[list[float]] = []
        self.train_s_total = 0.0
        self.guard = NumericsGuard(self.device, self.precision.name == "fp16", rt.max_nonfinite_steps,
                                   self.precision.name)
        self.stop_signal: int | None = None
        self.timer = StepTimer()
        self.peak = peak_flops(self.device, self.precision.name)
        self.profiler = StepProfiler(cfg.profile, self.run_path, self.device) if cfg.profile.enabled else None
        self.resumed: dict | None = None
        # After a resume, the first checkpoint this run writes removes the newer ones it did not
        # write (see checkpoint.discard_after); None: nothing to discard.
        self.discard_after: int | None = None

    def _run_path(self, run_dir: str | None) -> str:
        cfg = self.cfg
        resume = cfg.runtime.resume
        if run_dir:
            return run_dir
        if self.resume_mode == "path":
            if not os.path.exists(resume):
                raise UserError(f"--resume {resume!r}: no such checkpoint folder or run directory")
            if not os.path.isdir(resume):
                raise UserError(f"--resume {resume!r}: not a folder; give a run directory or a "
                                f"checkpoint folder (<run>/checkpoints/step-N)")
            path = os.path.abspath(resume)
            # a checkpoint folder lives in <run>/checkpoints/step-N
            return os.path.dirname(os.path.dirname(path)) if ckpt.is_checkpoint_folder(path) else path
        if resume == "auto" and not cfg.log.run_name:
            raise ConfigError("--resume auto needs --run-name (the run directory to resume in)")
        if cfg.log.run_name:
            return os.path.join(cfg.log.out_dir, cfg.log.run_name)
        name = f"{stream_label(cfg.data.stream)}-{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        base, n = name, 1
        while os.path.exists(os.path.join(cfg.log.out_dir, name)):  # a run started this second
            n += 1
            name = f"{base}-{n}"
        if distributed.world_size() > 1:
            # ranks may disagree on the clock's second: take rank 0's name
            name = distributed.gather_objects(name)[0]
        return os.path.join(cfg.log.out_dir, name)

    def log(self, record: dict) -> None:
        if self.run is not None:
            self.run.log(record, step=self.step)

    def weights_hash(self) -> str:
        """SHA-256 of everything trained: the network and the method's own parameters."""
        weights = torch.nn.ModuleDict({"net": self.net,
                                       "method": torch.nn.ParameterList(self.method.outside_parameters())})
        return distributed.state_hash(weights)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, position: dict, opt=None, scaler=None) -> str:
        """All ranks call this together; returns the checkpoint folder. Written only from a
        finite model: a non-finite loss, gradient, parameter or optimizer state stops the run
        first, so the newest checkpoint on disk is always a good one."""
        self.guard.check(" (found before writing a checkpoint)", self.newest_checkpoint)
        self._check_finite_state(opt)
        state = {
            "version": 1,
            "step": self.step,
            "images": self.images,
            "position": position,
            "net": trainable_state(self.net),
            "frozen_fingerprint": frozen_fingerprint(self.net),
            "method": self.method.state_dict(),
            "optimizer": opt.state_dict() if opt is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": ckpt.capture_rng({"shuffle": self.shuffle}),
            "metrics": {"acc_c": self.acc_c, "acc_t": self.acc_t, "train_s": self.train_s_total},
            "flops_per_step": self.flops_per_step,
            "config": self.cfg.to_dict(),
            "code_revision": ckpt.code_revision(),
            "world_size": distributed.world_size(),
        }
        if self.main and self.discard_after is not None:
            # The first checkpoint since resuming from an older one: the newer ones belong to the
            # abandoned history (kept until now, so a failed resume could still reach them).
            for folder in ckpt.discard_after(self.ckpt_root, self.discard_after):
                log.info("removed %s: newer than the checkpoint this run resumed from", folder)
        if self.main and os.path.isdir(ckpt.step_folder(self.ckpt_root, self.step)):
            # This step was checkpointed already (a task ending on a --checkpoint-every step):
            # the folder is rewritten, so it must not look complete while half old, half new.
            ckpt.remove_checkpoint(ckpt.step_folder(self.ckpt_root, self.step))
        self.discard_after = None
        distributed.barrier()
        try:
            folder = ckpt.save_rank_state(self.ckpt_root, self.step, distributed.rank(), state)
        except WriteError:
            ckpt.remove_checkpoint(ckpt.step_folder(self.ckpt_root, self.step))
            raise
        distributed.barrier()
        if self.main:
            ckpt.mark_complete(folder, distributed.world_size())
            ckpt.prune(self.ckpt_root, self.cfg.runtime.keep_checkpoints)
            self.log({"checkpoint/path": folder, "checkpoint/step": self.step})
        distributed.barrier()
        return folder

    def _check_finite_state(self, opt) -> None:
        """Raise :class:`NonFiniteError` naming the first non-finite trainable tensor, the
        method's own state or optimizer state. Checked on the device with one host sync."""
        names = {id(p): n for n, p in self.net.named_parameters()}
        params = self.method.parameters()
        tensors = {f"parameter {n}": p for n, p in self.net.named_parameters() if p.requires_grad}
        tensors.update({f"buffer {n}": b for n, b in self.net.named_buffers()})
        tensors.update(_named_tensors(self.method.state_dict(), f"{self.method.name} state"))
        for i, p in enumerate(params):
            for key, value in (opt.state.get(p, {}) if opt is not None else {}).items():
                if torch.is_tensor(value):
                    tensors[f"optimizer state {key} of {names.get(id(p), f'parameter {i}')}"] = value
        bad = first_nonfinite(tensors)
        if bad is not None:
            raise NonFiniteError(
                f"{bad} is not finite after step {self.step}, so its checkpoint was not written; "
                f"{self.newest_checkpoint()}. "
                f"{self.guard.advice()}")

    def newest_checkpoint(self) -> str:
        """What a user resuming now would get, as a sentence fragment."""
        steps = ckpt.complete_steps(self.ckpt_root)
        if not steps:
            return "no checkpoint has been written yet"
        return f"the newest checkpoint, {ckpt.step_folder(self.ckpt_root, steps[-1])}, predates it"

    def resume_hint(self) -> str:
        if not ckpt.complete_steps(self.ckpt_root):
            return (f"No checkpoint was written yet: free some space, remove {self.run_path} and "
                    f"start the run again")
        return (f"The newest checkpoint is intact: free some space and resume with the same "
                f"command plus --resume {self.run_path}")

    def _check_resume_fits_the_model(self) -> None:
        """Refuse a checkpoint of other frozen weights or of another model while the run directory
        is still as it was: a refused resume must not leave this command's flags in its config.json."""
        if self.resume_state is None:
            return
        state, folder = self.resume_state
        if state["frozen_fingerprint"] != frozen_fingerprint(self.net):
            differences = self._flags_unlike_the_saved_run() or "other --sources, --pretrained or --seed"
            raise UserError(f"checkpoint {folder} was written with different frozen source weights "
                            f"({differences}); resume with the original flags")
        unexpected = sorted(set(state["net"]) - set(self.net.state_dict()))
        if unexpected:
            raise UserError(f"checkpoint {folder} does not match this model (unexpected keys "
                            f"{unexpected[:3]}...); resume with the original --sources and options")

    def _flags_unlike_the_saved_run(self) -> str:
        """'--pretrained none when the run started, builtin now; ...' for the flags that fix the
        frozen weights, read from the run's config.json ('' when it cannot be read)."""
        try:
            with open(os.path.join(self.run_path, "config.json"), encoding="utf-8") as f:
                saved = json.load(f)
            then = {"--sources": saved["model"]["sources"], "--pretrained": saved["model"]["pretrained"],
                    "--seed": saved["runtime"]["seed"]}
        except (OSError, ValueError, KeyError, TypeError):
            return ""
        now = {"--sources": self.cfg.model.sources, "--pretrained": self.cfg.model.pretrained,
               "--seed": self.cfg.runtime.seed}
        return "; ".join(f"{flag} {then[flag]} when the run started, {now[flag]} now"
                         for flag in now if then[flag] != now[flag])

    def _maybe_resume(self) -> None:
        if self.resume_state is None:
            return
        state, folder = self.resume_state
        self.resume_state = None
        self.net.load_state_dict(state["net"], strict=False)  # keys checked before the run dir opened
        self.step, self.images = state["step"], state["images"]
        self.acc_c, self.acc_t = state["metrics"]["acc_c"], state["metrics"]["acc_t"]
        self.train_s_total = state["metrics"]["train_s"]
        self.flops_per_step = state["flops_per_step"]
        self.resumed = state
        self.discard_after = self.step
        log.info("resumed from %s (task %d, epoch %d, batch %d)", folder,
                 state["position"]["task"] + 1, state["position"]["epoch"] + 1, state["position"]["batch"])
        if self.run is not None:
            dropped = self.run.drop_records_after(self.step)
            if dropped:
                log.info("moved %d metrics records of steps after %d to metrics-abandoned.jsonl",
                         dropped, self.step)
            # results.json may describe the abandoned history: rewrite it from the checkpoint
            # (or remove it when the checkpoint predates the first task's end).
            if self.acc_c:
                self.run.write_json("results.json", self._results(self.train_s_total))
            elif os.path.exists(self.run.file("results.json")):
                os.remove(self.run.file("results.json"))
        self.log({"checkpoint/resumed_from": folder, "checkpoint/code_revision": state["code_revision"]})

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.stop_signal = signum
        log.warning("%s received: finishing this step, then checkpointing", signal.Signals(signum).name)

    def _should_stop(self, every_step_ok: bool) -> bool:
        if not distributed.is_initialized():
            return self.stop_signal is not None
        if not every_step_ok:  # a collective per step would cost a sync: only on log steps
            return False
        flag = torch.tensor([1 if self.stop_signal is not None else 0])
        if self.device.type == "cuda":
            flag = flag.to(self.device)
        distributed.all_reduce_max_(flag)
        return bool(flag.item())

    # ------------------------------------------------------------------ training
    def train_task(self, t: int) -> None:
        """Train task ``t`` from the start, or from the resumed position: for every epoch and
        batch, one step, then logging, profiling and checkpoints."""
        opt, scaler, cursor = self._start_task(t)
        per_epoch = self.method.num_train_batches(t, self.cfg.data.batch_size)
        bar = tqdm(total=per_epoch * self.cfg.optim.epochs,
                   initial=cursor.epoch * per_epoch + cursor.batches_done,
                   desc=f"task {t + 1}/{self.stream.n_tasks}", disable=not self.progress, leave=False)
        self.timer.reset()
        try:
            for _ in cursor.epochs():
                for batch, data_s in cursor.batches(lambda: self.batches(t)):
                    if self.peak is not None and t not in self.flops_per_step:
                        self.measure_flops(batch)
                    out = self.train_step(opt, scaler, batch, data_s)
                    bar.update()
                    self._after_step(out, cursor, opt, scaler)
        finally:
            bar.close()
        if self.profiler is not None:
            self.profiler.close()
        self.guard.check(" (found at the end of the task)", self.newest_checkpoint)
        self.method.end_task(t)

    def batches(self, t: int):
        """One epoch of task ``t``: (batch, seconds spent producing it) pairs."""
        it = iter(self.method.train_batches(t, self.cfg.data.batch_size, self.shuffle))
        while True:
            t0 = time.perf_counter()
            try:
                x, x_aug, y = next(it)
            except StopIteration:
                return
            yield Batch(x=x, x_aug=x_aug, y=y, task=t), time.perf_counter() - t0

    def train_step(self, opt, scaler, batch: Batch, data_s: float = 0.0):
        """One optimizer step on ``batch``: the method's loss, backward, the step; counted."""
        t0 = time.perf_counter()
        method = self.method
        with self.precision.autocast(self.device):
            out = method.loss(batch)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(out.loss).backward()
            scaler.unscale_(opt)  # methods that edit gradients see their true values
        else:
            out.loss.backward()
        distributed.average_grads_(method.outside_parameters())
        grads = [p.grad for p in method.parameters() if p.grad is not None]
        self.guard.record(self.step + 1, batch.task, {**out.terms, "loss/total": out.loss}, grads)
        method.after_backward(batch, out)
        # under fp16 a step with an inf/NaN gradient is skipped and the scale shrinks
        self.update.step(opt, scaler, method.update_gates())
        method.after_step(batch, out)
        images = batch.y.shape[0] * distributed.world_size()
        self.step += 1
        self.images += images
        self.timer.data(data_s)
        self.timer.step(images)
        if self.profiler is not None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # honest step times, only while profiling
            self.profiler.step(batch.task, time.perf_counter() - t0 + data_s, data_s, images)
        return out

    def _after_step(self, out, cursor: TaskCursor, opt, scaler) -> None:
        """Logging on log steps; a checkpoint every --checkpoint-every steps or on a signal."""
        log_step = self.step % self.cfg.log.log_every == 0
        if log_step:
            self.guard.check("", self.newest_checkpoint)
            self._log_step(out, cursor.task, cursor.epoch)
            self.timer.reset()
        every = self.cfg.runtime.checkpoint_every
        stop = self._should_stop(log_step)
        if (every and self.step % every == 0) or stop:
            folder = self.save_checkpoint(cursor.position().to_dict(), opt, scaler)
            if stop:
                raise Interrupted(self.stop_signal or signal.SIGTERM, folder, self.run_path)

    def measure_flops(self, batch: Batch) -> None:
        """FLOPs of one training step (forward + backward) of ``batch``'s task, for MFU; counted
        once per task on a dry run through the method's own top: eager (compiled code would hide
        its ops from the counter) and without DDP's gradient synchronisation."""

        def step():
            with self.precision.autocast(self.device):
                out = self.method.loss(batch)
            out.loss.backward()

        no_sync = self.top.no_sync() if isinstance(self.top, DDP) else contextlib.nullcontext()
        try:
            with torch.compiler.set_stance("force_eager"), no_sync:
                self.flops_per_step[batch.task] = count_flops(step)
        finally:
            self.net.zero_grad(set_to_none=True)
            for p in self.method.outside_parameters():
                p.grad = None
        self.timer.reset()

    def _start_task(self, t: int) -> tuple[torch.optim.Optimizer, object, TaskCursor]:
        """begin_task, a fresh optimizer (as the released code), and where in the task to start."""
        method, epochs = self.method, self.cfg.optim.epochs
        self.net.train()
        scaler = self.precision.scaler(self.device)
        state, self.resumed = self.resumed, None
        if state is None:
            method.begin_task(t)
            return self.new_optimizer(), scaler, TaskCursor(t, epochs, self.shuffle)
        pos = StreamPosition.from_dict(state["position"])
        if pos.batch == 0:
            # At a task boundary the saved method state is the previous task's final one:
            # load it first, then begin_task builds this task's state from it.
            method.load_state_dict(state["method"])
            method.begin_task(t)
        else:
            # Inside a task: begin_task ran before the checkpoint; its products (the old
            # model's snapshot, ...) are in the saved state, which therefore wins.
            method.begin_task(t)
            method.load_state_dict(state["method"])
        opt = self.new_optimizer()
        if pos.batch > 0:
            opt.load_state_dict(state["optimizer"])
            if scaler is not None and state["scaler"] is not None:
                scaler.load_state_dict(state["scaler"])
        ckpt.restore_rng(state["rng"], {"shuffle": self.shuffle})
        return opt, scaler, TaskCursor(t, epochs, self.shuffle, pos, state["rng"])

    def new_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer of a task (re-created at every task start, as in the released code), on
        the update backend this run resolved, over the method's update groups."""
        return self.update.build(self.method.update_groups(), self.cfg.optim)

    def _log_step(self, out, t, epoch) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # honest timings
        # Host sync, on log steps only.
        rec = {k: v.detach().float().item() for k, v in out.terms.items()}
        rec["loss/total"] = out.loss.detach().float().item()
        rec.update(self.timer.summary())
        rec.update({"step": self.step, "task": t, "epoch": epoch,
                    "memory/peak_mb": peak_memory_mb(self.device)})
        if self.peak is not None and t in self.flops_per_step:
            # flops were counted for one rank's step; every rank does the same work.
            rec["perf/mfu"] = self.flops_per_step[t] * rec["throughput/steps_s"] / self.peak
        self.log(rec)

    # ------------------------------------------------------------------ main loop
    def fit(self) -> dict:
        t_start = time.perf_counter() - self.train_s_total
        if self.run is not None:
            log.info("run directory: %s", self.run.path)
        first_task = self.resumed["position"]["task"] if self.resumed else 0
        if self.resumed and first_task >= self.n_tasks:  # the run had already finished
            self.resumed = None
        handlers = _install_signal_handlers(self._on_signal)
        try:
            self._train_tasks(first_task, t_start)
        except WriteError as e:
            raise WriteError(f"{e}. {self.resume_hint()}") from e
        finally:
            _restore_signal_handlers(handlers)
        results = self._results(time.perf_counter() - t_start)
        results["complete"] = True
        results["weights_sha256"] = self.weights_hash()
        if self.run is not None:
            try:
                self.run.write_json("results.json", results)
                matrices = {"class-IL": self.acc_c}
                if self.report_task_il:
                    matrices["task-IL"] = self.acc_t
                self.run.save_heatmaps(matrices)
            except WriteError as e:
                raise WriteError(f"{e}. Training finished. {self.resume_hint()}") from e
            finally:
                self.run.close()
        return results

    def _train_tasks(self, first_task: int, t_start: float) -> None:
        """Train, evaluate and checkpoint every task from ``first_task`` on."""
        for t in range(first_task, self.n_tasks):
            t0 = time.perf_counter()
            self.train_task(t)
            distributed.broadcast_buffers_(self.net)
            train_s = time.perf_counter() - t0
            self.train_s_total += train_s
            self._evaluate(t, train_s)
            folder = self.save_checkpoint({"task": t + 1, "epoch": 0, "batch": 0})
            if self.run is not None:  # after every task: nothing lost on a crash
                self.run.write_json("results.json", self._results(time.perf_counter() - t_start))
            if self._should_stop(True):
                raise Interrupted(self.stop_signal or signal.SIGTERM, folder, self.run_path)

    @property
    def report_task_il(self) -> bool:
        return self.cfg.log.metrics != "class-il" and self.stream.setting != "domain-il"

    def _evaluate(self, t: int, train_s: float) -> None:
        self.net.eval()
        cil, til = evaluate_seen_tasks(self.method, self.stream, t, self.device,
                                       self.cfg.data.eval_batch_size, self.progress, self.eval_cache)
        self.acc_c.append(cil)
        self.acc_t.append(til)
        rec = {"task": t, "cl/acc_class_il": float(np.mean(cil)), "cl/acc_class_il_per_task": cil,
               "time/train_task_s": train_s}
        if self.report_task_il:
            rec.update({"cl/acc_task_il": float(np.mean(til)), "cl/acc_task_il_per_task": til})
        if distributed.is_initialized():
            hashes = distributed.gather_objects(self.weights_hash())
            rec["ddp/weight_hashes"] = hashes
            rec["ddp/weights_in_sync"] = len(set(hashes)) == 1
            if not rec["ddp/weights_in_sync"]:
                log.error("ranks hold different weights after task %d", t + 1)
        self.log(rec)
        if self.main:
            til_text = f"  task-IL {rec['cl/acc_task_il']:.2f}" if self.report_task_il else ""
            log.info("task %d/%d: class-IL %.2f%s  (%.1fs)", t + 1, self.n_tasks,
                     rec["cl/acc_class_il"], til_text, train_s)

    def _results(self, wall_s: float) -> dict:
        res = {
            "stream": self.stream.name,
            "method": self.cfg.method.name,
            "tasks_trained": len(self.acc_c),
            "n_tasks": self.n_tasks,
            "complete": False,
            "acc_class_il": self.acc_c,
            "summary_class_il": summarize(self.acc_c),
        }
        if self.report_task_il:
            res.update({"acc_task_il": self.acc_t, "summary_task_il": summarize(self.acc_t)})
        res.update({
            "wall_time_s": wall_s,
            "train_time_s": self.train_s_total,
            "images_per_s": self.images / max(self.train_s_total, 1e-9),
            "steps": self.step,
            "world_size": distributed.world_size(),
            "precision": self.precision.name,
            "update_backend": self.update.name,
        })
        return res


def _named_tensors(obj, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor inside nested dicts / lists, named by its path."""
    if torch.is_tensor(obj):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    out = {}
    for k, v in items:
        out.update(_named_tensors(v, f"{prefix}.{k}"))
    return out


def _install_signal_handlers(handler) -> dict:
    """SIGTERM / SIGINT -> checkpoint and a clean exit (only possible in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        old[sig] = signal.signal(sig, handler)
    return old


def _restore_signal_handlers(old: dict) -> None:
    for sig, h in old.items():
        signal.signal(sig, h)


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
