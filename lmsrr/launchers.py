"""Where a comparison's runs execute: ``--launcher inline | local | slurm | ray``.

Every launcher takes the planned runs (each a configuration already written to
``<run dir>/launch_config.json``) and calls ``on_done(run, status)`` as each one ends, in the
order they end, so the comparison can rewrite its report. A status is the dictionary
:func:`lmsrr.launch.execute` returns (``status``: complete / diverged / interrupted / error,
``message``, ``log``). ``run`` returns the signal that stopped the launch early, or None.

- inline: one after the other in this process (``torchrun`` around the comparison makes every
  run a DDP run).
- local: ``--jobs N`` child processes at once on this machine, one GPU each where there are
  GPUs, otherwise the CPU threads divided between them.
- slurm: one job array through submitit; a job with several GPUs runs one DDP rank per GPU.
- ray: one Ray task per run (with its GPUs and CPUs) on an existing cluster or a local one.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch

from lmsrr.config import Config
from lmsrr.engine import Trainer
from lmsrr.errors import UserError
from lmsrr.guard import NonFiniteError
from lmsrr.launch import CONFIG_FILE, LOG_FILE, SlurmRun, child_command, child_env, outcome, run_in_subprocess

log = logging.getLogger("lmsrr.launchers")

LAUNCHERS = ("inline", "local", "slurm", "ray")


@dataclass
class PlannedRun:
    setting: str  # the grid setting's label ("" without a grid)
    method: str
    seed: int
    cfg: Config
    run_dir: str

    @property
    def config_path(self) -> str:
        return os.path.join(self.run_dir, CONFIG_FILE)

    @property
    def log_path(self) -> str:
        return os.path.join(self.run_dir, LOG_FILE)

    @property
    def title(self) -> str:
        return f"{self.method} (seed {self.seed}{', ' + self.setting if self.setting else ''})"


OnDone = Callable[[PlannedRun, dict], None]


class InlineLauncher:
    """Today's comparison: every run in this process, one after the other."""

    name = "inline"

    def run(self, runs: list[PlannedRun], on_done: OnDone) -> int | None:
        for r in runs:
            log.info("run %s", r.title)
            trainer = Trainer(r.cfg)  # bad input stops the comparison (exit 2), as before any run
            try:
                res = trainer.fit()  # Interrupted propagates: the caller reports how to resume
                status = {"status": "complete", "message": "", "class_il": res["summary_class_il"]["avg_acc"]}
            except NonFiniteError as e:
                status = {"status": "diverged", "message": str(e)}
            on_done(r, status)
        return None


def visible_gpus() -> list[str]:
    """This machine's GPUs as CUDA_VISIBLE_DEVICES entries (the ones already visible to us)."""
    n = torch.cuda.device_count()
    shown = os.environ.get("CUDA_VISIBLE_DEVICES")
    if shown is not None and shown.strip():
        return [d.strip() for d in shown.split(",") if d.strip()][:n]
    return [str(i) for i in range(n)]


class LocalLauncher:
    """``jobs`` child processes at once. With GPUs, child i sees one GPU (more jobs than GPUs
    share them round-robin); without, each child gets ``threads`` CPU threads (set by the
    comparison in each run's configuration)."""

    name = "local"

    def __init__(self, jobs: int, gpus: list[str], threads: int, poll_s: float = 0.2):
        self.jobs, self.gpus, self.threads, self.poll_s = jobs, gpus, threads, poll_s

    def _env(self, slot: int) -> dict:
        env = {}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        if self.threads:  # OpenMP/MKL pools follow torch's thread count, not the core count
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        return env

    def run(self, runs: list[PlannedRun], on_done: OnDone) -> int | None:
        pending = list(runs)
        running: dict[subprocess.Popen, tuple[PlannedRun, int, object]] = {}
        free = list(range(self.jobs))
        stop: list[int] = []

        def on_signal(signum, frame):
            # Children run in their own sessions (a terminal's Ctrl-C reaches only us), so each
            # gets the signal exactly once: it checkpoints, and a re-run resumes it.
            if not stop:
                log.warning("%s: stopping the running runs at their next step; none starts any more",
                            signal.Signals(signum).name)
                stop.append(signum)
                for proc in running:
                    proc.send_signal(signal.SIGTERM)

        old = {}
        if threading.current_thread() is threading.main_thread():
            old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while pending or running:
                while pending and free and not stop:
                    r, slot = pending.pop(0), free.pop(0)
                    logf = open(r.log_path, "ab")
                    proc = subprocess.Popen(child_command(r.config_path), stdout=logf, stderr=subprocess.STDOUT,
                                            env=child_env(self._env(slot)), start_new_session=True)
                    running[proc] = (r, slot, logf)
                    gpu = f" on GPU {self._env(slot)['CUDA_VISIBLE_DEVICES']}" if self.gpus else ""
                    log.info("started %s%s (log: %s)", r.title, gpu, r.log_path)
                if stop and not running:
                    break
                time.sleep(self.poll_s)
                for proc in [p for p in running if p.poll() is not None]:
                    r, slot, logf = running.pop(proc)
                    logf.close()
                    free.append(slot)
                    on_done(r, outcome(r.config_path, proc.returncode, r.log_path))
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        return stop[0] if stop else None


