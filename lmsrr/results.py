"""The run directory: resolved config, per-step metrics, final results, accuracy heatmaps.

    <out_dir>/<run_name>/
        config.json             the resolved configuration
        metrics.jsonl           one JSON object per logged step and per evaluation
        results.json            accuracy matrices, average accuracy, forgetting, BWT, timings
        accuracy_matrix.png     class-IL (and task-IL) accuracy matrices as heatmaps
        tensorboard/            when the tensorboard package is installed
"""
from __future__ import annotations

import json
import math
import os
import time

import numpy as np

from lmsrr.errors import UserError
from lmsrr.metrics import as_matrix


def _jsonable(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


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
        self._metrics = open(os.path.join(path, "metrics.jsonl"), "a", buffering=1)
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.path.join(path, "tensorboard"))
        except Exception:  # tensorboard is optional
            self._tb = None

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def write_json(self, name: str, obj) -> None:
        tmp = self.file(name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=_jsonable)
        os.replace(tmp, self.file(name))  # never leave a half-written file behind

    def log(self, record: dict, step: int | None = None) -> None:
        rec = {k: _jsonable(v) for k, v in record.items()}
        rec["time"] = time.time()
        self._metrics.write(json.dumps(rec) + "\n")
        if self._tb is not None and step is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and "/" in k:
                    self._tb.add_scalar(k, v, step)

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
        fig.savefig(self.file(name), dpi=120)
        plt.close(fig)


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
