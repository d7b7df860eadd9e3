"""Nothing silently wrong on disk: finite checkpoints, resume from a named checkpoint, a full disk,
a killed writer's leftovers, checks before data, and runs that never overwrite each other."""
import errno
import json
import os

import pytest
import torch

from lmsrr import checkpoint as ckpt
from lmsrr import engine, storage
from lmsrr.cli import build_parser, config_from_args
from lmsrr.engine import Trainer
from lmsrr.errors import WriteError
from lmsrr.guard import NonFiniteError


def _cfg(tiny_cfg, tmp_path, name, **runtime):
    return tiny_cfg.replace(runtime={"stop_after": 2, "checkpoint_every": 4, "threads": 1, **runtime},
                            log={"run_name": name, "out_dir": str(tmp_path), "log_every": 1})


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _step_records(run_dir):
    return [r["step"] for r in _metrics(run_dir) if "loss/total" in r]


# ------------------------------------------------------------------ finite checkpoints
def test_a_non_finite_parameter_stops_the_run_before_its_checkpoint(tiny_cfg, tmp_path):
    tr = Trainer(_cfg(tiny_cfg, tmp_path, "inf", stop_after=1))
    real = tr.method.after_step
    target = next(n for n, p in tr.net.named_parameters() if p.requires_grad)

    def after_step(batch, out):  # the optimizer step blew one weight up; losses were finite
        real(batch, out)
        if tr.step + 1 == 8:  # the step whose checkpoint comes next
            with torch.no_grad():
                dict(tr.net.named_parameters())[target].view(-1)[0] = float("inf")

    tr.method.after_step = after_step
    with pytest.raises(NonFiniteError) as e:
        tr.fit()
    msg = str(e.value)
    assert f"parameter {target} is not finite after step 8" in msg
    assert "step-00000004" in msg and "--precision fp32" not in msg  # an fp32 run
    assert ckpt.complete_steps(str(tmp_path / "inf" / "checkpoints")) == [4]
    state, _ = ckpt.load_latest(str(tmp_path / "inf" / "checkpoints"), 0, 1)
    assert all(torch.isfinite(v).all() for v in state["net"].values() if v.is_floating_point())


def test_a_non_finite_optimizer_state_is_named(tiny_cfg, tmp_path):
    tr = Trainer(_cfg(tiny_cfg, tmp_path, "mom", stop_after=1).replace(optim={"momentum": 0.9}))
    real = tr.train_step

    def train_step(opt, scaler, batch, data_s=0.0):
        out = real(opt, scaler, batch, data_s)
        if tr.step == 4:  # after the step: only the state, not yet the weights
            p = next(p for p in tr.method.parameters() if "momentum_buffer" in opt.state.get(p, {}))
            opt.state[p]["momentum_buffer"].fill_(float("nan"))
        return out

    tr.train_step = train_step
    with pytest.raises(NonFiniteError, match="optimizer state momentum_buffer of .* is not finite after step 4"):
        tr.fit()
    assert not os.path.isdir(tmp_path / "mom" / "checkpoints" / "step-00000004")


def test_the_guard_names_no_checkpoint_when_there_is_none(tiny_cfg, tmp_path):
    tr = Trainer(_cfg(tiny_cfg, tmp_path, "none", checkpoint_every=0, stop_after=1))
    real = tr.method.loss

    def loss(batch):
        out = real(batch)
        out.loss = out.loss * float("nan")
        return out

    tr.method.loss = loss
    with pytest.raises(NonFiniteError, match="no checkpoint has been written yet"):
        tr.fit()


# ------------------------------------------------------------------ resume from a named checkpoint
def test_resume_from_a_named_middle_checkpoint_is_bit_identical(tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg, tmp_path, "r", keep_checkpoints=20)
    straight = Trainer(cfg).fit()
    run_dir = str(tmp_path / "r")
    root = os.path.join(run_dir, "checkpoints")
    steps = ckpt.complete_steps(root)
    assert steps == [4, 8, 9, 12, 16, 18]  # task 1 ends at step 9
    middle = os.path.join(root, "step-00000012")  # inside task 2

    tr = Trainer(cfg.replace(runtime={"resume": middle}))
    assert tr.step == 12 and tr.resumed["position"]["task"] == 1
    assert ckpt.complete_steps(root) == steps  # later checkpoints kept until this run writes its own
    again = tr.fit()
    assert again["steps"] == straight["steps"] == 18
    assert again["weights_sha256"] == straight["weights_sha256"]
    assert again["acc_class_il"] == straight["acc_class_il"]
    assert ckpt.complete_steps(root) == steps  # 16 and 18 rewritten by the resumed run
    recorded = _step_records(run_dir)
    assert recorded == list(range(1, 19))  # every step once, in order
    abandoned = [json.loads(x) for x in open(os.path.join(run_dir, "metrics-abandoned.jsonl"))]
    assert {r["step"] for r in abandoned if "loss/total" in r} == set(range(13, 19))