class SlurmLauncher:
    """One job array through submitit. ``cluster='local'`` runs the same submission with
    submitit's local executor (jobs as processes on this machine), for trying a grid out."""

    name = "slurm"

    def __init__(self, folder: str, cluster: str, partition: str, gpus: int, cpus: int, nodes: int,
                 time_min: int, parallelism: int, extra: dict, poll_s: float):
        self.folder, self.cluster, self.partition = folder, cluster, partition
        self.gpus, self.cpus, self.nodes, self.time_min = gpus, cpus, nodes, time_min
        self.parallelism, self.extra, self.poll_s = parallelism, extra, poll_s

    def check(self) -> None:
        try:
            import submitit  # noqa: F401  optional dependency: lmsrr[slurm]
        except ImportError:
            raise UserError("--launcher slurm needs submitit: pip install 'lmsrr[slurm]' (or pip install submitit)") from None
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise UserError("--launcher slurm: sbatch is not on this machine's PATH; run the comparison "
                            "on a SLURM login node (--slurm-cluster local tries the same path here)")
        if self.cluster == "local" and self.nodes > 1:
            raise UserError("--nodes-per-run > 1 needs a SLURM cluster; submitit's local executor has one node")

    def executor(self):
        import submitit  # optional dependency: lmsrr[slurm] (checked in check())

        ex = submitit.AutoExecutor(folder=os.path.join(self.folder, "%j"), cluster=self.cluster)
        params = dict(name="lmsrr-compare", timeout_min=self.time_min, nodes=self.nodes,
                      # one task per GPU: each is a DDP rank (one task when the run has no GPU)
                      tasks_per_node=max(1, self.gpus), slurm_array_parallelism=self.parallelism)
        if self.gpus:  # a CPU-only run asks for no GPU option at all (some sites refuse a zero)
            params["gpus_per_node"] = self.gpus
        if self.cpus:
            params["cpus_per_task"] = self.cpus
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.extra:
            params["slurm_additional_parameters"] = dict(self.extra)
        ex.update_parameters(**params)
        return ex

    def run(self, runs: list[PlannedRun], on_done: OnDone) -> int | None:
        ex = self.executor()
        jobs = ex.map_array(SlurmRun(), [r.config_path for r in runs])
        log.info("submitted %d run(s) as job(s) %s (logs under %s)", len(jobs),
                 ", ".join(j.job_id for j in jobs[:4]) + (" ..." if len(jobs) > 4 else ""), self.folder)
        waiting = dict(zip(jobs, runs))
        try:
            while waiting:
                time.sleep(self.poll_s)
                for job in [j for j in waiting if j.done()]:
                    r = waiting.pop(job)
                    try:
                        status = job.result()
                    except Exception as e:  # a failed or cancelled job: its message names the cause
                        lines = str(e).strip().splitlines()
                        status = {"status": "error", "message": lines[0] if lines else type(e).__name__}
                    status["log"] = str(job.paths.stderr)
                    on_done(r, status)
        except KeyboardInterrupt:
            # The jobs belong to the scheduler now; this process only waited for them.
            log.warning("stopped waiting; %d job(s) go on on the cluster (scancel to stop them). Run the "
                        "same command once they are done to gather the report", len(waiting))
            return signal.SIGINT
        return None


class RayLauncher:
    """One Ray task per run, each running the run as its own child process (its log in the run
    directory), on the cluster at ``address`` or on a local Ray instance."""

    name = "ray"

    def __init__(self, address: str, gpus: int, cpus: int):
        self.address, self.gpus, self.cpus = address, gpus, cpus

    def check(self) -> None:
        try:
            import ray  # noqa: F401  optional dependency: lmsrr[ray]
        except ImportError:
            raise UserError("--launcher ray needs Ray: pip install 'lmsrr[ray]' (or pip install ray)") from None

    def run(self, runs: list[PlannedRun], on_done: OnDone) -> int | None:
        import ray  # optional dependency: lmsrr[ray] (checked in check())

        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address or None, include_dashboard=False, log_to_driver=False)
        try:
            task = ray.remote(num_cpus=self.cpus or 1, num_gpus=self.gpus, max_retries=0)(run_in_subprocess)
            threads = {"OMP_NUM_THREADS": str(self.cpus)} if self.cpus else {}
            refs = {task.remote(r.config_path, r.log_path, max(1, self.gpus), threads): r for r in runs}
            log.info("submitted %d run(s) as Ray tasks", len(refs))
            while refs:
                (done,), _ = ray.wait(list(refs), num_returns=1)
                r = refs.pop(done)
                try:
                    status = ray.get(done)
                except Exception as e:  # the task itself failed (a node lost, ...)
                    status = {"status": "error", "message": f"{type(e).__name__}: {e}".splitlines()[0],
                              "log": r.log_path}
                on_done(r, status)
        except KeyboardInterrupt:
            log.warning("interrupted: cancelling the Ray tasks; a re-run resumes them from their checkpoints")
            for ref in list(refs):
                ray.cancel(ref)
            return signal.SIGINT
        finally:
            if started:
                ray.shutdown()
        return None
