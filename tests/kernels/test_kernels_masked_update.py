"""Masked optimizers: reference vs. torch.optim, Triton vs. reference, gates, AMP skip, checkpoints."""
import io

import pytest
import torch

import kernels
from kernels.masked_update import MaskedAdamW, MaskedSGD

# irregular shapes; 130 > block 64 gives several blocks per group
SHAPES = [[(3, 5), (7,)], [(4, 4, 2)], [(130,), (1,)], [(2, 3)]]
ADAMW = dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
SGD_CASES = {
    "nesterov": dict(lr=5e-2, momentum=0.9, nesterov=True, weight_decay=0.1),
    "dampening": dict(lr=5e-2, momentum=0.8, dampening=0.3, weight_decay=0.05),
    "plain": dict(lr=5e-2, weight_decay=0.1),
}


def _params(device, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [[torch.nn.Parameter(torch.randn(s, generator=g).to(device=device, dtype=dtype)) for s in grp]
            for grp in SHAPES]


def _grads(params, it, scale=1.0):
    g = torch.Generator().manual_seed(1000 + it)
    for grp in params:
        for p in grp:
            p.grad.copy_(torch.randn(p.shape, generator=g).to(p.device) * scale)


def _make(cls, params, kw, **extra):
    # layers: group 0 and 3 share layer 0 (e.g. decay / no-decay halves of one block)
    groups = [{"params": params[0], "layer": 0}, {"params": params[1], "layer": 1},
              {"params": params[2], "layer": 2, "weight_decay": 0.0}, {"params": params[3], "layer": 0}]
    return cls(groups, block_size=64, **kw, **extra)


def _flat(params):
    return [p.detach().clone() for grp in params for p in grp]


GATES = [[1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 0], [1, 0, 1]]


def _run(backend_name, cls, kw, device, n_steps=6, gates_dtype=torch.float32):
    kernels.set_backend(backend_name)
    params = _params(device)
    opt = _make(cls, params, kw)
    snaps = []
    for it in range(n_steps):
        _grads(params, it)
        opt.step(gates=torch.tensor(GATES[it % len(GATES)], dtype=gates_dtype, device=device))
        snaps.append(_flat(params) + [b.clone() for b in opt.flat_buffers().values()])
    kernels.set_backend(None)
    return snaps


@pytest.mark.parametrize("cls,kw", [(MaskedAdamW, ADAMW)] + [(MaskedSGD, v) for v in SGD_CASES.values()],
                         ids=["adamw"] + list(SGD_CASES))
def test_reference_matches_torch_optim_when_all_gates_open(cls, kw, backend):
    backend("torch")
    params = _params("cpu")
    ours = cls([p for grp in params for p in grp], block_size=64, **kw)
    theirs_p = [torch.nn.Parameter(p.detach().clone()) for grp in params for p in grp]
    theirs = (torch.optim.AdamW if cls is MaskedAdamW else torch.optim.SGD)(theirs_p, **kw)
    for it in range(5):
        _grads(params, it)
        for p, q in zip([p for grp in params for p in grp], theirs_p):
            q.grad = p.grad.clone()
        ours.step()
        theirs.step()
    for p, q in zip([p for grp in params for p in grp], theirs_p):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.triton
@pytest.mark.parametrize("cls,kw", [(MaskedAdamW, ADAMW)] + [(MaskedSGD, v) for v in SGD_CASES.values()],
                         ids=["adamw"] + list(SGD_CASES))
def test_triton_matches_reference_with_gates(cls, kw, device):
    ref = _run("torch", cls, kw, device)
    tri = _run("triton", cls, kw, device, gates_dtype=torch.bool)
    for step, (a, b) in enumerate(zip(tri, ref)):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=lambda s: f"step {step}: {s}")