def test_a_named_checkpoint_that_is_unusable_is_refused(tiny_cfg, tmp_path, cli):
    Trainer(_cfg(tiny_cfg, tmp_path, "bad", stop_after=1)).fit()
    folder = tmp_path / "bad" / "checkpoints" / "step-00000008"
    with open(folder / "rank0.pt", "r+b") as f:
        f.truncate(100)
    code, err = cli("--resume", str(folder), "--out-dir", str(tmp_path))
    assert code == 2 and "step-00000008: this checkpoint is unusable (checksum mismatch" in err
    assert "Traceback" not in err


def test_fallback_resume_does_not_repeat_steps_in_the_metrics(tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg, tmp_path, "fb", stop_after=1)
    real_fit = Trainer(cfg)
    with pytest.raises(KeyboardInterrupt):  # killed during task 1, after the step-8 checkpoint
        real = real_fit.method.loss

        def loss(batch):
            if real_fit.step == 9 - 1:
                raise KeyboardInterrupt
            return real(batch)

        real_fit.method.loss = loss
        real_fit.fit()
    root = tmp_path / "fb" / "checkpoints"
    newest = root / "step-00000008" / "rank0.pt"
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    tr = Trainer(cfg.replace(runtime={"resume": "auto"}))
    assert tr.step == 4
    assert ckpt.complete_steps(str(root)) == [4, 8]  # the unusable one stays until step 8 is rewritten
    tr.fit()
    assert _step_records(str(tmp_path / "fb")) == list(range(1, 10))
    state, _ = ckpt.load_latest(str(root), 0, 1)
    assert state["step"] == 9


# ------------------------------------------------------------------ a full disk
def _fail_writes(monkeypatch, when):
    """Make storage's writes fail with ENOSPC (after writing part of the data) when
    ``when(path)`` is true, as a full disk would."""
    real = storage._write_all

    def write_all(f, data):
        if when(f.name):
            f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)

    monkeypatch.setattr(storage, "_write_all", write_all)


def _temporaries(folder):
    return [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names if ".tmp" in n]


def test_disk_full_while_checkpointing(tiny_cfg, tmp_path, monkeypatch, cli):
    _fail_writes(monkeypatch, lambda p: "step-00000008" in p and p.endswith(".pt.tmp-%d" % os.getpid()))
    args = ("--stop-after", "1", "--epochs", "1", "--checkpoint-every", "4", "--threads", "1",
            "--out-dir", str(tmp_path), "--run-name", "full")
    code, err = cli(*args)
    run_dir = tmp_path / "full"
    assert code == 1 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert "could not write the checkpoint of step 8 to" in err and "No space left on device" in err
    assert "it needed" in err and "free on that file system" in err
    assert f"--resume {run_dir}" in err
    assert _temporaries(run_dir) == []
    assert ckpt.complete_steps(str(run_dir / "checkpoints")) == [4]
    assert not (run_dir / "checkpoints" / "step-00000008").exists()
    state, _ = ckpt.load_latest(str(run_dir / "checkpoints"), 0, 1)
    assert state["step"] == 4

    monkeypatch.undo()  # space freed: the hint's command finishes the run
    code, err = cli(*args, "--resume", str(run_dir))
    assert code == 0, err
    assert json.load(open(run_dir / "results.json"))["complete"]


def test_disk_full_while_writing_results(tiny_cfg, tmp_path, monkeypatch, cli):
    _fail_writes(monkeypatch, lambda p: "results.json" in p)
    code, err = cli("--stop-after", "1", "--epochs", "1", "--threads", "1",
                    "--out-dir", str(tmp_path), "--run-name", "res")
    assert code == 1 and "Traceback" not in err
    assert "could not write results.json" in err and "No space left on device" in err
    assert "The newest checkpoint is intact" in err and "--resume" in err
    assert _temporaries(tmp_path / "res") == []
    assert ckpt.complete_steps(str(tmp_path / "res" / "checkpoints")) == [9]


