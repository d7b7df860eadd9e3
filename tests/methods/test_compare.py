"""lmsrr-compare: same configuration for every method, report files, clear errors."""
import csv
import json

import pytest

from lmsrr.compare import failed_run, main, markdown_table, method_row, run_from_results, write_report


def fake_results(rows_cil, rows_til=None, steps=10, img_s=100.0, wall=12.0):
    from lmsrr.metrics import summarize

    res = {"acc_class_il": rows_cil, "summary_class_il": summarize(rows_cil), "wall_time_s": wall,
           "train_time_s": wall / 2, "images_per_s": img_s, "steps": steps}
    if rows_til is not None:
        res.update({"acc_task_il": rows_til, "summary_task_il": summarize(rows_til)})
    return res


def test_run_from_results_uses_the_accuracy_matrix():
    r = run_from_results(fake_results([[90.0], [40.0, 80.0], [30.0, 50.0, 70.0]],
                                      [[90.0], [85.0, 80.0], [80.0, 75.0, 70.0]]), seed=0)
    assert r["curve"] == pytest.approx([90.0, 60.0, 50.0])  # mean of each row
    assert r["class_il"] == pytest.approx(50.0) and r["task_il"] == pytest.approx(75.0)
    # forgetting: mean(max earlier - final) = ((90-30) + (80-50)) / 2; BWT: ((30-90) + (50-80)) / 2
    assert r["forgetting"] == pytest.approx(45.0) and r["bwt"] == pytest.approx(-45.0)
    assert r["task_il_forgetting"] == pytest.approx(7.5)
    nmc = run_from_results(fake_results([[99.0]], steps=0, img_s=0.0), seed=0)
    assert nmc["images_per_s"] is None and nmc["task_il"] is None  # no steps; no task-IL recorded


def test_method_row_is_the_mean_and_sample_std_over_seeds():
    runs = [run_from_results(fake_results([[90.0], [a, b]], [[90.0], [95.0, 99.0]], wall=w), seed=s)
            for s, (a, b, w) in enumerate([(40.0, 80.0, 10.0), (50.0, 90.0, 14.0), (30.0, 70.0, 12.0)])]
    row = method_row("er", runs)
    assert row["seeds"] == [0, 1, 2]
    assert row["class_il"] == pytest.approx(60.0)  # mean of 60, 70, 50
    assert row["class_il_std"] == pytest.approx(10.0)  # sample std of 60, 70, 50
    assert row["forgetting"] == pytest.approx(50.0) and row["forgetting_std"] == pytest.approx(10.0)
    assert row["wall_time_s"] == pytest.approx(12.0)
    assert row["curve"] == pytest.approx([90.0, 60.0]) and row["curve_std"][0] == pytest.approx(0.0)
    assert "60.0 ± 10.0" in markdown_table([row])
    single = method_row("er", runs[:1])
    assert single["class_il_std"] is None and "| 60.0 |" in markdown_table([single])
    failed = method_row("ewc", [runs[0], failed_run(1, "non-finite value in loss")])
    assert failed["class_il"] is None and failed["error"] == "seed 1: non-finite value in loss"


def test_report_files(tmp_path):
    def row(method, cil, til=None, steps=10):
        return method_row(method, [run_from_results(fake_results(cil, til, steps=steps), seed=0)])

    rows = [row("finetune", [[95.0], [0.0, 96.0]], [[95.0], [90.0, 96.0]]),
            row("joint", [[95.0], [93.0, 94.0]], [[95.0], [97.0, 98.0]]),
            row("nmc", [[90.0], [85.0, 80.0]], steps=0)]
    write_report(rows, str(tmp_path), header="Command: `x`", title="t")
    md = (tmp_path / "comparison.md").read_text()
    body = [line for line in md.splitlines() if line.startswith("| ") and "method" not in line]
    assert [line.split("|")[1].strip() for line in body] == ["joint", "nmc", "finetune"]  # best first
    assert "| joint | 93.5 | 97.5 | 2.0 | -2.0 | 12 | 100 |" in md
    assert "| nmc | 82.5 | — |" in md and md.startswith("Command: `x`")
    with open(tmp_path / "comparison.csv") as f:
        recs = list(csv.DictReader(f))
    assert [r["method"] for r in recs] == ["joint", "nmc", "finetune"]
    assert float(recs[2]["class_il_after_task_2"]) == pytest.approx(48.0)
    assert recs[1]["images_per_s"] == "" and float(recs[0]["images_per_s"]) == 100.0
    assert recs[0]["seeds"] == "0" and recs[0]["class_il_std"] == ""
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert markdown_table(rows).count("\n") == 4


