"""Trainer runs for the update-backend tests, in this process or in a fresh one.

The Triton backend runs on CPU only in Triton's interpreter, which must be switched on before
triton is first imported; other tests of the same pytest process may have imported it already.
So the Triton cases run through ``python tests/update_helpers.py JOBS.json OUT.pt`` with
``TRITON_INTERPRET=1`` in a fresh process, and the torch cases call the same functions directly.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, ROOT)

from lmsrr.config import Config  # noqa: E402
from lmsrr.engine import Trainer  # noqa: E402

# Small sources and two trainable blocks each: the interpreter executes every Triton program in
# Python, so the trainable set is kept to a few dozen blocks of the flat layout.
SMALL = {
    "model": {"sources": "vit_tiny_patch16_224(input_size=16,patch_size=4,embed_dim=32,depth=3,num_heads=2),"
                         "convnext_atto(input_size=32,dims=8/16/32/64,depths=1/1/1/1)",
              "pretrained": "none", "trainable_blocks": 2},
    "data": {"batch_size": 64},
    "optim": {"epochs": 1},
    "runtime": {"threads": 1},
    "log": {"progress": False},
}
OPTIMIZERS = {
    "sgd": {"optim": {"optimizer": "sgd", "lr": 0.03, "momentum": 0.9, "weight_decay": 1e-4}},
    # Adam moves an element by about lr * sign(g) wherever |g| is near eps, so where a gradient is
    # only rounding noise, backends that round differently (bias corrections in float32 on the
    # device vs Python floats in torch.optim) move it in different directions. The attention
    # fusion's last bias is such a parameter (a softmax over sources ignores a shared shift):
    # AdamW is compared with the released fusion (no attention) and a small lr.
    "adamw": {"optim": {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.01},
              "model": {"msidf": "reference"}},
}


def small_config(out_dir: str, optimizer: str, backend: str, gate: str = "loss", **groups) -> dict:
    d = json.loads(json.dumps(SMALL))
    for group, values in OPTIMIZERS[optimizer].items():
        d[group].update(values)
    d["optim"]["update_backend"] = backend
    d["method"] = {"aro_gate": gate}
    d["log"]["out_dir"] = out_dir
    for group, values in groups.items():
        d.setdefault(group, {}).update(values)
    return d


def trained_weights(tr: Trainer) -> dict[str, torch.Tensor]:
    w = {n: p.detach().clone() for n, p in tr.net.named_parameters() if p.requires_grad}
    w.update({f"method.{i}": p.detach().clone() for i, p in enumerate(tr.method.outside_parameters())})
    return w


def train_tasks(cfg: dict, tasks: int = 1, all_gates_on: bool = False) -> dict[str, torch.Tensor]:
    """Train the first ``tasks`` tasks; ``all_gates_on``: the method hands the optimizer a gate
    tensor of ones every step (the gated code path with nothing gated off)."""
    tr = Trainer(Config.from_dict(cfg))
    if all_gates_on:
        ones = torch.ones(len(tr.method.update_groups()), device=tr.device)
        tr.method.update_gates = lambda: ones
    for t in range(tasks):
        tr.train_task(t)
    return trained_weights(tr)


def gated_step(cfg: dict) -> dict:
    """Task 2 of LMSRR under --aro-gate updates with the switch pinned: source 0's first block
    gated off and everything else on. Two warm-up steps with every gate on give the optimizer
    non-zero state; then one gated step. Returns every (source, block) group's parameters and
    optimizer state before and after that step."""
    tr = Trainer(Config.from_dict(cfg))
    method = tr.method
    method.begin_task(1)  # an old model exists: the distillation and the gates are on
    opt = tr.new_optimizer()
    batches = [b for b, _ in tr.batches(1)]
    logits = method.switch.logits
    with torch.no_grad():  # +-1000 dwarfs any Gumbel noise: the hard sample is fixed
        logits[..., 0], logits[..., 1] = 1000.0, -1000.0
    for b in batches[:2]:
        tr.train_step(opt, None, b)
    with torch.no_grad():
        logits[0, 0, 0], logits[0, 0, 1] = -1000.0, 1000.0
    groups = method.update_groups()

    def snapshot():
        return [{"params": [p.detach().clone() for p in ps],
                 "state": [{k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
                           for p in ps]} for ps in groups]

    before = snapshot()
    tr.train_step(opt, None, batches[2])
    gates = method.update_gates()
    return {"before": before, "after": snapshot(), "gates": gates.cpu()}


SCENARIOS = {"train_tasks": train_tasks, "gated_step": gated_step}


def run_fresh_process(jobs: list[tuple[str, dict]], out_path: str) -> list:
    """Run every ``(scenario, kwargs)`` job in one new process with Triton's interpreter on (one
    start-up for all of them); returns their results in order."""
    args_path = out_path + ".json"
    with open(args_path, "w") as f:
        json.dump(jobs, f)
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), args_path, out_path],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out_path)


if __name__ == "__main__":
    args_file, out = sys.argv[1:3]
    with open(args_file) as fh:
        todo = json.load(fh)
    torch.save([SCENARIOS[name](**kwargs) for name, kwargs in todo], out)
