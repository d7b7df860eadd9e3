"""A-GEM's projection, EWC's Fisher and penalty, SI's path integral, against independent truth."""
import pytest
import torch
import torch.nn.functional as F

from method_helpers import first_batch, make_method, sgd_step
from lmsrr.methods.agem import project


def flat(ts):
    return torch.cat([t.flatten() for t in ts])


# ---------------------------------------------------------------- A-GEM
@pytest.mark.parametrize("seed", range(5))
def test_agem_projection_property(seed):
    g = torch.Generator().manual_seed(seed)
    ref = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    grad = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    # Make them conflict: flip grad if needed so that g . ref < 0.
    if flat(grad) @ flat(ref) > 0:
        grad = [-t for t in grad]
    out = project(grad, ref)
    gf, rf, of = flat(grad), flat(ref), flat(out)
    assert of @ rf >= -1e-5  # non-negative dot product with the reference (zero, up to rounding)
    torch.testing.assert_close(of, gf - (gf @ rf) / (rf @ rf) * rf)  # the paper's formula
    # When they already agree, the gradient is returned unchanged.
    agree = [-t for t in grad]
    for a, b in zip(project(agree, ref), agree):
        assert torch.equal(a, b)


def test_agem_memory_holds_earlier_tasks_and_the_step_respects_it(fast_cfg, stream):
    m = make_method(fast_cfg, stream, "agem", buffer_size=40, replay_batch_size=16)
    b0 = first_batch(stream, 0, 16)
    m.begin_task(0)
    sgd_step(m, b0)
    assert m.buffer.is_empty()  # the memory only ever holds finished tasks
    m.end_task(0)
    assert len(m.buffer) == 40 and set(m.buffer.y[:40].tolist()) == {0, 1}
    m.begin_task(1)

    # Capture the reference gradient the method computes, and the gradient before projection.
    refs, raw = [], []
    ref_fn = m.reference_gradient
    m.reference_gradient = lambda: refs.append(ref_fn()) or refs[-1]
    b1 = first_batch(stream, 1, 16)
    out = m.loss(b1)
    for p in m.parameters():
        p.grad = None
    out.loss.backward()
    raw = [p.grad.clone() for p in m.parameters()]
    m.after_backward(b1, out)
    got = flat([p.grad for p in m.parameters()])
    r, g = flat(refs[0]), flat(raw)
    assert got @ r >= -1e-4 * float(r.norm() * got.norm())
    expected = g if g @ r >= 0 else g - (g @ r) / (r @ r) * r
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- EWC
def test_ewc_fisher_is_the_mean_squared_per_sample_gradient(fast_cfg, stream):
    m = make_method(fast_cfg, stream, "ewc")
    # A small task keeps the loop truth cheap: the first 6 images of task 0.
    data = stream.task(0)
    small = type(data)(0, data.classes, data.train_x[:6], data.train_y[:6], data.test_x, data.test_y)

    def train_images(task, batch_size, device, shard_id=0, num_shards=1):
        # Two uneven batches: the estimate must add up across batches.
        yield small.train_x[:4], small.train_y[:4]
        yield small.train_x[4:], small.train_y[4:]

    m.stream = type("S", (), {"train_images": staticmethod(train_images)})()
    fisher = m.task_fisher(0)
    params = m.parameters()
    truth = [torch.zeros_like(p) for p in params]
    m.net.eval()
    for i in range(6):
        x = small.train_x[i : i + 1].float() / 255
        loglik = F.log_softmax(m.net(x), 1)[0, small.train_y[i]]
        grads = torch.autograd.grad(loglik, params, allow_unused=True)
        for t, gr in zip(truth, grads):
            if gr is not None:
                t += gr.square() / 6
    for f, t in zip(fisher, truth):
        torch.testing.assert_close(f, t, atol=1e-7, rtol=1e-4)
    assert sum(float(f.sum()) for f in fisher) > 0


def test_ewc_penalty_is_zero_at_the_anchor_and_online_fisher_decays(fast_cfg, stream):
    m = make_method(fast_cfg, stream, "ewc", ewc_lambda=10.0, ewc_gamma=0.5)
    f0 = [torch.rand_like(p) for p in m.parameters()]
    f1 = [torch.rand_like(p) for p in m.parameters()]
    fishers = iter([f0, f1])
    m.task_fisher = lambda task: next(fishers)
    m.end_task(0)
    penalty = m.penalty()
    assert float(penalty.detach()) == 0.0
    grads = torch.autograd.grad(penalty, m.parameters(), allow_unused=True)
    assert all(g is None or float(g.abs().max()) == 0.0 for g in grads)

    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1)
    expected = sum(float((f * 0.01).sum()) for f in f0)
    assert float(m.penalty().detach()) == pytest.approx(expected, rel=1e-4)
    b = first_batch(stream, 1, 8)
    out = m.loss(b)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, b.y) + 0.5 * 10.0 * m.penalty())

    m.end_task(1)  # F <- gamma * F + F_t, anchor moves to the current parameters
    for f, a, b_ in zip(m.fisher, f0, f1):
        torch.testing.assert_close(f, 0.5 * a + b_)
    assert float(m.penalty().detach()) == 0.0


# ---------------------------------------------------------------- SI
def test_si_path_integral_and_importance(fast_cfg, stream):
    lr, xi, c = 0.1, 0.01, 2.0
    m = make_method(fast_cfg, stream, "si", si_xi=xi, si_c=c)
    m.begin_task(0)
    params = m.parameters()
    b = first_batch(stream, 0, 8)
    out = m.loss(b)
    grads = torch.autograd.grad(out.loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    sgd_step(m, b, lr=lr)
    # Plain SGD: delta = -lr * g, so -g * delta = lr * g^2.
    for w, g in zip(m.w, grads):
        torch.testing.assert_close(w, lr * g.square(), atol=1e-9, rtol=1e-4)
    start = [p.detach().clone() for p in m.start]
    sgd_step(m, first_batch(stream, 0, 8, seed=1), lr=lr)
    w = [t.clone() for t in m.w]
    m.end_task(0)
    for o, w_, p, s in zip(m.omega, w, params, start):
        torch.testing.assert_close(o, w_ / ((p.detach() - s) ** 2 + xi))
    assert float(m.penalty().detach()) == 0.0  # at the anchor
    with torch.no_grad():
        for p in params:
            p.add_(0.05)
    m.begin_task(1)
    assert all(float(t.abs().max()) == 0 for t in m.w)  # w restarts every task
    b1 = first_batch(stream, 1, 8)
    out = m.loss(b1)
    expected_pen = sum(float((o * 0.0025).sum()) for o in m.omega)
    assert float(out.terms["loss/si"].detach()) == pytest.approx(expected_pen, rel=1e-3)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, b1.y) + c * out.terms["loss/si"])
