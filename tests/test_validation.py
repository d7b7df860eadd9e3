"""Inputs are validated before any work: one clear message and exit status 2 for each mistake.
(Unknown names, missing data, out-of-range numbers and an unwritable directory are covered in
test_errors.py.)"""
import importlib.util
import os

import pytest
import timm
import torch


_spec = importlib.util.spec_from_file_location(
    "datagen", os.path.join(os.path.dirname(__file__), "data", "datagen.py"))
datagen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(datagen)



def test_task_il_metrics_on_a_domain_il_stream(cli, tmp_path):
    datagen.write_mnist(str(tmp_path))
    code, err = cli("--stream", "rot-mnist", "--data-root", str(tmp_path),
                        "--metrics", "class-il,task-il", "--out-dir", str(tmp_path / "runs"))
    assert code == 2 and "domain-IL stream" in err and "--metrics auto" in err
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_weight_file_that_does_not_fit_the_source(cli, tmp_path):
    wrong = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=16, patch_size=4,
                              embed_dim=32, depth=4, num_heads=4)  # the default ViT has width 64
    right_cnn = timm.create_model("convnext_atto", num_classes=0, dims=(16, 32, 64, 128), depths=(1, 1, 2, 1))
    torch.save(wrong.state_dict(), tmp_path / "vit.pth")
    torch.save(right_cnn.state_dict(), tmp_path / "cnn.pth")
    code, err = cli("--pretrained", f"{tmp_path}/vit.pth,{tmp_path}/cnn.pth",
                        "--out-dir", str(tmp_path / "runs"))
    assert code == 2 and "vit.pth" in err and "does not fit the model" in err


def test_stop_after_more_tasks_than_the_stream_has(cli, tmp_path):
    code, err = cli("--stop-after", "6", "--out-dir", str(tmp_path))
    assert code == 2 and "--stop-after 6: seq-digits has only 5 tasks" in err


def test_resume_auto_needs_a_run_name(cli, tmp_path):
    code, err = cli("--resume", "auto", "--out-dir", str(tmp_path))
    assert code == 2 and "--resume auto needs --run-name" in err


def test_resume_from_a_missing_path(cli, tmp_path):
    code, err = cli("--resume", str(tmp_path / "nope"), "--out-dir", str(tmp_path))
    assert code == 2 and "no such checkpoint folder or run directory" in err


def test_resume_from_a_run_without_checkpoints(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    code, err = cli("--resume", str(tmp_path / "empty"), "--out-dir", str(tmp_path))
    assert code == 2 and "no valid checkpoint" in err


@pytest.mark.parametrize("flag,value,message", [
    ("--checkpoint-every", "-1", "checkpoint_every must be >= 0"),
    ("--keep-checkpoints", "0", "keep_checkpoints must be >= 1"),
    ("--max-nonfinite-steps", "0", "max_nonfinite_steps must be >= 1"),
    ("--eval-cache-mb", "-1", "eval_cache_mb must be >= 0"),
    ("--device", "gpu", "device='gpu'"),
])
def test_out_of_range_runtime_numbers(cli, tmp_path, flag, value, message):
    code, err = cli(flag, value, "--out-dir", str(tmp_path))
    assert code == 2 and message in err, err
