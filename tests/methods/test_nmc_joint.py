"""NMC's class means and nearest-mean prediction; joint's union of tasks."""
import torch

from method_helpers import make_method
from lmsrr.data.augment import to_float


def test_nmc_class_means_are_the_per_class_averages(fast_cfg, stream):
    m = make_method(fast_cfg, stream, "nmc")
    params = [p.detach().clone() for p in m.net.parameters()]
    for t in range(2):
        m.begin_task(t)
        assert list(m.train_batches(t, 32, torch.Generator())) == [] and m.num_train_batches(t, 32) == 0
        m.end_task(t)
    m.net.eval()
    for c in range(4):
        data = stream.task(c // 2)
        xc = to_float(data.train_x[data.train_y == c])
        with torch.no_grad():  # one class at a time, as a plain batch mean
            mean = m.net.fused_features(xc).mean(0)
        torch.testing.assert_close(m.means[c], mean, atol=1e-5, rtol=1e-5)
    assert m.has_mean.tolist() == [True] * 4 + [False] * 6

    x = to_float(stream.task(1).test_x[:24])
    with torch.no_grad():
        f = m.net.fused_features(x)
    nearest = torch.stack([(f - m.means[c]).norm(dim=1) for c in range(4)], 1).argmin(1)
    pred = m.predict(x)
    assert torch.equal(pred[:, :4].argmax(1), nearest)
    assert torch.isinf(pred[:, 4:]).all()
    # Nothing was trained.
    assert all(torch.equal(a, p) for a, p in zip(params, m.net.parameters()))


def test_joint_trains_on_every_task_seen_so_far(fast_cfg, stream):
    m = make_method(fast_cfg, stream, "joint")
    for t in (0, 2):
        batches = list(m.train_batches(t, 50, torch.Generator().manual_seed(t)))
        assert len(batches) == m.num_train_batches(t, 50)
        xs = torch.cat([x for x, _, _ in batches])
        ys = torch.cat([y for _, _, y in batches])
        union = [stream.task(k) for k in range(t + 1)]
        want_x = torch.cat([d.train_x for d in union])
        want_y = torch.cat([d.train_y for d in union])
        # Every sample of tasks 0..t exactly once: compare as sorted multisets of (label, image).
        key = lambda x, y: sorted(zip(y.tolist(), x.flatten(1).tolist()))  # noqa: E731
        assert key(xs, ys) == key(want_x, want_y)
        assert set(ys.tolist()) == set(range(2 * (t + 1)))
        assert all(xa.dtype == torch.float32 and xa.shape == x.shape for x, xa, _ in batches)
