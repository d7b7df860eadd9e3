"""--update-backend and --aro-gate updates: the trainer's optimizer step through torch.optim, the
masked update (PyTorch reference and Triton), torch's fused optimizers and apex.

The truth for a whole task is torch.optim; the Triton cases run in one fresh process with Triton's
interpreter (see tests/update_helpers.py). Small sources keep the interpreter affordable.
"""
import importlib.util
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from lmsrr.config import Config, OptimConfig
from lmsrr.engine import Trainer
from lmsrr.errors import ConfigError
from lmsrr.optim import resolve_update_backend

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from update_helpers import gated_step, run_fresh_process, small_config, train_tasks  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device("cpu")
HAS_TRITON = importlib.util.find_spec("triton") is not None
OPTS = ["sgd", "adamw"]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("update"))


@pytest.fixture(scope="module")
def truth(out_dir):
    """torch.optim (the --update-backend torch step without gates) after the first task."""
    return {o: train_tasks(small_config(out_dir, o, "torch")) for o in OPTS}


@pytest.fixture(scope="module")
def triton_runs(out_dir):
    """Every Triton case, in one interpreter process: whole tasks with every gate on, one gated
    step per optimizer, and A-GEM (which replaces the gradients it is handed) over two tasks."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    jobs = [("train_tasks", {"cfg": small_config(out_dir, o, "triton", "updates"), "all_gates_on": True})
            for o in OPTS]
    jobs += [("gated_step", {"cfg": small_config(out_dir, o, "triton", "updates")}) for o in OPTS]
    jobs += [("train_tasks", {"cfg": small_config(out_dir, "sgd", "triton", method={"name": "agem"}),
                              "tasks": 2})]
    res = run_fresh_process(jobs, os.path.join(out_dir, "triton.pt"))
    return {"task": dict(zip(OPTS, res[0:2])), "gated": dict(zip(OPTS, res[2:4])), "agem": res[4]}


def assert_same_weights(a: dict, b: dict, atol: float):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=lambda m: f"{k}: {m}")


# ---------------------------------------------------------------- whole task, every gate on
@pytest.mark.parametrize("opt", OPTS)
def test_masked_reference_task_matches_torch_optim(opt, truth, out_dir):
    ours = train_tasks(small_config(out_dir, opt, "torch", "updates"), all_gates_on=True)
    assert_same_weights(ours, truth[opt], atol=1e-6)


@pytest.mark.parametrize("opt", OPTS)
def test_triton_task_matches_torch_optim(opt, truth, triton_runs):
    assert_same_weights(triton_runs["task"][opt], truth[opt], atol=1e-6)


def test_fused_task_matches_torch_optim(truth, out_dir):
    ours = train_tasks(small_config(out_dir, "adamw", "fused"))
    assert_same_weights(ours, truth["adamw"], atol=1e-6)


def test_baseline_that_rewrites_gradients_trains_the_same_on_triton(triton_runs, out_dir):
    """A-GEM assigns new .grad tensors after backward; the masked optimizer adopts them."""
    ref = train_tasks(small_config(out_dir, "sgd", "torch", method={"name": "agem"}), tasks=2)
    assert_same_weights(triton_runs["agem"], ref, atol=1e-6)


# ---------------------------------------------------------------- a gated-off block
def _check_gated_step(res):
    gates = res["gates"]
    assert gates.tolist() == [0.0] + [1.0] * (len(gates) - 1)  # source 0, block 0 off; the rest on
    off_before, off_after = res["before"][0], res["after"][0]
    for p0, p1 in zip(off_before["params"], off_after["params"]):
        assert torch.equal(p0, p1)
    for s0, s1 in zip(off_before["state"], off_after["state"]):
        assert s0.keys() == s1.keys() and "step" in s0
        for k in s0:
            assert torch.equal(torch.as_tensor(s0[k]), torch.as_tensor(s1[k])), k
    assert any(v.abs().sum() > 0 for s in off_before["state"] for k, v in s.items() if k != "step")
    for g in range(1, len(gates)):  # every gated-on group moved
        assert any(not torch.equal(p0, p1) for p0, p1 in zip(res["before"][g]["params"], res["after"][g]["params"]))
        assert all(not torch.equal(torch.as_tensor(s0["step"]), torch.as_tensor(s1["step"]))
                   for s0, s1 in zip(res["before"][g]["state"], res["after"][g]["state"]))


@pytest.mark.parametrize("opt", OPTS)
def test_gated_off_block_is_untouched_masked_reference(opt, out_dir):
    _check_gated_step(gated_step(small_config(out_dir, opt, "torch", "updates")))


@pytest.mark.parametrize("opt", OPTS)
def test_gated_off_block_is_untouched_triton(opt, triton_runs):
    _check_gated_step(triton_runs["gated"][opt])


# ---------------------------------------------------------------- fp16 scaler, on the device
@pytest.mark.parametrize("opt", OPTS)
def test_scaler_skips_a_nonfinite_step_inside_the_masked_optimizer(opt):
    torch.manual_seed(0)
    blocks = [torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)]
    backend = resolve_update_backend("torch", CPU, "--aro-gate updates")
    optim_cfg = OptimConfig(**small_config("", opt, "torch")["optim"])
    optimizer = backend.build([list(b.parameters()) for b in blocks], optim_cfg)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    gates = torch.ones(2)

    def step(poison: bool):
        optimizer.zero_grad()
        x = torch.randn(3, 4)
        scaler.scale(blocks[1](blocks[0](x)).square().mean()).backward()
        if poison:
            blocks[0].weight.grad[0, 0] = float("inf")
        scaler.unscale_(optimizer)
        before = [p.detach().clone() for b in blocks for p in b.parameters()]
        state = {k: v.clone() for k, v in optimizer.flat_buffers().items() if k != "grads"}
        backend.step(optimizer, scaler, gates)
        after = [p.detach() for b in blocks for p in b.parameters()]
        same = all(torch.equal(a, b) for a, b in zip(before, after))
        same_state = all(torch.equal(v, optimizer.flat_buffers()[k]) for k, v in state.items())
        return same, same_state

    assert step(poison=False) == (False, False)
    assert step(poison=True) == (True, True)  # skipped: parameters, state and step counts kept
    assert scaler.get_scale() == 1024.0 * 0.5  # ... and the scale shrank
    assert step(poison=False) == (False, False)


# ---------------------------------------------------------------- choice, refusals, record
def test_auto_is_torch_on_cpu_and_recorded_in_config_json(tmp_path):
    cfg = Config.from_dict(small_config(str(tmp_path), "sgd", "auto", log={"run_name": "r"}))
    tr = Trainer(cfg)
    assert tr.update.name == "torch" and not tr.update.masked
    record = json.loads((tmp_path / "r" / "config.json").read_text())["resolved"]["update_backend"]
    assert record["requested"] == "auto" and record["backend"] == "torch"
    assert record["implementation"] == "torch.optim" and "cpu" in record["reason"]
    assert isinstance(tr.new_optimizer(), torch.optim.SGD)
    # a config.json written by a run is a valid --config: the record is skipped, auto re-resolved
    from lmsrr.cli import build_parser, config_from_args

    args = build_parser().parse_args(["--config", str(tmp_path / "r" / "config.json")])
    assert config_from_args(args).optim.update_backend == "auto"


@pytest.mark.parametrize("backend", ["fused", "apex"])
def test_backends_that_cannot_gate_refuse_aro_gate_updates(backend):
    with pytest.raises(ConfigError, match=r"cannot apply --aro-gate updates.*triton.*torch"):
        resolve_update_backend(backend, CPU, "--aro-gate updates")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
        resolve_update_backend("triton", CPU, None)


@pytest.mark.skipif(importlib.util.find_spec("apex") is not None, reason="apex is installed here")
def test_missing_apex_exits_2_before_any_work(cli, tmp_path):
    code, err = cli("--update-backend", "apex", "--out-dir", str(tmp_path))
    assert code == 2 and "Traceback" not in err
    assert "NVIDIA apex is not installed" in err and "CUDA extensions" in err
    assert "unrelated" in err and "must not be installed" in err
    assert not os.listdir(tmp_path)  # nothing was started


def test_fused_with_aro_gate_updates_exits_2(cli, tmp_path):
    code, err = cli("--update-backend", "fused", "--aro-gate", "updates", "--out-dir", str(tmp_path))
    assert code == 2 and "--update-backend fused cannot apply --aro-gate updates" in err
    assert not os.listdir(tmp_path)


def test_aro_gate_updates_needs_distillation(cli):
    code, err = cli("--aro-gate", "updates", "--alpha", "0")
    assert code == 2 and "--alpha > 0" in err


# ---------------------------------------------------------------- compile, DDP
def test_compiled_top_with_the_masked_optimizer_does_not_recompile(out_dir):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    cfg = small_config(out_dir, "sgd", "torch", "updates", runtime={"compile": True, "compile_backend": "eager"})
    tr = Trainer(Config.from_dict(cfg))
    graphs = []
    for t in range(3):  # every task re-creates the optimizer, which re-points every parameter
        tr.train_task(t)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1] > 0 and graphs[1] == graphs[2], graphs
    torch._dynamo.reset()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_ranks_draw_the_same_gates(tmp_path):
    """2 gloo ranks under --aro-gate updates: different data and replay draws per rank, one gate
    sample per step, so the weights stay identical after every task."""
    d = small_config(str(tmp_path), "sgd", "torch", "updates")
    flags = ["--pretrained", "none", "--sources", d["model"]["sources"], "--trainable-blocks", "2", "--epochs", "2",
             "--stop-after", "3", "--batch-size", "32", "--lr", "0.03", "--momentum", "0.9",
             "--aro-gate", "updates", "--update-backend", "torch", "--log-every", "2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           os.path.join(ROOT, "scripts", "train.py"), *flags, "--threads", "1",
           "--out-dir", str(tmp_path), "--run-name", "ddp", "--no-progress"]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in lines if "ddp/weight_hashes" in r]
    assert len(evals) == 3 and all(r["ddp/weights_in_sync"] for r in evals)
    # the gates really switched blocks off on some steps (p_mean is the share of blocks on)
    p_means = [r["aro/p_mean"] for r in lines if "aro/p_mean" in r]
    assert p_means and any(p < 1 for p in p_means)


# ---------------------------------------------------------------- GPU, real sizes
def _vit_b_top():
    """The trainable set of LMSRR with 2 x ViT-B/16: 3 blocks each (one group per block), then
    MSIDF fusion and a 100-class head (about 43M parameters)."""
    from timm.models.vision_transformer import Block

    from lmsrr.models.msidf import MSIDF

    blocks = [Block(768, 12) for _ in range(6)]
    head = torch.nn.ModuleList([MSIDF([768, 768], 768, (3, 5), "attention"), torch.nn.Linear(768, 100)])
    return [list(m.cuda().parameters()) for m in blocks + [head]]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["fused", "triton", "apex"])
@pytest.mark.parametrize("opt", OPTS)
def test_gpu_backends_match_torch_optim_at_vit_b_size(backend, opt):
    from lmsrr.optim import apex_problem

    if backend == "apex" and apex_problem():
        pytest.skip(apex_problem())
    cuda = torch.device("cuda")
    optim_cfg = OptimConfig(**small_config("", opt, backend)["optim"])
    groups = _vit_b_top()
    twin = [[torch.nn.Parameter(p.detach().clone()) for p in ps] for ps in groups]
    ours = resolve_update_backend(backend, cuda, None)
    truth = resolve_update_backend("torch", cuda, None)
    o1, o2 = ours.build(groups, optim_cfg), truth.build(twin, optim_cfg)
    g = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(3):
        for ps, qs in zip(groups, twin):
            for p, q in zip(ps, qs):
                p.grad = torch.randn(p.shape, device=cuda, generator=g) * 1e-2
                q.grad = p.grad.clone()
        ours.step(o1, None, None)
        truth.step(o2, None, None)
    for ps, qs in zip(groups, twin):
        for p, q in zip(ps, qs):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("opt", OPTS)
def test_gpu_triton_half_gated_leaves_gated_off_blocks_untouched(opt):
    cuda = torch.device("cuda")
    optim_cfg = OptimConfig(**small_config("", opt, "triton")["optim"])
    groups = _vit_b_top()
    backend = resolve_update_backend("triton", cuda, "--aro-gate updates")
    o = backend.build(groups, optim_cfg)
    gates = torch.tensor([1.0, 0.0] * 3 + [1.0], device=cuda)
    for it in range(3):
        for ps in groups:
            for p in ps:
                p.grad.copy_(torch.randn_like(p) * 1e-2)
        before = [[p.detach().clone() for p in ps] for ps in groups]
        state = {k: v.clone() for k, v in o.flat_buffers().items() if k not in ("grads", "params")}
        backend.step(o, None, gates if it else torch.ones_like(gates))
        if it:
            for i, ps in enumerate(groups):
                same = all(torch.equal(a, p) for a, p in zip(before[i], ps))
                assert same == (gates[i].item() == 0), i
            assert torch.equal(state["steps"][1], o.flat_buffers()["steps"][1])
