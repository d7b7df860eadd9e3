"""The kernels as PyTorch custom ops (torch.ops.lmsrr.*), deterministic reductions, launch safety.

CPU: the ops' CPU kernels (the references) under opcheck, against autograd of the references,
and inside ``torch.compile(fullgraph=True)``; the Triton kernels in the interpreter for
bit-identical repeated backward passes and for the launch-safety cases (scratch content never
read, interleaved launches, the launch device). ``gpu``-marked: the same on CUDA with Triton,
and a 10,000-launch stress test against the references.
"""
import pytest
import torch

import kernels
from kernels import _util
from kernels.distill import distill_loss
from kernels.distill.reference import distill_loss as distill_reference
from kernels.masked_update import MaskedAdamW, MaskedSGD
from kernels.msidf import msidf
from kernels.msidf.reference import msidf as msidf_reference

HAS_CUDA = torch.cuda.is_available()


def _msidf_inputs(B=3, S=2, D=37, ks=(3, 5), M=3, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()

    return r(B, S, D), [r(S, k) for k in ks], r(len(ks)), r(M)


def _distill_inputs(shapes=((4, 5), (3,), (2, 3, 4)), dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    olds = [torch.randn(*s, generator=g, dtype=torch.float64).to(device, dtype) for s in shapes]
    hs = [torch.randn(*s, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_() for s in shapes]
    p = torch.rand(len(shapes), generator=g, dtype=torch.float64).to(device, torch.float32 if dtype != torch.float64 else dtype)
    return olds, hs, p.requires_grad_()


def _grads(loss, inputs):
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def test_ops_registered_in_the_lmsrr_namespace():
    for name in ("msidf", "msidf_backward", "distill", "distill_backward"):
        assert hasattr(torch.ops.lmsrr, name)
    assert "lmsrr::msidf(Tensor x, Tensor[] weights" in str(torch.ops.lmsrr.msidf.default._schema)


@pytest.mark.parametrize("ks,M,x_grad", [((3, 5), 3, True), ((1, 3, 7), 4, False)])
def test_msidf_opcheck_cpu(ks, M, x_grad):
    x, ws, b, m = _msidf_inputs(ks=ks, M=M)
    x.requires_grad_(x_grad)
    torch.library.opcheck(torch.ops.lmsrr.msidf.default, (x, ws, b, m))
    # the backward ops have no backward of their own (no double backward): plain tensors
    g = torch.randn(x.shape[0], x.shape[2], dtype=x.dtype)
    d = [t.detach() for t in (x, *ws, b, m)]
    torch.library.opcheck(torch.ops.lmsrr.msidf_backward.default,
                          (g, d[0], d[1:-2], d[-2], d[-1], x_grad))


def test_distill_opcheck_cpu():
    olds, hs, p = _distill_inputs()
    torch.library.opcheck(torch.ops.lmsrr.distill.default, (olds, hs, p))
    loss, mse = torch.ops.lmsrr.distill(olds, hs, p)
    torch.library.opcheck(torch.ops.lmsrr.distill_backward.default,
                          (torch.tensor(1.5, dtype=loss.dtype), olds, [h.detach() for h in hs],
                           p.detach(), mse, loss.detach(), [True, False, True], True))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_msidf_op_matches_reference_autograd(dtype):
    x, ws, b, m = _msidf_inputs(B=4, D=29, ks=(3, 5, 1), M=4, dtype=dtype)
    ins = (x, *ws, b, m)
    out = torch.ops.lmsrr.msidf(x, ws, b, m)
    ref = msidf_reference(x, ws, b, m)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    for a, e in zip(_grads((out * g).sum(), ins), _grads((ref * g).sum(), ins)):
        torch.testing.assert_close(a, e)
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(
            lambda x, w0, w1, w2, b, m: torch.ops.lmsrr.msidf(x, [w0, w1, w2], b, m), ins)


def test_distill_op_matches_reference_autograd():
    olds, hs, p = _distill_inputs()
    ins = (*hs, p)
    loss = torch.ops.lmsrr.distill(olds, hs, p)[0]
    ref = distill_reference(olds, hs, p)
    torch.testing.assert_close(loss, ref)
    for a, e in zip(_grads(loss * 1.7, ins), _grads(ref * 1.7, ins)):
        torch.testing.assert_close(a, e)
    assert torch.autograd.gradcheck(
        lambda p, *h: torch.ops.lmsrr.distill(olds, list(h), p)[0], (p, *hs))
    # no selected layer: loss 0, zero gradients (the released code skips the term)
    z = torch.zeros_like(p, requires_grad=True)
    lz = torch.ops.lmsrr.distill(olds, hs, z)[0]
    assert lz.item() == 0.0 and all(g.abs().max() == 0 for g in _grads(lz, (*hs, z)))


class _Top(torch.nn.Module):
    """A small trainable top that calls both kernels through the public dispatch."""

    def __init__(self):
        super().__init__()
        _, ws, b, m = _msidf_inputs(dtype=torch.float32)
        self.ws = torch.nn.ParameterList([torch.nn.Parameter(w.detach()) for w in ws])
        self.b = torch.nn.Parameter(b.detach())
        self.m = torch.nn.Parameter(m.detach())
        self.p = torch.nn.Parameter(torch.tensor([0.2, 0.5, 0.3]))
        self.head = torch.nn.Linear(37, 5)

    def forward(self, x, olds):
        y = msidf(x, list(self.ws), self.b, self.m)
        feats = [y, torch.tanh(y), self.head(y)]
        return distill_loss(olds, feats, self.p) + self.head(y).square().mean()


def test_compile_fullgraph_through_the_dispatch_cpu():
    """No graph break around the kernels (fullgraph=True raises on one), same loss and gradients
    as eager; aot_eager runs AOT autograd over the ops without a C++ toolchain."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    top = _Top()
    x = torch.randn(3, 2, 37)
    olds = [torch.randn(3, 37), torch.randn(3, 37), torch.randn(3, 5)]
    eager = top(x, olds)
    ge = _grads(eager, list(top.parameters()))
    compiled = torch.compile(top, fullgraph=True, backend="aot_eager")
    out = compiled(x, olds)
    gc = _grads(out, list(top.parameters()))
    torch.testing.assert_close(out, eager)
    for a, e in zip(gc, ge):
        torch.testing.assert_close(a, e)
    torch._dynamo.reset()


# --- deterministic reductions (Triton kernels; the interpreter on CPU) ---------------------------

@pytest.mark.triton
def test_msidf_backward_bit_identical_across_runs(device, backend):
    backend("triton")
    x, ws, b, m = _msidf_inputs(B=9, D=70, dtype=torch.float32, device=device)
    ins = (x, *ws, b, m)
    g = torch.randn(9, 70, device=device)
    runs = [_grads((msidf(x, ws, b, m) * g).sum(), ins) for _ in range(3)]
    for other in runs[1:]:
        assert all(torch.equal(a, e) for a, e in zip(runs[0], other))
    backend("torch")
    ref = _grads((msidf_reference(x, ws, b, m) * g).sum(), ins)
    for a, e in zip(runs[0], ref):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


@pytest.mark.triton
def test_distill_forward_backward_bit_identical_and_chunked(device, backend):
    """Ten pairs: more than one launch's pointer slots (MAX_PAIRS), reduced in a fixed order."""
    backend("triton")
    shapes = [(3, 7), (5,), (2, 2, 3)] * 3 + [(11,)]
    olds, hs, p = _distill_inputs(shapes, dtype=torch.float32, device=device)
    runs = []
    for _ in range(3):
        loss = distill_loss(olds, hs, p)
        runs.append((loss.detach(), *_grads(loss, (*hs, p))))
    for other in runs[1:]:
        assert all(torch.equal(a, e) for a, e in zip(runs[0], other))
    ref = distill_reference(olds, hs, p)
    torch.testing.assert_close(runs[0][0], ref.detach())
    for a, e in zip(runs[0][1:], _grads(ref, (*hs, p))):
        torch.testing.assert_close(a, e)


@pytest.mark.triton
@pytest.mark.parametrize("cls,kw", [(MaskedAdamW, dict(lr=1e-2, weight_decay=0.1)),
                                    (MaskedSGD, dict(lr=1e-2, momentum=0.9))], ids=["adamw", "sgd"])
def test_masked_update_bit_identical_across_runs(cls, kw, device, backend):
    backend("triton")
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        groups = [[torch.nn.Parameter(torch.randn(130, device=device)),
                   torch.nn.Parameter(torch.randn(3, 5, device=device))] for _ in range(3)]
        opt = cls(groups, block_size=64, **kw)
        for it in range(3):
            for grp in groups:
                for q in grp:
                    q.grad.copy_(torch.randn_like(q))
            opt.step(gates=torch.tensor([1.0, float(it % 2), 1.0], device=device),
                     grad_scale=torch.tensor(2.0, device=device))
        results.append(opt.flat_buffers())
    assert results[0].keys() == results[1].keys()
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


# --- launch safety --------------------------------------------------------------------------------

@pytest.mark.triton
def test_scratch_content_never_read(device, backend, monkeypatch):
    """The old design kept a persistent counter that a partial launch left dirty. Now each call's
    scratch is fresh and every slot is written before it is read: poisoning it changes nothing."""
    backend("triton")
    x, ws, b, m = _msidf_inputs(B=5, D=33, dtype=torch.float32, device=device)
    olds, hs, p = _distill_inputs(dtype=torch.float32, device=device)
    ins = (x, *ws, b, m, *hs, p)

    def run():
        loss = (msidf(x, ws, b, m) ** 2).mean() + distill_loss(olds, hs, p)
        return (loss.detach(), *_grads(loss, ins))

    clean = run()
    monkeypatch.setattr(_util, "scratch",
                        lambda shape, dtype, dev: torch.empty(shape, dtype=dtype, device=dev).fill_(
                            float("nan") if dtype.is_floating_point else 7))
    poisoned = run()
    assert all(torch.equal(a, e) for a, e in zip(clean, poisoned))


@pytest.mark.triton
def test_interleaved_launches_share_no_state(device):
    """Two backward passes whose launches interleave (what two graph replays on two streams, or a
    launch aborted between its two halves, would do): each reduces only its own partials."""
    from kernels.msidf import triton as mt

    cases = [_msidf_inputs(B=4, D=40, dtype=torch.float32, device=device, seed=s) for s in (1, 2)]
    grads = [torch.randn(4, 40, device=device, generator=torch.Generator().manual_seed(s)) for s in (3, 4)]
    staged = []
    for (x, ws, b, m), g in zip(cases, grads):
        meta = mt._meta(x, ws, m)
        block_d, progs, rows = mt._bwd_plan(4, 40, meta, _util.num_sms(x.device))
        part = torch.full((progs * (meta["T_PAD"] * meta["S_PAD"] + 1),), float("nan"), device=device)
        dx = torch.empty_like(x)
        mt._msidf_bwd_kernel[(progs,)](x.detach(), g, *mt._slots([w.detach() for w in ws]), b.detach(),
                                       m.detach(), dx, part, 4, 40, m.numel(), rows,
                                       BLOCK_D=block_d, NEED_DX=True, num_warps=4, **meta)
        staged.append((meta, progs, part, dx))
    for (x, ws, b, m), g, (meta, progs, part, dx) in zip(cases, grads, staged):
        dws = [torch.empty_like(w) for w in ws]
        db, dm = torch.empty_like(b), torch.empty_like(m)
        mt._msidf_bwd_reduce_kernel[(1,)](part, *mt._slots([w.detach() for w in ws]), b.detach(),
                                          m.detach(), *mt._slots(dws), db, dm, progs, m.numel(),
                                          RED=mt._RED, num_warps=4, **meta)
        ref = _grads((msidf_reference(x, ws, b, m) * g).sum(), (x, *ws, b, m))
        for a, e in zip((dx, *dws, db, dm), ref):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_launches_happen_under_the_tensors_device():
    """Triton launches on the current device: a tensor on cuda:1 must make cuda:1 current."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        t = torch.empty(4, device="cuda:1")
    guard = _util.launch_guard(t)
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert not isinstance(_util.launch_guard(torch.empty(1)), torch.cuda.device)


def test_no_persistent_workspace_left():
    assert not hasattr(_util, "zeroed_workspace") and not hasattr(_util, "_workspaces")


# --- GPU ------------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_gpu_opcheck_and_compile_with_triton():
    x, ws, b, m = _msidf_inputs(B=32, D=768, dtype=torch.float32, device="cuda")
    torch.library.opcheck(torch.ops.lmsrr.msidf.default, (x, ws, b, m))
    olds, hs, p = _distill_inputs(((32, 197, 768),) * 3, dtype=torch.bfloat16, device="cuda")
    torch.library.opcheck(torch.ops.lmsrr.distill.default, (olds, hs, p))
    torch._dynamo.reset()
    top = _Top().cuda()
    xc = torch.randn(3, 2, 37, device="cuda")
    oc = [torch.randn(3, 37, device="cuda"), torch.randn(3, 37, device="cuda"), torch.randn(3, 5, device="cuda")]
    eager = top(xc, oc)
    out = torch.compile(top, fullgraph=True)(xc, oc)
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.gpu
def test_gpu_backward_bit_identical():
    x, ws, b, m = _msidf_inputs(B=256, D=768, dtype=torch.bfloat16, device="cuda")
    g = torch.randn(256, 768, device="cuda", dtype=torch.bfloat16)
    olds, hs, p = _distill_inputs(((32, 197, 768),) * 6, dtype=torch.bfloat16, device="cuda")
    ins = (x, *ws, b, m, *hs, p)

    def run():
        loss = (msidf(x, ws, b, m).float() * g).sum() + distill_loss(olds, hs, p)
        return _grads(loss, ins)

    first = run()
    for _ in range(5):
        assert all(torch.equal(a, e) for a, e in zip(first, run()))


@pytest.mark.gpu
def test_gpu_stress_10000_launches_each():
    """10,000 launches of each kernel, every 1,000th checked against its reference (the rest keep
    the GPU busy with back-to-back launches on shared allocator memory)."""
    x, ws, b, m = _msidf_inputs(B=32, D=768, dtype=torch.float32, device="cuda")
    olds, hs, p = _distill_inputs(((32, 197, 768),) * 6, dtype=torch.bfloat16, device="cuda")
    g = torch.randn(32, 768, device="cuda")
    ref_m = _grads((msidf_reference(x, ws, b, m) * g).sum(), (x, *ws, b, m))
    ref_d_loss = distill_reference(olds, hs, p)
    ref_d = _grads(ref_d_loss, (*hs, p))
    for i in range(10_000):
        gm = _grads((msidf(x, ws, b, m) * g).sum(), (x, *ws, b, m))
        dl = distill_loss(olds, hs, p)
        gd = _grads(dl, (*hs, p))
        if i % 1000 == 0:
            for a, e in zip(gm, ref_m):
                torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(dl, ref_d_loss, rtol=1e-3, atol=1e-5)
            for a, e in zip(gd, ref_d):
                torch.testing.assert_close(a.float(), e.float(), rtol=2e-2, atol=1e-5)
    torch.manual_seed(0)
    groups = [[torch.nn.Parameter(torch.randn(4096 * 3 + 5, device="cuda"))] for _ in range(4)]
    twins = [[torch.nn.Parameter(q.detach().clone()) for q in grp] for grp in groups]
    kernels.set_backend("triton")
    opt = MaskedAdamW(groups, lr=1e-3)
    kernels.set_backend("torch")
    ref = MaskedAdamW(twins, lr=1e-3)
    try:
        for i in range(10_000):
            gates = torch.tensor([1.0, float(i % 2), 1.0, float(i % 3 == 0)], device="cuda")
            for grp, tw in zip(groups, twins):
                grp[0].grad.copy_(torch.randn_like(grp[0]))
                tw[0].grad.copy_(grp[0].grad)
            kernels.set_backend("triton")
            opt.step(gates=gates)
            kernels.set_backend("torch")
            ref.step(gates=gates)
            if i % 1000 == 0:
                for k, v in opt.flat_buffers().items():
                    torch.testing.assert_close(v, ref.flat_buffers()[k], rtol=1e-5, atol=1e-6)
    finally:
        kernels.set_backend(None)
