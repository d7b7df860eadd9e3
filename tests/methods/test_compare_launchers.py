"""lmsrr-compare --launcher local / slurm / ray, grids, one gathered report, skip and resume.

The runs of the launchers that start processes train the real seq-digits stream (a child
process cannot see a monkeypatched stream), one task of one epoch at one thread.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lmsrr.compare import gather_rows, main, make_launcher, markdown_table
from lmsrr.grid import Setting, parse_grid, setting_config
from lmsrr.launch import CONFIG_FILE
from lmsrr.launchers import LocalLauncher, PlannedRun

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--stream", "seq-digits", "--epochs", "1", "--stop-after", "1", "--threads", "1", "--no-progress"]


def results(run_dir) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def same_run(a: dict, b: dict) -> None:
    """Two runs of one configuration ended in the same place: same accuracies, same weights."""
    assert a["complete"] and b["complete"]
    assert a["acc_class_il"] == b["acc_class_il"] and a["acc_task_il"] == b["acc_task_il"]
    assert a["weights_sha256"] == b["weights_sha256"]


@pytest.fixture(scope="module")
def inline_reference(tmp_path_factory):
    """finetune and er, seed 0, inline: the runs every launcher must reproduce."""
    out = tmp_path_factory.mktemp("inline")
    assert main(TINY + ["--methods", "finetune,er", "--out", str(out)]) == 0
    return {m: results(out / m) for m in ("finetune", "er")}


def test_local_jobs_2_gives_the_inline_accuracies_run_for_run(tmp_path, inline_reference):
    out = tmp_path / "local"
    assert main(TINY + ["--methods", "finetune,er", "--launcher", "local", "--jobs", "2", "--out", str(out)]) == 0
    for m in ("finetune", "er"):
        same_run(results(out / m), inline_reference[m])
        assert json.loads((out / m / "config.json").read_text())["runtime"]["threads"] == 1
        assert (out / m / "launch.log").stat().st_size > 0
    with open(out / "comparison.csv") as f:
        recs = {r["method"]: r for r in csv.DictReader(f)}
    assert float(recs["er"]["class_il"]) == pytest.approx(inline_reference["er"]["summary_class_il"]["avg_acc"])


def test_submitits_local_executor_drives_the_slurm_path(tmp_path, inline_reference):
    pytest.importorskip("submitit")
    out = tmp_path / "slurm"
    assert main(TINY + ["--methods", "finetune", "--launcher", "slurm", "--slurm-cluster", "local",
                        "--time-limit", "30", "--out", str(out)]) == 0
    same_run(results(out / "finetune"), inline_reference["finetune"])
    assert any((out / "slurm").iterdir())  # submitit's job folders: its logs and pickles
    assert "| finetune |" in (out / "comparison.md").read_text()


def test_ray_runs_each_run_as_a_task(tmp_path, inline_reference):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    assert main(TINY + ["--methods", "finetune", "--launcher", "ray", "--cpus-per-run", "1",
                        "--out", str(out)]) == 0
    same_run(results(out / "finetune"), inline_reference["finetune"])


@pytest.mark.parametrize("launcher,module,message", [
    ("slurm", "submitit", "--launcher slurm needs submitit: pip install 'lmsrr[slurm]'"),
    ("ray", "ray", "--launcher ray needs Ray: pip install 'lmsrr[ray]'"),
])
def test_a_missing_launcher_package_is_one_message_and_exit_2(tmp_path, capsys, monkeypatch, launcher,
                                                              module, message):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as when not installed
    out = tmp_path / "cmp"
    extra = ["--slurm-cluster", "local"] if launcher == "slurm" else []
    assert main(TINY + ["--methods", "finetune", "--launcher", launcher, "--out", str(out)] + extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("error:") == 1
    assert not out.exists()


@pytest.mark.parametrize("args,message", [
    (["--jobs", "2"], "--jobs applies to --launcher local, not inline"),
    (["--launcher", "local", "--jobs", "0"], "--jobs must be >= 1, got 0"),
    (["--launcher", "local", "--ray-address", "auto"], "--ray-address applies to --launcher ray"),
    (["--launcher", "slurm", "--slurm-cluster", "local", "--slurm-param", "account"], "write KEY=VALUE"),
    (["--resume", "runs/x"], "lmsrr-compare takes auto"),
    (["--grid", "lrr=0.1"], "--grid lrr: not an option (did you mean lr"),
    (["--grid", "seed=1,2"], "use --seeds"),
    (["--grid", "method=er"], "use --methods"),
    (["--grid", "lr=0.1,x"], "'x' is not a number"),
    (["--grid", "lr=0.1", "--lr", "0.2"], "--grid lr: also given as a flag"),
    (["--grid", "preset=cifar1000"], "no such preset"),
    (["--grid", "lr=-1"], "grid setting 'lr=-1.0': lr must be > 0"),
    (["--grid", "missing.json"], "no such file"),
])
def test_launcher_and_grid_errors_before_anything_runs(tmp_path, capsys, args, message):
    out = tmp_path / "cmp"
    assert main(TINY + ["--methods", "finetune", "--out", str(out)] + args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists() or not any(p.is_dir() for p in out.iterdir())


def test_sbatch_missing_is_a_clear_error(tmp_path, capsys, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert main(TINY + ["--methods", "finetune", "--launcher", "slurm", "--out", str(tmp_path / "c")]) == 2
    assert "sbatch is not on this machine's PATH" in capsys.readouterr().err


def test_local_divides_the_cores_and_deals_out_gpus(tmp_path, monkeypatch):
    from lmsrr.compare import build_parser

    monkeypatch.setattr("lmsrr.compare.visible_gpus", lambda: [])
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    args = build_parser().parse_args(["--launcher", "local", "--jobs", "2"])
    launcher, threads = make_launcher(args, str(tmp_path), vars(args))
    assert threads == 4 and launcher._env(0) == {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}
    args = build_parser().parse_args(["--launcher", "local", "--jobs", "2", "--threads", "1"])
    launcher, threads = make_launcher(args, str(tmp_path), vars(args))
    assert threads is None and launcher._env(1)["OMP_NUM_THREADS"] == "1"  # the configured threads
    monkeypatch.setattr("lmsrr.compare.visible_gpus", lambda: ["2", "5"])
    args = build_parser().parse_args(["--launcher", "local", "--jobs", "3"])
    launcher, threads = make_launcher(args, str(tmp_path), vars(args))
    assert threads == 2 and [launcher._env(i)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["2", "5", "2"]
    args = build_parser().parse_args(["--launcher", "local"])
    assert make_launcher(args, str(tmp_path), vars(args))[0].jobs == 2  # one per GPU


def test_grid_tokens_and_files(tmp_path):
    s = parse_grid(["lr=0.1,0.3", "augment=false,true", "stream=seq-digits"])
    assert [x.values for x in s][:2] == [{"lr": 0.1, "augment": False, "stream": "seq-digits"},
                                         {"lr": 0.1, "augment": True, "stream": "seq-digits"}]
    assert len(s) == 4 and s[0].label == "lr=0.1 augment=false stream=seq-digits"
    assert s[0].dirname == "lr-0.1_augment-false_stream-seq-digits"
    f = tmp_path / "grid.json"
    f.write_text(json.dumps([{"stream": "seq-digits", "der_alpha": [0.1, 0.3]},
                             {"stream": "seq-digits", "optim.lr": 0.01}]))
    assert [x.values for x in parse_grid([str(f)])] == [
        {"stream": "seq-digits", "der_alpha": 0.1}, {"stream": "seq-digits", "der_alpha": 0.3},
        {"stream": "seq-digits", "optim.lr": 0.01}]
    yaml = pytest.importorskip("yaml")
    y = tmp_path / "grid.yaml"
    y.write_text(yaml.safe_dump({"sources": ["convnext_atto(input_size=32)"], "epochs": [1, 2]}))
    (a, b) = parse_grid([str(y)])
    assert a.values == {"sources": "convnext_atto(input_size=32)", "epochs": 1}
    assert len(a.dirname) <= 80 and a.dirname != b.dirname and "(" not in a.dirname


def test_grid_preset_is_the_starting_recipe_and_keys_override_flags():
    from lmsrr.compare import build_parser

    args = build_parser().parse_args(["--epochs", "3", "--batch-size", "8"])
    (c10, c100) = [setting_config(args, s) for s in parse_grid(["preset=cifar10,cifar100", "beta=0.7"])]
    assert (c10.data.stream, c100.data.stream) == ("seq-cifar10", "seq-cifar100")
    assert c10.method.own.alpha == 0.1 and c100.method.own.alpha == 0.3  # from each preset
    assert c10.method.own.beta == 0.7 and c10.optim.epochs == 3 and c10.data.batch_size == 8


def test_a_grid_is_one_report_and_a_changed_rerun_is_refused(tmp_path, short_stream, monkeypatch, capsys):
    monkeypatch.setattr("lmsrr.engine.build_stream", lambda data_cfg, **_: short_stream)
    out = tmp_path / "cmp"
    args = ["--methods", "nmc,finetune", "--stop-after", "1", "--epochs", "1", "--threads", "1",
            "--no-progress", "--out", str(out)]
    assert main(args + ["--grid", "lr=0.03,0.01"]) == 0
    for setting in ("lr-0.03", "lr-0.01"):
        for m in ("nmc", "finetune"):
            assert results(out / setting / m)["complete"]
    assert json.loads((out / "lr-0.01" / "finetune" / "config.json").read_text())["optim"]["lr"] == 0.01
    md = (out / "comparison.md").read_text()
    assert "| setting | method |" in md and "| lr=0.03 | finetune |" in md and "| lr=0.01 | nmc |" in md
    assert "Comparison over 2 grid setting(s) (lr=0.03; lr=0.01)" in md
    with open(out / "comparison.csv") as f:
        assert [(r["setting"], r["method"]) for r in csv.DictReader(f)][0][0] == "lr=0.03"
    capsys.readouterr()
    # The same folder with another learning rate holds other runs: refused, nothing retrained.
    assert main(args + ["--grid", "lr=0.03,0.01", "--momentum", "0.5"]) == 2
    assert "holds a run of another configuration (differs in optim.momentum)" in capsys.readouterr().err


def test_failed_runs_are_reported_with_their_log_and_diverged_ones_apart(tmp_path):
    from lmsrr.config import Config

    def planned(method):
        cfg = Config().replace(method={"name": method}, log={"out_dir": str(tmp_path), "run_name": method})
        return PlannedRun("", method, 0, cfg, str(tmp_path / method))

    runs = [planned("er"), planned("ewc")]
    rows = gather_rows(runs, {runs[0].run_dir: {"status": "error", "message": "Killed", "log": "/x/launch.log"},
                              runs[1].run_dir: {"status": "diverged", "message": "non-finite loss"}})
    assert [r["failure"] for r in rows] == ["failed", "diverged"]
    assert rows[0]["error"] == "seed 0: failed: Killed (log: /x/launch.log)"
    assert "| er | failed (see below) |" in markdown_table(rows)
    assert gather_rows(runs, {}) == []  # runs still going are not in the report


def test_a_child_that_fails_is_reported_with_its_log(tmp_path):
    """The local launcher's outcome of a child that cannot run: an error naming its log."""
    from lmsrr.config import Config

    run_dir = tmp_path / "broken"
    run_dir.mkdir()
    (run_dir / CONFIG_FILE).write_text("{not json")
    cfg = Config().replace(log={"out_dir": str(tmp_path), "run_name": "broken"})
    done = []
    LocalLauncher(jobs=1, gpus=[], threads=1).run([PlannedRun("", "lmsrr", 0, cfg, str(run_dir))],
                                                  lambda r, s: done.append(s))
    (status,) = done
    assert status["status"] == "error" and status["log"] == str(run_dir / "launch.log")
    assert "exit status 1" in status["message"]
    assert "cannot load" in (run_dir / "launch.log").read_text()


