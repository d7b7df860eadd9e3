"""LwF and iCaRL: targets from the previous model, herding, nearest mean of exemplars."""
import copy

import torch
import torch.nn.functional as F

from method_helpers import first_batch, make_method, sgd_step
from lmsrr.data.augment import to_float
from lmsrr.methods.common import soft_cross_entropy
from lmsrr.methods.icarl import herding


def perturb(net, scale=0.05):
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))


def test_lwf_target_is_the_previous_models_output(fast_cfg, stream):
    m = make_method(fast_cfg, stream, "lwf", lwf_alpha=0.8, lwf_temperature=2.0)
    perturb(m.net)
    m.begin_task(1)
    previous = copy.deepcopy(m.net)  # the whole network as the task began
    b = first_batch(stream, 1, 12)
    for _ in range(2):  # the network moves away from the previous model...
        sgd_step(m, b, lr=0.2)
    zs = m.net.prefix(b.x_aug)
    with torch.no_grad():
        target = previous(b.x_aug)
        current = m.net(b.x_aug)
    assert not torch.allclose(current, target, atol=1e-3)
    # ...but the distillation target stays the previous model's output.
    torch.testing.assert_close(m.old_logits(zs), target, atol=1e-5, rtol=1e-5)

    # The loss: CE over the current task's classes + alpha * soft CE over the old classes.
    out = m.loss(b)
    expected = (F.cross_entropy(current[:, 2:4], b.y - 2)
                + 0.8 * soft_cross_entropy(target[:, :2], current[:, :2], 2.0))
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)


def test_soft_cross_entropy_is_kl_plus_target_entropy():
    t, s = torch.randn(5, 4), torch.randn(5, 4)
    p = torch.softmax(t / 3, 1)
    kl = F.kl_div(F.log_softmax(s / 3, 1), p, reduction="batchmean")
    entropy = -(p * p.log()).sum(1).mean()
    torch.testing.assert_close(soft_cross_entropy(t, s, 3.0), kl + entropy)


def brute_force_herding(feats, m):
    """The textbook loop: at step k try every unchosen row, keep the one whose inclusion puts the
    mean of the chosen rows closest to the class mean."""
    mu = feats.mean(0)
    chosen = []
    for _ in range(m):
        best, best_d = None, float("inf")
        for i in range(feats.shape[0]):
            if i in chosen:
                continue
            d = float((mu - feats[chosen + [i]].mean(0)).norm())
            if d < best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def test_herding_picks_the_exemplars_whose_running_mean_is_closest():
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(30, 6, generator=g, dtype=torch.float64), dim=1)
    got = herding(feats, 8).tolist()
    assert got == brute_force_herding(feats, 8)
    assert len(set(got)) == 8
    # The first exemplar is the single feature closest to the mean.
    assert got[0] == int((feats - feats.mean(0)).norm(dim=1).argmin())
    assert herding(feats, 50).shape[0] == 30  # never more than the class has


def test_icarl_memory_means_and_prediction(fast_cfg, stream):
    m = make_method(fast_cfg, stream, "icarl", buffer_size=20)
    perturb(m.net)
    m.begin_task(0)
    m.end_task(0)
    assert {c: x.shape[0] for c, x in m.exemplars.items()} == {0: 10, 1: 10}  # 20 // 2
    m.begin_task(1)
    m.end_task(1)
    # 20 // 4 classes = 5 per class; old lists are cut to their herding prefix.
    assert {c: x.shape[0] for c, x in m.exemplars.items()} == {0: 5, 1: 5, 2: 5, 3: 5}
    # Exemplars are positions into the training split: class 2's are its herding picks.
    split, _ = stream.train_split(1)
    where = torch.nonzero(split.y == 2).flatten()
    m.net.eval()
    with torch.no_grad():
        feats = F.normalize(m.net.fused_features(to_float(split.x[where])), dim=1)
    assert torch.equal(m.exemplars[2], where[brute_force_herding(feats.double(), 5)])
    assert all((split.y[m.exemplars[c]] == c).all() for c in range(4))

    # Nearest mean of exemplars, recomputed independently.
    means = []
    for c in range(4):
        with torch.no_grad():
            f = F.normalize(m.net.fused_features(to_float(split.x[m.exemplars[c]])), dim=1)
        means.append(F.normalize(f.mean(0), dim=0))
    means = torch.stack(means)
    x = stream.augment(stream.task(1).test_x[:20])
    m.net.eval()
    f = F.normalize(m.net.fused_features(x), dim=1)
    expected = torch.stack([((f - mu) ** 2).sum(1) for mu in means], 1).argmin(1)
    pred = m.predict(x)
    assert torch.equal(pred[:, :4].argmax(1), expected)
    assert torch.isinf(pred[:, 4:]).all()  # classes without exemplars are never predicted


def test_icarl_targets_distil_old_classes_and_one_hot_the_new(fast_cfg, stream):
    m = make_method(fast_cfg, stream, "icarl")
    perturb(m.net)
    m.begin_task(1)
    previous = copy.deepcopy(m.net)
    perturb(m.net)  # the current network differs from the previous one
    b = first_batch(stream, 1, 6)
    zs = m.net.prefix(b.x_aug)
    target = m.targets(zs, b.y, 1)
    with torch.no_grad():
        old = torch.sigmoid(previous(b.x_aug))
    assert target.shape == (6, 4)
    torch.testing.assert_close(target[:, :2], old[:, :2], atol=1e-5, rtol=1e-5)
    assert torch.equal(target[:, 2:], F.one_hot(b.y - 2, 2).float())
    out = m.loss(b)
    with torch.no_grad():
        expected = F.binary_cross_entropy_with_logits(m.net(b.x_aug)[:, :4], target)
    torch.testing.assert_close(out.loss.detach(), expected, atol=1e-5, rtol=1e-5)
