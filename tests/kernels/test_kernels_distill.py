"""distill_loss: reference gradcheck and semantics, Triton vs. reference forward and backward."""
import pytest
import torch

from kernels.distill import distill_loss
from kernels.distill.reference import distill_loss as distill_reference

# ViT-like token maps, CNN-like feature maps, and odd sizes that do not fill a block
SHAPES = [(2, 5, 7), (2, 3, 4, 4), (11,), (1,), (3, 197, 8)]


def _pairs(shapes, dtype=torch.float32, device="cpu", seed=0, p=None):
    g = torch.Generator().manual_seed(seed)
    old = [torch.randn(s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype) for s in shapes]
    new = [(o.double() + 0.5 * torch.randn(s, generator=g, dtype=torch.float64).to(device))
           .to(dtype).requires_grad_() for o, s in zip(old, shapes)]
    if p is None:
        p = torch.rand(len(shapes), generator=g, dtype=torch.float64)
    p = torch.as_tensor(p, dtype=torch.float64).to(device=device, dtype=torch.float32).requires_grad_()
    return old, new, p


def test_reference_formula():
    old, new, p = _pairs(SHAPES)
    mses = [((a - b) ** 2).mean() for a, b in zip(old, new)]
    expect = sum(pi * m for pi, m in zip(p, mses)) / p.sum()
    torch.testing.assert_close(distill_reference(old, new, p), expect)


def test_reference_gradcheck():
    old, new, p = _pairs([(2, 3), (4,), (1, 2, 2)], dtype=torch.float64)
    p = p.detach().double().requires_grad_()
    assert distill_reference(old, new, p).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda pp, *hs: distill_reference(old, list(hs), pp), (p, *new))


def test_reference_no_gradient_to_old_and_zero_weights():
    old, new, _ = _pairs(SHAPES)
    old = [o.requires_grad_() for o in old]
    p = torch.zeros(len(SHAPES), requires_grad=True)
    loss = distill_reference(old, new, p)
    assert loss.item() == 0.0 and loss.dtype == torch.float32
    loss.backward()
    assert all(o.grad is None for o in old)
    assert all(torch.count_nonzero(h.grad) == 0 for h in new)


CASES = {
    "random-p": dict(p=None),
    "some-zero": dict(p=[0.0, 1.0, 0.0, 2.0, 0.5]),
    "all-zero": dict(p=[0.0] * 5),
}


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_triton_matches_reference(case, dtype, device, backend):
    old, new, p = _pairs(SHAPES, dtype=dtype, device=device, **CASES[case])
    new2 = [h.detach().clone().requires_grad_() for h in new]
    p2 = p.detach().clone().requires_grad_()
    backend("torch")
    ref = distill_loss(old, new, p)
    backend("triton")
    got = distill_loss(old, new2, p2)
    assert got.dtype == torch.float32 and got.shape == ()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    g_ref = torch.autograd.grad(ref * 3.0, [p, *new])
    g_got = torch.autograd.grad(got * 3.0, [p2, *new2])
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-3, atol=1e-5)
    for a, r in zip(g_got, g_ref):
        assert a.dtype == r.dtype
        torch.testing.assert_close(a, r, **tol)


@pytest.mark.triton
def test_triton_old_gets_no_grad_noncontiguous_and_deterministic(device, backend):
    backend("triton")
    old, new, p = _pairs([(4, 6, 5), (3, 8)], device=device)
    old = [o.requires_grad_() for o in old]
    new_t = [new[0].transpose(0, 2), new[1].t()]      # non-contiguous views
    old_t = [old[0].transpose(0, 2), old[1].t()]
    l1 = distill_loss(old_t, new_t, p)
    l2 = distill_loss(old_t, new_t, p)
    assert torch.equal(l1, l2)                          # fixed-order reduction
    l1.backward()
    assert all(o.grad is None for o in old)
    ref_new = [h.detach().clone().requires_grad_() for h in new]
    ref = distill_reference(old_t, [ref_new[0].transpose(0, 2), ref_new[1].t()], p.detach())
    ref.backward()
    torch.testing.assert_close(l1, ref)
    for a, r in zip(new, ref_new):
        torch.testing.assert_close(a.grad, r.grad)


@pytest.mark.triton
def test_triton_without_p_grad(device, backend):
    backend("triton")
    old, new, p = _pairs(SHAPES[:2], device=device)
    loss = distill_loss(old, new, p.detach())
    loss.backward()
    ref_new = [h.detach().clone().requires_grad_() for h in new]
    distill_reference(old, ref_new, p.detach()).backward()
    for a, r in zip(new, ref_new):
        torch.testing.assert_close(a.grad, r.grad)


def test_rejects_mismatched_inputs(backend):
    old, new, p = _pairs(SHAPES[:2])
    for name in ("torch", "triton"):
        backend(name)
        with pytest.raises(ValueError):
            distill_loss(old, new, p[:1])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_real_size(dtype, backend):
    shapes = [(32, 197, 768)] * 6                       # 2 sources x 3 layers
    old, new, p = _pairs(shapes, dtype=dtype, device="cuda")
    backend("triton")
    got = distill_loss(old, new, p)
    ref_new = [h.detach().clone().requires_grad_() for h in new]
    p_ref = p.detach().clone().requires_grad_()
    ref = distill_reference(old, ref_new, p_ref)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    got.backward()
    ref.backward()
    torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-3, atol=1e-7)
    for a, r in zip(new, ref_new):
        torch.testing.assert_close(a.grad.float(), r.grad.float(), rtol=1e-2, atol=1e-9)
