"""Acceptance: every stream trains by name through the CLI on correctly laid-out (generated) data."""
import json
import os
import subprocess
import sys

import pytest

from lmsrr.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# One tiny ViT: the point is the data path, not the model.
TINY = ["--pretrained", "none", "--sources", "vit_tiny_patch16_224(input_size=8,patch_size=4,embed_dim=16,depth=2,num_heads=1)",
        "--trainable-blocks", "1", "--epochs", "1", "--batch-size", "16", "--eval-batch-size", "256",
        "--buffer-size", "16", "--replay-batch-size", "8", "--image-size", "16", "--loader-workers", "1",
        "--threads", "1", "--no-progress"]
TASKS = {"seq-digits": 5, "seq-cifar10": 5, "seq-cifar100": 10, "seq-tinyimg": 10, "seq-imagenet-r": 10,
         "seq-cub200": 10, "seq-cars196": 14, "rot-mnist": 20}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_stream_trains_by_name(data_root, tmp_path, name):
    root, _ = data_root
    code = main(["--stream", name, "--data-root", root, "--out-dir", str(tmp_path), "--run-name", "r", *TINY])
    assert code == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["complete"] and res["stream"] == name and res["tasks_trained"] == TASKS[name]
    if name == "rot-mnist":  # domain-IL: task-IL, where reported, is the same argmax over all digits
        assert res.get("acc_task_il", res["acc_class_il"]) == res["acc_class_il"]


def test_train_script_runs_a_file_stream_and_records_skipped_files(data_root, tmp_path):
    root, info = data_root
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--stream", "seq-imagenet-r",
                           "--loader", "torch", "--data-root", root, "--out-dir", str(tmp_path), "--run-name", "r",
                           *TINY], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "r"
    assert json.loads((run / "results.json").read_text())["complete"]
    assert json.loads((run / "skipped_files.json").read_text()) == [info["corrupt"]]
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert first["data/skipped_files"] == 1
    assert info["corrupt"] in proc.stderr  # reported with its path in the log
