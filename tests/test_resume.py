"""Nothing lost: exact resume after SIGKILL, corrupt-checkpoint fallback, SIGTERM, elastic restart,
and the non-finite guard."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from lmsrr import checkpoint as ckpt
from lmsrr.engine import Trainer
from lmsrr.guard import NonFiniteError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "scripts", "train.py")
# Two tasks, four epochs each (36 steps a task), a checkpoint every 5 steps, deterministic CPU math.
ARGS = ["--stop-after", "2", "--epochs", "4", "--checkpoint-every", "5", "--threads", "1",
        "--deterministic", "--log-every", "5", "--no-progress"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def train_cmd(out, name, *extra):
    return [sys.executable, TRAIN, *ARGS, "--out-dir", str(out), "--run-name", name, *extra]


def steps_checkpointed(run_dir):
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    return sorted(int(n.split("-")[1]) for n in os.listdir(root)
                  if os.path.exists(os.path.join(root, n, "COMPLETE")))


def wait_for_checkpoint(proc, run_dir, min_step, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        steps = steps_checkpointed(run_dir)
        if steps and steps[-1] >= min_step:
            return steps[-1]
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before step {min_step}: "
                                 f"{proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared in time")


def results(run_dir):
    with open(os.path.join(run_dir, "results.json")) as f:
        return json.load(f)


# updates: the masked optimizer (its flat state in torch's state_dict format) and the gate noise
# generator are checkpointed and restored too
@pytest.mark.parametrize("gate", [[], ["--aro-gate", "updates", "--update-backend", "torch"]],
                         ids=["aro-gate-loss", "aro-gate-updates"])
def test_sigkill_in_the_middle_of_a_task_then_resume_equals_uninterrupted_run(tmp_path, gate):
    done = subprocess.run(train_cmd(tmp_path, "straight", *gate), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    straight = results(tmp_path / "straight")

    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(tmp_path, "killed", *gate), env=ENV, stderr=subprocess.PIPE, text=True)
    step = wait_for_checkpoint(proc, str(run_dir), 45)  # task 2 spans steps 37..72
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not results(run_dir).get("complete")  # it really died inside task 2
    assert step < 72

    resumed = subprocess.run(train_cmd(tmp_path, "killed", *gate, "--resume", "auto"), env=ENV,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    again = results(run_dir)
    assert again["complete"] and again["steps"] == straight["steps"]
    assert again["weights_sha256"] == straight["weights_sha256"]
    assert again["acc_class_il"] == straight["acc_class_il"]
    assert again["acc_task_il"] == straight["acc_task_il"]


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny_cfg, caplog):
    cfg = tiny_cfg.replace(runtime={"stop_after": 2, "checkpoint_every": 4},
                           log={"run_name": "r", "out_dir": str(tmp_path)})
    Trainer(cfg).fit()
    root = str(tmp_path / "r" / "checkpoints")
    steps = steps_checkpointed(str(tmp_path / "r"))
    assert len(steps) == 2  # --keep-checkpoints 2
    newest = os.path.join(root, f"step-{steps[-1]:08d}", "rank0.pt")
    with open(newest, "r+b") as f:  # cut it in half, as a crash during a copy would
        f.truncate(os.path.getsize(newest) // 2)
    with caplog.at_level("WARNING"):
        state, folder = ckpt.load_latest(root, 0, 1)
    assert folder.endswith(f"step-{steps[0]:08d}") and state["step"] == steps[0]
    assert "unusable" in caplog.text and "checksum mismatch" in caplog.text
    # the trainer resumes from it
    tr = Trainer(cfg.replace(runtime={"resume": "auto"}))
    assert tr.step == steps[0]


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path):
    run_dir = tmp_path / "term"
    proc = subprocess.Popen(train_cmd(tmp_path, "term"), env=ENV, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(proc, str(run_dir), 10)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "SIGTERM received: checkpoint written to" in err and "--resume auto" in err
    assert "Traceback" not in err
    last = steps_checkpointed(str(run_dir))[-1]
    state, _ = ckpt.load_latest(str(run_dir / "checkpoints"), 0, 1)
    assert state["step"] == last and last < 72
    resumed = subprocess.run(train_cmd(tmp_path, "term", "--resume", "auto"), env=ENV,
                             capture_output=True, text=True)
    assert resumed.returncode == 0 and results(run_dir)["complete"]


def _children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    kids.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def _rank_of(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        return int(env.get(b"RANK", b"-1"))
    except OSError:
        return -1


def test_elastic_restart_after_a_rank_dies(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(port), TRAIN, *ARGS,
           "--batch-size", "16", "--replay-batch-size", "16", "--out-dir", str(tmp_path),
           "--run-name", "elastic"]
    proc = subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, text=True)
    run_dir = str(tmp_path / "elastic")
    wait_for_checkpoint(proc, run_dir, 10)
    victims = [p for p in _children(proc.pid) if _rank_of(p) == 1]
    assert victims, "rank 1's process not found"
    os.kill(victims[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    res = results(run_dir)
    assert res["complete"] and res["world_size"] == 2 and res["tasks_trained"] == 2
    lines = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert any("checkpoint/resumed_from" in r for r in lines)
    evals = [r for r in lines if "ddp/weight_hashes" in r]
    assert evals and all(len(set(r["ddp/weight_hashes"])) == 1 for r in evals)


def _inject_nan(trainer, term, at_step, always=False):
    real = trainer.method.loss

    def loss(batch, *a, **k):
        out = real(batch, *a, **k)
        if trainer.step + 1 == at_step or (always and trainer.step + 1 >= at_step):
            out.terms[term] = out.terms[term] * float("nan")
            out.loss = out.loss + out.terms[term]
        return out

    trainer.method.loss = loss


def test_nonfinite_loss_stops_the_run_naming_task_step_and_term(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(runtime={"stop_after": 2, "checkpoint_every": 4},
                           log={"run_name": "nan", "out_dir": str(tmp_path), "log_every": 50})
    tr = Trainer(cfg)
    bad_step = 9 + 7  # the 7th step of task 2 (task 1 has 9 steps at one epoch)
    _inject_nan(tr, "loss/distill", bad_step)
    with pytest.raises(NonFiniteError) as e:
        tr.fit()
    msg = str(e.value)
    assert "loss/distill" in msg and "task 2" in msg and f"step {bad_step}" in msg
    assert "loss/ce" not in msg
    newest = steps_checkpointed(str(tmp_path / "nan"))[-1]
    assert newest < bad_step  # no checkpoint holds the poisoned weights
    state, _ = ckpt.load_latest(str(tmp_path / "nan" / "checkpoints"), 0, 1)
    assert all(torch.isfinite(v).all() for v in state["net"].values() if v.is_floating_point())


def test_fp16_scaler_skips_isolated_nonfinite_steps_but_not_a_run_of_them(tiny_cfg):
    cfg = tiny_cfg.replace(runtime={"stop_after": 1, "precision": "fp16", "max_nonfinite_steps": 3},
                           log={"log_every": 1})
    tr = Trainer(cfg)
    _inject_nan(tr, "loss/ce", 2)  # one bad step: skipped by the scaler, training goes on
    tr.train_task(0)
    tr = Trainer(cfg)
    _inject_nan(tr, "loss/ce", 2, always=True)
    with pytest.raises(NonFiniteError, match="3 consecutive fp16 steps"):
        tr.train_task(0)


@pytest.mark.parametrize("started, resumed, named", [
    (["--pretrained", "none"], [], "--pretrained none when the run started, builtin now"),
    (["--pretrained", "none", "--seed", "1"], ["--pretrained", "none"],
     "--seed 1 when the run started, 0 now"),
], ids=["pretrained", "seed"])
def test_resume_with_other_frozen_weights_is_refused_and_leaves_the_run_as_it_was(
        tmp_path, cli, started, resumed, named):
    """Same run directory, flags that give other frozen source weights: one message naming the
    flag, exit 2, and the run's config.json untouched, so the original command still resumes it."""
    base = ["--epochs", "1", "--threads", "1", "--out-dir", str(tmp_path), "--run-name", "r"]
    assert cli(*base, *started, "--stop-after", "1")[0] == 0
    config = tmp_path / "r" / "config.json"
    before = config.read_bytes()
    code, err = cli(*base, *resumed, "--stop-after", "2", "--resume", "auto")
    assert code == 2 and "Traceback" not in err
    assert "different frozen source weights" in err and named in err
    assert config.read_bytes() == before
    code, err = cli(*base, *started, "--stop-after", "2", "--resume", "auto")
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "results.json").read_text())["tasks_trained"] == 2
