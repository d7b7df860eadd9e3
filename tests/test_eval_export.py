"""lmsrr-eval reproduces a run's own final evaluation from what it saved; lmsrr-export writes a
file that evaluates identically; bad inputs are one message and exit 2."""
import json
import os

import pytest

from lmsrr.cli import main as train_main
from lmsrr.eval_cli import eval_main, export_main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    code = train_main(["--epochs", "1", "--stop-after", "2", "--threads", "1", "--no-progress",
                       "--method", "lmsrr", "--out-dir", str(out), "--run-name", "r"])
    assert code == 0
    return os.path.join(out, "r")


def _final_row(run_dir):
    with open(os.path.join(run_dir, "results.json")) as f:
        res = json.load(f)
    return res["acc_class_il"][-1], res["acc_task_il"][-1]


def test_eval_of_a_run_directory_reproduces_its_final_row(run_dir, tmp_path):
    out = tmp_path / "eval.json"
    assert eval_main([run_dir, "--no-progress", "--threads", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    cil, til = _final_row(run_dir)
    assert res["tasks"] == 2
    assert res["acc_class_il"] == cil and res["acc_task_il"] == til  # exactly: same code, same weights


def test_export_evaluates_like_the_run(run_dir, tmp_path):
    path = tmp_path / "model.safetensors"
    assert export_main([run_dir, "--out", str(path)]) == 0
    out = tmp_path / "eval.json"
    assert eval_main([str(path), "--no-progress", "--threads", "1", "--json", str(out)]) == 0
    cil, til = _final_row(run_dir)
    res = json.loads(out.read_text())
    assert res["acc_class_il"] == cil and res["acc_task_il"] == til


def test_eval_of_one_checkpoint_folder(run_dir, capsys):
    folders = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    assert eval_main([os.path.join(run_dir, "checkpoints", folders[-1]), "--no-progress"]) == 0
    assert "avg" in capsys.readouterr().out


@pytest.mark.parametrize("case,message", [
    ("missing data", "cifar-10-batches-py"),
    ("no such path", "no such run directory"),
    ("no checkpoint", "holds no complete checkpoint"),
])
def test_bad_inputs_exit_2(run_dir, tmp_path, capsys, case, message):
    args = {"missing data": [run_dir, "--stream", "seq-cifar10", "--data-root", str(tmp_path)],
            "no such path": [str(tmp_path / "nothing")],
            "no checkpoint": [str(tmp_path)]}[case]
    assert eval_main(args + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmsrr-eval: error:") and message in err and err.count("\n") == 1


def test_a_file_that_is_not_an_export_exit_2(tmp_path, capsys):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x00" * 64)
    assert eval_main([str(bad), "--no-progress"]) == 2
    assert "not a readable safetensors export" in capsys.readouterr().err


def test_a_stream_with_other_classes_exit_2(run_dir, capsys, monkeypatch):
    import lmsrr.eval_cli as ev

    real = ev.build_stream

    def fewer_classes(data_cfg):
        stream = real(data_cfg)
        stream.n_classes = 6  # as if another stream with 6 classes were named
        return stream

    monkeypatch.setattr(ev, "build_stream", fewer_classes)
    assert eval_main([run_dir, "--no-progress"]) == 2
    assert "trained for 10 classes" in capsys.readouterr().err