@pytest.mark.parametrize("name", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
def test_gate_zero_leaves_layer_untouched(name, device, backend):
    backend(name)
    params = _params(device)
    opt = _make(MaskedAdamW, params, ADAMW)
    _grads(params, 0)
    opt.step()
    before_p = _flat(params)
    before_state = {k: [v.clone() for v in opt.state[p].values()] for k, p in
                    enumerate(p for grp in params for p in grp)}
    before_steps = opt.flat_buffers()["steps"].clone()
    _grads(params, 1)
    opt.step(gates=torch.tensor([0.0, 1.0, 0.0], device=device))
    flat = [p for grp in params for p in grp]
    layer_of = [0, 0, 1, 2, 2, 0]                     # per parameter, from _make
    for i, p in enumerate(flat):
        changed = not torch.equal(p.detach(), before_p[i])
        assert changed == (layer_of[i] == 1), f"param {i} (layer {layer_of[i]})"
        state_same = all(torch.equal(a, b) for a, b in zip(opt.state[p].values(), before_state[i]))
        assert state_same == (layer_of[i] != 1)
    assert opt.flat_buffers()["steps"].tolist() == (before_steps + torch.tensor([0, 1, 0, 0.], device=device)).tolist()


@pytest.mark.parametrize("name", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("cls,kw", [(MaskedAdamW, ADAMW), (MaskedSGD, SGD_CASES["nesterov"])],
                         ids=["adamw", "sgd"])
def test_grad_scale_and_nonfinite_skip(name, cls, kw, device, backend):
    backend(name)
    scale = 1024.0
    # scaled gradients + grad_scale == plain gradients
    params_a, params_b = _params(device), _params(device)
    opt_a, opt_b = _make(cls, params_a, kw), _make(cls, params_b, kw)
    _grads(params_a, 0)
    _grads(params_b, 0, scale=scale)
    opt_a.step()
    found = opt_b.step(grad_scale=torch.tensor(scale, device=device))
    assert found is None
    assert opt_b.last_found_inf.item() == 0.0
    for x, y in zip(_flat(params_a), _flat(params_b)):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    # a non-finite gradient in an active layer skips the whole step: nothing moves
    before = _flat(params_b) + [b.clone() for b in opt_b.flat_buffers().values() if b is not opt_b.flat_buffers()["grads"]]
    _grads(params_b, 1, scale=scale)
    params_b[2][0].grad[5] = float("inf")
    params_b[1][0].grad[0, 0, 1] = float("nan")
    opt_b.step(grad_scale=torch.tensor(scale, device=device))
    assert opt_b.last_found_inf.item() == 1.0
    after = _flat(params_b) + [b for b in opt_b.flat_buffers().values() if b is not opt_b.flat_buffers()["grads"]]
    for x, y in zip(before, after):
        assert torch.equal(x, y)
    # ... unless the bad layers are gated off (their gradients are not used)
    opt_b.step(gates=torch.tensor([1.0, 0.0, 0.0], device=device), grad_scale=torch.tensor(scale, device=device))
    assert opt_b.last_found_inf.item() == 0.0
    assert not torch.equal(params_b[0][0].detach(), before[0])
    # an explicit found_inf flag skips too
    snap = _flat(params_b)
    opt_b.step(found_inf=torch.ones((), device=device))
    assert all(torch.equal(x, y) for x, y in zip(snap, _flat(params_b)))


@pytest.mark.parametrize("name", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
def test_grad_scaler_integration(name, device, backend):
    backend(name)
    params = _params(device)
    flat = [p for grp in params for p in grp]
    opt = _make(MaskedAdamW, params, ADAMW)
    ref_params = _params(device)
    ref = _make(MaskedAdamW, ref_params, ADAMW)
    scaler = torch.amp.GradScaler(device.type, init_scale=256.0)
    loss = sum((p.float() ** 2).sum() for p in flat)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    ref_flat = [p for grp in ref_params for p in grp]
    sum((p ** 2).sum() for p in ref_flat).backward()
    ref.step()
    for a, b in zip(flat, ref_flat):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # an overflow: the scaler's found_inf makes the optimizer skip, the scale backs off
    opt.zero_grad()
    before = _flat(params)
    scaler.scale(flat[0].sum() * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(x, y) for x, y in zip(before, _flat(params)))
    assert scaler.get_scale() < 256.0


@pytest.mark.parametrize("name", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("cls,kw", [(MaskedAdamW, ADAMW), (MaskedSGD, SGD_CASES["nesterov"])],
                         ids=["adamw", "sgd"])
def test_state_dict_round_trip(name, cls, kw, device, backend):
    backend(name)
    params = _params(device)
    opt = _make(cls, params, kw)
    for it in range(3):
        _grads(params, it)
        opt.step(gates=torch.tensor(GATES[it], dtype=torch.float32, device=device))
    blob = io.BytesIO()
    torch.save({"model": _flat(params), "opt": opt.state_dict()}, blob)
    blob.seek(0)
    ck = torch.load(blob, weights_only=True)
    assert set(ck["opt"]["state"][0]) == {"step", *cls._state_keys}
    # a fresh model + optimizer restored from the checkpoint continues identically
    params2 = _params(device, seed=1)
    for p, saved in zip([p for grp in params2 for p in grp], ck["model"]):
        with torch.no_grad():
            p.copy_(saved)
    opt2 = _make(cls, params2, dict(kw, lr=123.0))     # hyperparameters come from the checkpoint
    opt2.load_state_dict(ck["opt"])
    assert opt2.param_groups[0]["lr"] == kw["lr"]
    for it in range(3, 6):
        _grads(params, it)
        _grads(params2, it)
        g = torch.tensor(GATES[it], dtype=torch.float32, device=device)
        opt.step(gates=g)
        opt2.step(gates=g)
    for x, y in zip(_flat(params), _flat(params2)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    for k, v in opt.flat_buffers().items():
        torch.testing.assert_close(opt2.flat_buffers()[k], v, rtol=0, atol=0)


def test_views_zero_grad_and_replaced_grads(backend):
    backend("torch")
    params = _params("cpu")
    flat = [p for grp in params for p in grp]
    opt = _make(MaskedSGD, params, dict(lr=0.1))
    buf = opt.flat_buffers()
    assert all(p.untyped_storage().data_ptr() == buf["params"].untyped_storage().data_ptr() for p in flat)
    _grads(params, 0)
    opt.zero_grad()
    assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for p in flat)
    # a gradient replaced behind the optimizer's back, and one set to None, are adopted
    before = _flat(params)
    flat[0].grad = torch.ones_like(flat[0])
    flat[1].grad = None
    opt.step()
    torch.testing.assert_close(flat[0].detach(), before[0] - 0.1)
    torch.testing.assert_close(flat[1].detach(), before[1])
    assert flat[0].grad.data_ptr() == opt.flat_buffers()["grads"].data_ptr()


def test_frozen_parameters_are_not_managed(backend):
    backend("torch")
    a = torch.nn.Parameter(torch.ones(3))
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    opt = MaskedSGD([a, frozen], lr=0.5, weight_decay=1.0)
    opt.step()
    assert torch.equal(frozen.detach(), torch.ones(2))
    torch.testing.assert_close(a.detach(), torch.full((3,), 0.5))


@pytest.mark.parametrize("name", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
def test_changed_and_tensor_learning_rate(name, device, backend):
    backend(name)
    p = torch.nn.Parameter(torch.zeros(4, device=device))
    opt = MaskedSGD([p], lr=1.0)
    p.grad.fill_(1.0)
    opt.step()
    opt.param_groups[0]["lr"] = 0.5
    opt.step()
    opt.param_groups[0]["lr"] = torch.tensor(0.25, device=device)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((4,), -1.75, device=device))


def test_rejects_bad_configurations(backend):
    backend("torch")
    with pytest.raises(ValueError):
        MaskedSGD([torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2, dtype=torch.float64))])
    opt = MaskedAdamW([[torch.nn.Parameter(torch.ones(2))], [torch.nn.Parameter(torch.ones(2))]])
    assert opt.n_layers == 2
    with pytest.raises(ValueError):
        opt.step(gates=torch.ones(1))
    with pytest.raises(RuntimeError):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))]})