def test_an_interrupted_local_grid_rerun_finishes_only_the_missing_runs(tmp_path):
    """SIGTERM to the comparison while the second run trains: the first is done, the second
    checkpoints; the same command again skips the first and resumes the second."""
    out = tmp_path / "grid"
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "compare.py"), "--stream", "seq-digits",
           "--methods", "finetune", "--stop-after", "2", "--threads", "1", "--no-progress", "--log-every", "1",
           "--launcher", "local", "--jobs", "1", "--grid", "epochs=1,3", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    first, second = out / "epochs-1" / "finetune", out / "epochs-3" / "finetune"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while not ((second / "metrics.jsonl").exists() and (second / "metrics.jsonl").read_text().count("loss/ce")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    text = proc.communicate(timeout=300)[0]
    assert proc.returncode == 128 + signal.SIGTERM, text
    assert "stopped by SIGTERM" in text
    assert results(first)["complete"]
    assert not (second / "results.json").exists() or not results(second)["complete"]
    assert json.loads((second / "launch_status.json").read_text())["status"] == "interrupted"
    done_before = (first / "results.json").read_text()

    rerun = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout
    assert "2 run(s), 1 finished earlier, 1 to run" in rerun.stdout
    assert (first / "results.json").read_text() == done_before  # not run again
    assert results(second)["complete"] and "resumed from" in (second / "launch.log").read_text()
    md = (out / "comparison.md").read_text()
    assert "| epochs=1 | finetune |" in md and "| epochs=3 | finetune |" in md