def test_compare_runs_every_method_with_the_same_configuration(tmp_path, short_stream, monkeypatch, capsys):
    monkeypatch.setattr("lmsrr.engine.build_stream", lambda data_cfg, **_: short_stream)
    monkeypatch.setattr("lmsrr.data.build_stream", lambda data_cfg, **_: short_stream)
    out = tmp_path / "cmp"
    code = main(["--methods", "nmc,finetune", "--epochs", "1", "--batch-size", "64", "--seed", "3",
                 "--threads", "1", "--out", str(out), "--no-progress"])
    assert code == 0
    cfgs = {m: json.loads((out / m / "config.json").read_text()) for m in ("nmc", "finetune")}
    assert cfgs["nmc"]["method"].pop("name") == "nmc" and cfgs["finetune"]["method"].pop("name") == "finetune"
    for c in cfgs.values():
        c["log"].pop("run_name")
    assert cfgs["nmc"] == cfgs["finetune"]  # identical apart from the method
    assert cfgs["nmc"]["runtime"]["seed"] == 3 and cfgs["nmc"]["optim"]["epochs"] == 1
    with open(out / "comparison.csv") as f:
        recs = {r["method"]: r for r in csv.DictReader(f)}
    for m in ("nmc", "finetune"):
        res = json.loads((out / m / "results.json").read_text())
        assert float(recs[m]["class_il"]) == pytest.approx(res["summary_class_il"]["avg_acc"])
        assert res["complete"] and res["tasks_trained"] == 5
    md = (out / "comparison.md").read_text()
    assert "--methods nmc,finetune" in md and "| finetune |" in md
    assert "| finetune |" in capsys.readouterr().out


def test_compare_over_seeds(tmp_path, short_stream, monkeypatch):
    monkeypatch.setattr("lmsrr.engine.build_stream", lambda data_cfg, **_: short_stream)
    monkeypatch.setattr("lmsrr.data.build_stream", lambda data_cfg, **_: short_stream)
    out = tmp_path / "cmp"
    code = main(["--methods", "nmc", "--seeds", "4,5", "--stop-after", "2", "--threads", "1",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    accs = []
    for seed in (4, 5):
        assert json.loads((out / f"nmc-seed{seed}" / "config.json").read_text())["runtime"]["seed"] == seed
        accs.append(json.loads((out / f"nmc-seed{seed}" / "results.json").read_text())["summary_class_il"]["avg_acc"])
    with open(out / "comparison.csv") as f:
        (rec,) = list(csv.DictReader(f))
    assert rec["seeds"] == "4 5" and float(rec["class_il"]) == pytest.approx(sum(accs) / 2)
    assert float(rec["class_il_std"]) == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    assert "seeds 4, 5" in (out / "comparison.md").read_text()


@pytest.mark.parametrize("args,message", [
    (["--method", "er"], "lmsrr-compare takes --methods"),
    (["--methods", "er,lmsr"], "unknown method 'lmsr' (did you mean 'lmsrr'?)"),
    (["--methods", "er,er"], "names er more than once"),
    (["--methods", "finetune,er", "--buffer-size", "0"], "'er' needs a replay memory: --buffer-size must be >= 1"),
    (["--run-name", "x"], "names each run after its method"),
    (["--seeds", "1,x"], "--seeds '1,x': use comma-separated integers"),
    (["--seeds", "1,1"], "each once"),
])
def test_compare_errors_before_training(tmp_path, capsys, args, message):
    out = tmp_path / "cmp"
    code = main(args + ["--out", str(out), "--no-progress"])
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists() or not any(p.is_dir() for p in out.iterdir())  # no method ran


def test_every_compare_flag_has_help_and_method_is_hidden():
    from lmsrr.compare import build_parser

    p = build_parser()
    for action in p._actions:
        assert action.help, action.option_strings
    text = p.format_help()
    assert "--methods" in text and "--out" in text and "--method NAME" not in text


def test_a_diverging_method_is_reported_and_the_comparison_goes_on(tmp_path, short_stream, monkeypatch,
                                                                   capsys):
    from lmsrr.methods.finetune import Finetune

    monkeypatch.setattr("lmsrr.engine.build_stream", lambda data_cfg, **_: short_stream)
    monkeypatch.setattr("lmsrr.data.build_stream", lambda data_cfg, **_: short_stream)
    loss = Finetune.loss

    def nan_loss(self, batch):
        out = loss(self, batch)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(Finetune, "loss", nan_loss)
    out = tmp_path / "cmp"
    code = main(["--methods", "finetune,nmc", "--epochs", "1", "--batch-size", "64", "--threads", "1",
                 "--stop-after", "2", "--out", str(out), "--no-progress"])
    assert code == 1 and "diverged: finetune" in capsys.readouterr().err
    md = (out / "comparison.md").read_text()
    body = [line for line in md.splitlines() if line.startswith("| ") and "method" not in line]
    assert body[0].startswith("| nmc | ") and body[1] == "| finetune | diverged (see below) | — | — | — | — | — |"
    assert "finetune: seed 0: non-finite value" in md
    with open(out / "comparison.csv") as f:
        recs = {r["method"]: r for r in csv.DictReader(f)}
    assert recs["finetune"]["class_il"] == "" and "seed 0: non-finite" in recs["finetune"]["error"]
    assert recs["nmc"]["error"] == "" and float(recs["nmc"]["class_il"]) > 0