def _vit_blocks(device):
    """2 sources x 3 ViT-B blocks: 42.5M parameters, one layer id per block."""
    shapes = [(768,), (768,), (2304, 768), (2304,), (768, 768), (768,), (768,), (768,),
              (3072, 768), (3072,), (768, 3072), (768,)]
    return [[torch.nn.Parameter(torch.randn(s, device=device) * 0.02) for s in shapes] for _ in range(6)]


@pytest.mark.gpu
@pytest.mark.parametrize("cls,kw", [(MaskedAdamW, ADAMW), (MaskedSGD, SGD_CASES["nesterov"])],
                         ids=["adamw", "sgd"])
def test_gpu_real_size(cls, kw):
    results = {}
    for name in ("torch", "triton"):
        kernels.set_backend(name)
        torch.manual_seed(0)
        blocks = _vit_blocks("cuda")
        opt = cls(blocks, **kw)
        for it in range(3):
            torch.manual_seed(10 + it)
            for grp in blocks:
                for p in grp:
                    p.grad.copy_(torch.randn_like(p) * 1e-2)
            opt.step(gates=torch.tensor([1, 0, 1, 1, 0, 1][it:] + [1] * it, dtype=torch.float32, device="cuda"))
        results[name] = opt.flat_buffers()
    kernels.set_backend(None)
    for k in results["torch"]:
        torch.testing.assert_close(results["triton"][k], results["torch"][k], rtol=1e-5, atol=1e-6)
