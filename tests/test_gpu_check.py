"""bench/gpu_check.py --dry-run: every step of the GPU check runs at tiny sizes on CPU, so the
script a GPU session depends on cannot rot."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine, run the real check")
def test_dry_run_writes_its_report(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"), "--dry-run",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = report["steps"]
    assert steps["gpu_tests"]["status"] == "skipped: no CUDA"
    for name in ("kernels", "train_step", "input", "end_to_end"):
        assert steps[name]["status"] == "ok", (name, steps[name])
    assert steps["kernels"]["rows"] and steps["train_step"]["rows"]
    e2e = steps["end_to_end"]
    assert e2e["finite_losses"] and e2e["steps"] > 0 and e2e["images_per_s"] > 0
    assert set(e2e["eval_s"]) == {"with_cache", "without_cache"}
    md = (tmp_path / "gpu_check.md").read_text()
    assert report["environment"]["revision"] in md and "| end_to_end | ok |" in md


def test_without_cuda_and_without_dry_run_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_check.py")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--dry-run" in proc.stderr and "Traceback" not in proc.stderr
