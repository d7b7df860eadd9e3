"""msidf: reference vs. the formula, gradcheck, Triton vs. reference forward and backward."""
import logging

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels.msidf import msidf
from kernels.msidf.reference import msidf as msidf_reference


def _inputs(B, S, D, ks, M, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, S, D, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    ws = [torch.randn(S, k, generator=g, dtype=torch.float64).to(device=device, dtype=dtype) for k in ks]
    b = torch.randn(len(ks), generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    m = torch.randn(M, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return [t.requires_grad_() for t in (x, *ws, b, m)]


def _split(ts, n):
    x, rest = ts[0], ts[1:]
    return x, rest[:n], rest[n], rest[n + 1]


def _naive(x, ws, b, m):
    """The docstring formula written as loops (independent of conv1d's conventions)."""
    B, S, D = x.shape
    mix = torch.softmax(m, 0)
    out = torch.zeros(B, D, dtype=x.dtype)
    for i, w in enumerate(ws):
        k = w.shape[1]
        p = (k - 1) // 2
        for d in range(D):
            acc = b[i].expand(B).clone()
            for j in range(k):
                src = d + j - p
                if 0 <= src < D:
                    acc = acc + (w[:, j] * x[:, :, src]).sum(1)
            out[:, d] += mix[i] * acc
    return out


def test_reference_matches_formula():
    ts = _inputs(3, 2, 9, (3, 5, 1), 4, torch.float64)
    x, ws, b, m = _split(ts, 3)
    torch.testing.assert_close(msidf_reference(x, ws, b, m), _naive(x, ws, b, m))


def test_reference_released_configuration_m3_n2():
    # the released code: softmax over 3 logits, only the first 2 mix the k=3 and k=5 branches
    ts = _inputs(2, 2, 8, (3, 5), 3, torch.float64)
    x, ws, b, m = _split(ts, 2)
    w = torch.softmax(m, 0)
    expect = w[0] * (F.conv1d(x, ws[0][None], b[:1], padding=1)[:, 0]) + w[1] * (
        F.conv1d(x, ws[1][None], b[1:2], padding=2)[:, 0])
    torch.testing.assert_close(msidf_reference(x, ws, b, m), expect)


@pytest.mark.parametrize("shape", [(2, 3, 7, (1, 3, 5), 4), (2, 2, 4, (3, 5), 3), (1, 1, 3, (7,), 1)])
def test_reference_gradcheck(shape):
    B, S, D, ks, M = shape
    ts = _inputs(B, S, D, ks, M, torch.float64)
    n = len(ks)
    assert torch.autograd.gradcheck(lambda *a: msidf_reference(*_split(list(a), n)), ts)


SHAPES = [
    (3, 2, 37, (3, 5), 3),      # released configuration, irregular width
    (2, 3, 9, (1, 7, 3), 4),    # three branches, unsorted sizes, M > n + 1
    (5, 1, 4, (5,), 1),         # one source, one branch, kernel wider than half the row
    (1, 2, 2, (3, 5), 3),       # width smaller than the widest kernel
    (2, 2, 600, (3, 5), 3),     # several column blocks in the backward
    (7, 5, 11, (9, 3), 2),      # non-power-of-two source count, wide kernel
]


@pytest.mark.triton
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:3])) + f"-k{s[3]}-M{s[4]}")
def test_triton_matches_reference(shape, device, backend):
    B, S, D, ks, M = shape
    n = len(ks)
    ts_ref = _inputs(B, S, D, ks, M, device=device)
    ts_tri = [t.detach().clone().requires_grad_() for t in ts_ref]
    backend("torch")
    out_ref = msidf(*_split(ts_ref, n))
    backend("triton")
    out_tri = msidf(*_split(ts_tri, n))
    torch.testing.assert_close(out_tri, out_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out_ref)
    grads_ref = torch.autograd.grad(out_ref, ts_ref, g)
    grads_tri = torch.autograd.grad(out_tri, ts_tri, g)
    names = ["x"] + [f"w{i}" for i in range(n)] + ["b", "m"]
    for name, a, r in zip(names, grads_tri, grads_ref):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4, msg=lambda s: f"d{name}: {s}")


@pytest.mark.triton
def test_triton_backward_twice_and_without_input_grad(device, backend):
    # the backward's cross-program workspace must be left zeroed for the next call
    backend("triton")
    ts = _inputs(4, 2, 33, (3, 5), 3, device=device)
    x, ws, b, m = _split(ts, 2)
    x.requires_grad_(False)
    first = torch.autograd.grad(msidf(x, ws, b, m).square().sum(), [*ws, b, m])
    second = torch.autograd.grad(msidf(x, ws, b, m).square().sum(), [*ws, b, m])
    for a, c in zip(first, second):
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-6)
    ref = torch.autograd.grad(msidf_reference(x, ws, b, m).square().sum(), [*ws, b, m])
    for a, r in zip(first, ref):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


@pytest.mark.triton
def test_triton_half_input_accumulates_in_float32(device, backend):
    backend("triton")
    ts = _inputs(2, 2, 19, (3, 5), 3, dtype=torch.float16, device=device)
    x, ws, b, m = _split(ts, 2)
    out = msidf(x, ws, b, m)
    assert out.dtype == torch.float16
    ref = msidf_reference(*[t.detach().double() for t in (x,)], [w.detach().double() for w in ws],
                          b.detach().double(), m.detach().double())
    torch.testing.assert_close(out.double(), ref, rtol=2e-3, atol=2e-3)


def test_auto_backend_on_cpu_uses_reference(caplog, backend):
    backend("auto")
    kernels.dispatch._logged.discard(("msidf", "torch"))
    ts = _inputs(2, 2, 5, (3, 5), 3)
    with caplog.at_level(logging.INFO, logger="lmsrr.kernels"):
        out = msidf(*_split(ts, 2))
    torch.testing.assert_close(out, msidf_reference(*_split(ts, 2)))
    assert any("msidf: torch backend (tensors on cpu)" in r.getMessage() for r in caplog.records)


def test_rejects_bad_arguments(backend):
    backend("torch")
    x, ws, b, m = _split(_inputs(1, 2, 5, (3, 5), 3), 2)
    backend("triton")
    with pytest.raises(ValueError):
        msidf(x, ws, b, m[:1])          # fewer logits than branches
    with pytest.raises(ValueError):
        msidf(x, ws, b[:1], m)          # one bias per branch


@pytest.mark.gpu
@pytest.mark.parametrize("B", [32, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_real_size(B, dtype, backend):
    ts = _inputs(B, 2, 768, (3, 5), 3, dtype=dtype, device="cuda")
    ts32 = [t.detach().float().requires_grad_() for t in ts]
    backend("triton")
    out = msidf(*_split(ts, 2))
    ref = msidf_reference(*_split(ts32, 2))
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, ts, g.to(out.dtype))
    want = torch.autograd.grad(ref, ts32, g)
    for a, r in zip(got, want):
        scale = r.abs().max().clamp_min(1.0)
        assert ((a.float() - r).abs().max() / scale) < (1e-4 if dtype == torch.float32 else 3e-2)
