"""ER, DER and DER++ against straightforward reimplementations of their papers' losses."""
import pytest
import torch
import torch.nn.functional as F

from method_helpers import first_batch, make_method, sgd_step


def fixed_draws(method, draws):
    """Make buffer.sample return the given (x, y, logits, task) tuples in order."""
    it = iter(draws)
    method.buffer.sample = lambda m: next(it)


def test_er_loss_is_one_cross_entropy_over_stream_and_replay(fast_cfg, stream):
    m = make_method(fast_cfg, stream, "er")
    b0 = first_batch(stream, 0, 12)
    out = sgd_step(m, b0)  # empty buffer: plain cross-entropy on the stream batch
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, b0.y))
    # The buffer keeps the un-augmented uint8 images and their labels.
    assert len(m.buffer) == 12 and m.buffer.x.dtype == torch.uint8
    assert torch.equal(m.buffer.x[:12], b0.x) and torch.equal(m.buffer.y[:12], b0.y)

    b1 = first_batch(stream, 1, 10)
    bx, by = stream.task(0).train_x[20:28], stream.task(0).train_y[20:28]
    fixed_draws(m, [(bx, by, None, None)])
    g = torch.Generator().manual_seed(5)
    m.stream = type("S", (), {"augment": staticmethod(lambda x: stream.augment(x, g))})()
    out = m.loss(b1)
    g.manual_seed(5)
    x_all = torch.cat([b1.x_aug, stream.augment(bx, g)])
    expected = F.cross_entropy(m.net(x_all), torch.cat([b1.y, by]))
    torch.testing.assert_close(out.loss, expected)
    assert out.logits.shape[0] == 10


def test_der_stores_the_logits_seen_at_insertion(fast_cfg, stream):
    m = make_method(fast_cfg, stream, "der")
    b = first_batch(stream, 0, 12)
    with torch.no_grad():
        seen = m.net(b.x_aug)  # the logits of this step's forward, before its update
    sgd_step(m, b, lr=0.5)
    with torch.no_grad():
        after = m.net(b.x_aug)
    assert not torch.allclose(seen, after, atol=1e-4)  # the step did change the network
    torch.testing.assert_close(m.buffer.logits[:12], seen, atol=1e-5, rtol=1e-5)
    assert torch.equal(m.buffer.x[:12], b.x)


def test_der_and_derpp_losses_equal_their_formulas(fast_cfg, stream):
    b = first_batch(stream, 1, 10)
    x1, y1 = stream.task(0).train_x[:8], stream.task(0).train_y[:8]
    x2, y2 = stream.task(0).train_x[8:14], stream.task(0).train_y[8:14]
    z1 = torch.randn(8, stream.n_classes)
    aug = lambda x: x.float() / 255  # deterministic "augmentation" so the truth can recompute it  # noqa: E731

    der = make_method(fast_cfg, stream, "der", der_alpha=0.7)
    der.buffer.add(x1, y1, z1)  # non-empty
    fixed_draws(der, [(x1, y1, z1, None)])
    der.stream = type("S", (), {"augment": staticmethod(aug)})()
    out = der.loss(b)
    net = der.net
    expected = F.cross_entropy(net(b.x_aug), b.y) + 0.7 * F.mse_loss(net(aug(x1)), z1)
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)

    dpp = make_method(fast_cfg, stream, "derpp", derpp_alpha=0.3, derpp_beta=0.9)
    dpp.buffer.add(x1, y1, z1)
    fixed_draws(dpp, [(x1, y1, z1, None), (x2, y2, torch.zeros(6, stream.n_classes), None)])
    dpp.stream = type("S", (), {"augment": staticmethod(aug)})()
    out = dpp.loss(b)
    net = dpp.net
    expected = (F.cross_entropy(net(b.x_aug), b.y) + 0.3 * F.mse_loss(net(aug(x1)), z1)
                + 0.9 * F.cross_entropy(net(aug(x2)), y2))
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)
    assert set(out.terms) == {"loss/ce", "loss/replay_logits", "loss/replay_labels"}


@pytest.mark.parametrize("name", ["der", "derpp"])
def test_shared_forward_equals_separate_forwards(fast_cfg, stream, name):
    """Without batch statistics, one forward over stream + replay gives the separate passes' loss
    and gradients (the default sources have LayerNorm only)."""
    m = make_method(fast_cfg, stream, name)
    x1, y1 = stream.task(0).train_x[:8], stream.task(0).train_y[:8]
    m.buffer.add(x1, y1, torch.randn(8, stream.n_classes))
    b = first_batch(stream, 1, 10)
    grads = []
    for shared in (True, False):
        torch.manual_seed(3)  # same replay draws and augmentation
        m.net.has_batch_stats = not shared
        loss = m.loss(b).loss
        m.net.zero_grad()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in m.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-5)
    for a, c in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)