def test_a_killed_writers_leftovers_are_removed_at_the_next_start(tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg, tmp_path, "stale", stop_after=1)
    Trainer(cfg).fit()
    run_dir = tmp_path / "stale"
    (run_dir / "results.json.tmp-4242").write_bytes(b"x" * 1000)
    (run_dir / "checkpoints" / "step-00000008" / "rank0.pt.tmp-4242").write_bytes(b"x" * 1000)
    (run_dir / "checkpoints" / "step-00000099").mkdir()  # a checkpoint killed before COMPLETE
    (run_dir / "checkpoints" / "step-00000099" / "rank0.pt").write_bytes(b"x")
    Trainer(cfg.replace(runtime={"resume": "auto"}))
    assert _temporaries(run_dir) == []
    assert not (run_dir / "checkpoints" / "step-00000099").exists()


def test_pruning_removes_the_complete_marker_first(tmp_path, monkeypatch):
    root = str(tmp_path)
    for step in (1, 2, 3):
        folder = ckpt.save_rank_state(root, step, 0, {"step": step})
        ckpt.mark_complete(folder, 1)
    seen = []

    def rmtree(folder, ignore_errors=False):  # a kill here must not leave a "complete" folder
        seen.append(os.path.exists(os.path.join(folder, "COMPLETE")))

    monkeypatch.setattr(ckpt.shutil, "rmtree", rmtree)
    ckpt.prune(root, 2)
    assert seen == [False]
    assert ckpt.complete_steps(root) == [2, 3]


# ------------------------------------------------------------------ checks before data
@pytest.mark.parametrize("flags,message", [
    (("--sources", "vit_tiny_patch16_22"), "unknown timm model"),
    (("--pretrained", "/nowhere/a.pth,/nowhere/b.pth"), "does not exist"),
    (("--resume", "/nowhere/run"), "no such checkpoint folder or run directory"),
    (("--out-dir", "/proc/version"), "cannot write the results directory"),
])
def test_checks_that_need_no_data_run_before_the_data_is_read(cli, tmp_path, monkeypatch, flags, message):
    def no_data(_):
        raise AssertionError("the dataset was read before the checks")

    monkeypatch.setattr(engine, "build_stream", no_data)
    out = ("--out-dir", str(tmp_path / "runs")) if "--out-dir" not in flags else ()
    code, err = cli(*flags, *out)
    assert code == 2 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_nothing_is_created_when_a_check_after_the_data_fails(cli, tmp_path):
    code, err = cli("--method", "icarl", "--buffer-size", "5", "--out-dir", str(tmp_path / "runs"))
    assert code == 2 and "--buffer-size must be >=" in err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ runs never overwrite each other
def test_an_existing_run_is_not_overwritten_without_resume(tiny_cfg, tmp_path, cli):
    Trainer(_cfg(tiny_cfg, tmp_path, "done", stop_after=1, checkpoint_every=0)).fit()
    run_dir = tmp_path / "done"
    before = {p: (run_dir / p).read_bytes() for p in ("config.json", "metrics.jsonl", "results.json")}
    code, err = cli("--out-dir", str(tmp_path), "--run-name", "done", "--lr", "0.1")
    assert code == 2 and "already holds a run" in err and "--resume auto" in err
    assert {p: (run_dir / p).read_bytes() for p in before} == before


def test_a_runs_config_file_starts_a_new_run(tiny_cfg, tmp_path):
    first = Trainer(_cfg(tiny_cfg, tmp_path, "orig", stop_after=1, resume="auto"))
    first.fit()
    config = os.path.join(first.run_path, "config.json")
    assert json.load(open(config))["log"]["run_name"] == "orig"
    metrics = open(os.path.join(first.run_path, "metrics.jsonl")).read()
    cfg = config_from_args(build_parser().parse_args(["--config", config]))
    assert cfg.log.run_name == "" and cfg.runtime.resume == "none"
    second = Trainer(cfg)
    assert os.path.dirname(second.run_path) == str(tmp_path)
    assert second.run_path != first.run_path
    third = Trainer(cfg)  # the same second: a new name again
    assert third.run_path not in (first.run_path, second.run_path)
    assert open(os.path.join(first.run_path, "metrics.jsonl")).read() == metrics
    # explicit flags still name the run to continue
    cfg = config_from_args(build_parser().parse_args(["--config", config, "--run-name", "orig",
                                                      "--resume", "auto"]))
    assert Trainer(cfg).run_path == first.run_path
