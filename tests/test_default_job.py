"""The default job end to end, against the figures the README's default-job table reports (a long
run: marked slow)."""
import json
import os

import pytest

from lmsrr.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_row(command: str) -> tuple[float, float]:
    """(class-IL, task-IL) of the README table row whose command cell is exactly ``command``."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 4 and cells[1] == f"`{command}`":
                return float(cells[2]), float(cells[3])
    raise AssertionError(f"README.md has no table row for `{command}`")


@pytest.mark.slow
@pytest.mark.parametrize("flags", [
    [],
    ["--pretrained", "none"],
    ["--alpha", "0", "--beta", "0", "--buffer-size", "0"],
], ids=["default", "random-sources", "no-replay"])
def test_default_job_reproduces_the_readme_figures(tmp_path, flags):
    class_il, task_il = readme_row(" ".join(["python scripts/train.py", *flags]))
    assert main([*flags, "--no-progress", "--out-dir", str(tmp_path), "--run-name", "default"]) == 0
    with open(os.path.join(tmp_path, "default", "results.json")) as f:
        res = json.load(f)
    # Floating-point results may differ slightly between CPU models; on one machine they repeat.
    assert res["summary_class_il"]["avg_acc"] == pytest.approx(class_il, abs=1.0)
    assert res["summary_task_il"]["avg_acc"] == pytest.approx(task_il, abs=1.0)


def test_readme_rows_are_found():
    """The slow test reads its figures from the README; a renamed row must not skip it silently."""
    assert all(0 < v <= 100 for v in readme_row("python scripts/train.py"))
    assert all(0 < v <= 100 for v in readme_row("python scripts/train.py --pretrained none"))
    assert all(0 < v <= 100 for v in readme_row("python scripts/train.py --alpha 0 --beta 0 --buffer-size 0"))
