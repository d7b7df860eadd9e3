"""``--profile``: torch.profiler over a window of training steps of one task.

The window follows torch.profiler's schedule (``wait`` steps skipped, ``warmup`` steps run
recorded but discarded, ``active`` steps kept), counted from the first step of task ``--profile-task`` (1-based).
When the window closes the Chrome trace is written (chrome://tracing or https://ui.perfetto.dev)
and a summary (top operators, step time, images/s, data-loading share, peak memory) is logged.
"""
from __future__ import annotations

import logging
import os

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from lmsrr.perf import peak_memory_mb

log = logging.getLogger("lmsrr")


class StepProfiler:
    def __init__(self, cfg, run_path: str, device: torch.device):
        self.cfg, self.device = cfg, device
        self.trace_path = cfg.trace or os.path.join(run_path, "profile", "trace.json")
        self._prof: profile | None = None
        self._seen = 0  # steps of the profiled task so far
        self._active_s = self._active_data_s = 0.0
        self._active_images = 0
        self.summary: dict | None = None  # set once the trace is written

    @property
    def done(self) -> bool:
        return self.summary is not None

    def _start(self) -> None:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        c = self.cfg
        self._prof = profile(activities=activities, profile_memory=True,
                             schedule=schedule(wait=c.wait, warmup=c.warmup, active=c.active, repeat=1))
        self._prof.start()

    def step(self, task: int, step_s: float, data_s: float, images: int) -> None:
        """Called after every training step, with its wall time, data time and image count."""
        if self.done or task != self.cfg.task - 1:
            return
        if self._prof is None:
            self._start()
        self._seen += 1
        if self._seen > self.cfg.wait + self.cfg.warmup:  # inside the recorded window
            self._active_s += step_s
            self._active_data_s += data_s
            self._active_images += images
        self._prof.step()
        if self._seen == self.cfg.wait + self.cfg.warmup + self.cfg.active:
            self._finish()

    def close(self) -> None:
        """End of the task: a window the task was too short for is written as far as it got."""
        if self._prof is not None and not self.done:
            self._finish()

    def _finish(self) -> None:
        prof = self._prof
        prof.stop()
        folder = os.path.dirname(os.path.abspath(self.trace_path))
        os.makedirs(folder, exist_ok=True)
        recorded = max(0, self._seen - self.cfg.wait - self.cfg.warmup)
        if recorded:
            prof.export_chrome_trace(self.trace_path)
        sort = "cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=self.cfg.top) if recorded else ""
        self.summary = {
            "trace": os.path.abspath(self.trace_path) if recorded else None,
            "steps_recorded": recorded,
            "step_ms": 1e3 * self._active_s / max(recorded, 1),
            "images_per_s": self._active_images / max(self._active_s, 1e-9),
            "data_share": self._active_data_s / max(self._active_s, 1e-9),
            "peak_memory_mb": peak_memory_mb(self.device),
            "table": table,
        }
        if not recorded:
            log.warning("--profile: task %d ended before the recorded window (wait %d + warmup %d "
                        "steps); no trace written", self.cfg.task, self.cfg.wait, self.cfg.warmup)
            return
        log.info("profile of %d step(s) of task %d: %.1f ms/step, %.1f images/s, data share %.1f%%, "
                 "trace %s", recorded, self.cfg.task, self.summary["step_ms"],
                 self.summary["images_per_s"], 100 * self.summary["data_share"], self.summary["trace"])
