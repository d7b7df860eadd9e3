"""The run directory: resolved config, per-step metrics, final results, accuracy heatmaps.

    <out_dir>/<run_name>/
        config.json             the resolved configuration
        metrics.jsonl           one JSON object per logged step and per evaluation
        results.json            accuracy matrices, average accuracy, forgetting, BWT, timings
        accuracy_matrix.png     class-IL (and task-IL) accuracy matrices as heatmaps
        tensorboard/            when the tensorboard package is installed
"""
from __future__ import annotations

import io
import json
import math
import os
import time

import numpy as np

from lmsrr.errors import UserError
from lmsrr.storage import atomic_write_bytes, remove_stale_temporaries, write_error
from lmsrr.metrics import as_matrix


def _jsonable(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# What makes a folder an earlier run's directory (an empty folder is free to use).
RUN_FILES = ("config.json", "metrics.jsonl", "results.json", "checkpoints")


def check_writable(path: str) -> None:
    """Raise :class:`UserError` unless the run directory ``path`` can be created (or written, if it
    exists), without creating anything: the first folder on the way that exists must be a
    writable folder."""
    folder = os.path.abspath(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        reason = "a file is in the way" if folder != os.path.abspath(path) else "it is a file"
        raise UserError(f"cannot write the results directory {path!r} ({folder} is not a folder: "
                        f"{reason}); choose another with --out-dir")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write the results directory {path!r} ({folder} is not writable); "
                        f"choose another with --out-dir")


def holds_a_run(path: str) -> list[str]:
    """The files of an earlier run in ``path`` (empty when there are none)."""
    return [name for name in RUN_FILES if os.path.exists(os.path.join(path, name))]


class RunDir:
    def __init__(self, path: str):
        self.path = path
        try:
            os.makedirs(path, exist_ok=True)
            probe = os.path.join(path, ".write-test")
            with open(probe, "w") as f:
                f.write("")
            os.remove(probe)
        except OSError as e:
            raise UserError(f"cannot write the results directory {path!r} ({e.strerror}); "
                            f"choose another with --out-dir") from e
        # A killed run's half-written files: no writer of this run is active yet.
        remove_stale_temporaries(path, depth=0)
        self._metrics = open(self.file("metrics.jsonl"), "a", buffering=1)
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.path.join(path, "tensorboard"))
        except Exception:  # tensorboard is optional
            self._tb = None

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def write_json(self, name: str, obj) -> None:
        data = json.dumps(obj, indent=2, default=_jsonable).encode()
        atomic_write_bytes(self.file(name), data, name)  # never a half-written file

    def log(self, record: dict, step: int | None = None) -> None:
        rec = {k: _jsonable(v) for k, v in record.items()}
        if step is not None:
            rec.setdefault("step", step)  # every record knows its step: see drop_records_after
        rec["time"] = time.time()
        line = json.dumps(rec) + "\n"
        try:
            self._metrics.write(line)
        except OSError as e:
            raise write_error("a metrics record", self.file("metrics.jsonl"), len(line), e) from e
        if self._tb is not None and step is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and "/" in k:
                    self._tb.add_scalar(k, v, step)

    def drop_records_after(self, step: int) -> int:
        """Move the metrics records of steps after ``step`` (a history the run was rolled back
        from: resumed from an older checkpoint) to ``metrics-abandoned.jsonl``, so metrics.jsonl
        never holds a step twice. Returns how many moved."""
        keep, drop = [], []
        with open(self.file("metrics.jsonl")) as f:
            for line in f:
                try:
                    rec_step = json.loads(line).get("step", 0)
                except (json.JSONDecodeError, AttributeError):
                    rec_step = step + 1  # a torn last line from a killed writer
                (drop if isinstance(rec_step, int) and rec_step > step else keep).append(line)
        if drop:
            self._metrics.close()
            with open(self.file("metrics-abandoned.jsonl"), "a") as f:
                f.writelines(drop)
            atomic_write_bytes(self.file("metrics.jsonl"), "".join(keep).encode(), "metrics.jsonl")
            self._metrics = open(self.file("metrics.jsonl"), "a", buffering=1)
        return len(drop)

    def close(self) -> None:
        self._metrics.close()
        if self._tb is not None:
            self._tb.close()

    def save_heatmaps(self, matrices: dict[str, list[list[float]]], name="accuracy_matrix.png"):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(matrices), figsize=(5 * len(matrices), 4.2), squeeze=False)
        for ax, (title, rows) in zip(axes[0], matrices.items()):
            m = as_matrix(rows)
            im = ax.imshow(np.ma.masked_invalid(m), vmin=0, vmax=100, cmap="viridis")
            t = m.shape[0]
            for i in range(t):
                for j in range(i + 1):
                    ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center",
                            color="white" if m[i, j] < 60 else "black", fontsize=8)
            ax.set_title(title)
            ax.set_xlabel("evaluated task")
            ax.set_ylabel("after training task")
            ax.set_xticks(range(t), [str(k + 1) for k in range(t)])
            ax.set_yticks(range(t), [str(k + 1) for k in range(t)])
            fig.colorbar(im, ax=ax, fraction=0.046, label="accuracy (%)")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        plt.close(fig)
        atomic_write_bytes(self.file(name), buf.getvalue(), name)


def format_summary(results: dict) -> str:
    """A plain-text table of the accuracy matrix and the headline metrics."""
    lines = []
    for key, title in (("acc_class_il", "class-IL"), ("acc_task_il", "task-IL")):
        rows = results.get(key)
        if not rows:
            continue
        t = len(rows)
        lines.append(f"{title} accuracy (%)  rows: after task i, columns: task j")
        lines.append("after | " + " ".join(f"{j + 1:>6}" for j in range(t)) + " |   avg")
        for i, row in enumerate(rows):
            cells = " ".join(f"{v:6.1f}" for v in row) + " " * 7 * (t - len(row))
            lines.append(f"{i + 1:>5} | {cells} | {np.mean(row):5.1f}")
        lines.append("")
    def fmt(v):
        return "n/a" if v is None else f"{v:.2f}"
    for setting in ("class_il", "task_il"):
        s = results.get(f"summary_{setting}")
        if s:
            lines.append(f"{setting.replace('_', '-'):>9}: avg acc {fmt(s['avg_acc'])}  "
                         f"forgetting {fmt(s['forgetting'])}  BWT {fmt(s['bwt'])}")
    return "\n".join(lines)
