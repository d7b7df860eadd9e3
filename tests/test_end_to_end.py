import json

import pytest

from lmsrr.cli import build_parser, config_from_args, main
from lmsrr.config import Config


def test_short_run_writes_every_results_file(tmp_path, capsys):
    out = tmp_path / "runs"
    code = main(["--epochs", "1", "--out-dir", str(out), "--run-name", "r", "--log-every", "3",
                 "--no-progress"])
    assert code == 0
    run = out / "r"
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "metrics.jsonl", "results.json", "accuracy_matrix.png"} <= names
    cfg = Config.from_dict(json.loads((run / "config.json").read_text()))
    assert cfg.optim.epochs == 1 and cfg.log.log_every == 3
    res = json.loads((run / "results.json").read_text())
    assert res["complete"] and res["tasks_trained"] == 5
    rows = res["acc_class_il"]
    assert [len(r) for r in rows] == [1, 2, 3, 4, 5]
    assert res["summary_class_il"]["avg_acc"] == pytest.approx(sum(rows[-1]) / 5)
    for a, b in zip(res["acc_class_il"], res["acc_task_il"]):
        assert all(t >= c for c, t in zip(a, b))  # task-IL restricts the argmax: never worse
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss/total" in r]
    evals = [r for r in lines if "cl/acc_class_il" in r]
    assert steps and len(evals) == 5
    assert any("loss/distill" in r for r in steps) and any("loss/replay" in r for r in steps)
    assert (run / "accuracy_matrix.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "class-IL accuracy" in printed and "forgetting" in printed


def test_preset_reproduces_the_released_recipe():
    cfg = config_from_args(build_parser().parse_args(["--preset", "cifar100"]))
    assert cfg.data.stream == "seq-cifar100" and cfg.data.batch_size == 32
    assert (cfg.optim.optimizer, cfg.optim.lr, cfg.optim.epochs) == ("sgd", 0.03, 1)
    m = cfg.method
    assert (m.own.alpha, m.own.beta, m.buffer_size, m.replay_batch_size) == (0.3, 0.2, 500, 32)
    cfg10 = config_from_args(build_parser().parse_args(["--preset", "cifar10", "--lr", "0.1"]))
    assert cfg10.method.own.alpha == 0.1 and cfg10.optim.lr == 0.1  # explicit flags win


def test_every_flag_has_help():
    for action in build_parser()._actions:
        assert action.help, action.option_strings
