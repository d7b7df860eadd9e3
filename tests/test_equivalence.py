"""Our single-prefix-pass LMSRR step computes the released code's loss and gradients."""
import copy

import pytest
import torch

from lmsrr.data import build_stream
from lmsrr.methods import Batch, build_method
from lmsrr.models import build_net
from lmsrr.released import released_loss


def _grads(net, method):
    """Every trained parameter's gradient: the network's and the method's own (the switch)."""
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in net.named_parameters()
             if p.requires_grad}
    for n, p in method.switch.named_parameters():
        grads[f"switch.{n}"] = None if p.grad is None else p.grad.clone()
    return grads


def _zero_grads(net, method):
    net.zero_grad()
    method.switch.zero_grad()


@pytest.mark.parametrize("variant", ["reference", "attention"])
@pytest.mark.parametrize("task", [0, 2])
@pytest.mark.parametrize("shared_forward", [True, False])
def test_loss_and_gradients_match_released_step(tiny_cfg, variant, task, shared_forward):
    cfg = tiny_cfg.replace(model={"msidf": variant}, method={"alpha": 0.3, "beta": 0.2})
    stream = build_stream(cfg.data)
    net = build_net(cfg.model, stream.n_classes)
    # Move the weights away from initialisation so attention and mixing are not uniform.
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    net.train()
    method = build_method(cfg, net, stream, torch.device("cpu"))
    method.begin_task(task)
    old_net = copy.deepcopy(net)  # the released code's old model: a full copy at task start
    if task > 0:
        # Let the current blocks drift from the snapshot so distillation is non-zero.
        with torch.no_grad():
            for s in net.sources:
                for b in s.blocks:
                    for p in b.parameters():
                        p.add_(0.02 * torch.randn_like(p))
        old_net.load_state_dict(net.state_dict())
        for s_old, blocks in zip(old_net.sources, method.old_blocks):
            for b_old, b_snap in zip(s_old.blocks, blocks):
                b_old.load_state_dict(b_snap.state_dict())
    net.has_batch_stats = not shared_forward  # forces separate stream / replay forwards

    data = stream.task(task)
    x_u8, y = data.train_x[:12], data.train_y[:12]
    x = stream.augment(x_u8)
    buf_x = stream.augment(stream.task(0).train_x[:9])
    buf_logits = torch.randn(9, stream.n_classes)
    noise = method.switch.sample_noise()
    method._replay_inputs = lambda: (buf_x, buf_logits)

    ours = method.loss(Batch(x=x_u8, x_aug=x, y=y, task=task), noise=noise).loss
    _zero_grads(net, method)
    ours.backward()
    g_ours = _grads(net, method)

    ref = released_loss(net, old_net, method.switch, task, x, y, buf_x, buf_logits, noise, 0.3, 0.2)
    _zero_grads(net, method)
    ref.backward()
    g_ref = _grads(net, method)

    assert torch.allclose(ours, ref, atol=1e-5, rtol=0), (ours.item(), ref.item())
    assert g_ours.keys() == g_ref.keys()
    checked = 0
    for name in g_ref:
        a, b = g_ours[name], g_ref[name]
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
            checked += 1
    assert checked > 20
    if task > 0:  # the switch vector is trained by the distillation term
        assert g_ours["switch.logits"] is not None and g_ours["switch.logits"].abs().sum() > 0
