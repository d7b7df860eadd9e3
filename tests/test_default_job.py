"""The default job end to end, with the figures the README reports (a long run: marked slow)."""
import json
import os

import pytest

from lmsrr.cli import main


@pytest.mark.slow
def test_default_job_reproduces_the_readme_figures(tmp_path):
    assert main(["--no-progress", "--out-dir", str(tmp_path), "--run-name", "default"]) == 0
    with open(os.path.join(tmp_path, "default", "results.json")) as f:
        res = json.load(f)
    # Floating-point results may differ slightly between CPU models; on one machine they repeat.
    assert res["summary_class_il"]["avg_acc"] == pytest.approx(60.45, abs=1.0)
    assert res["summary_task_il"]["avg_acc"] == pytest.approx(96.67, abs=1.0)
