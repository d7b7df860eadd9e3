"""Every baseline trains two short tasks of seq-digits through the engine and evaluates."""
import math

import pytest
import torch

from method_helpers import BASELINES
from lmsrr.engine import Trainer
from lmsrr.evaluate import evaluate_seen_tasks
from lmsrr.methods import build_method


@pytest.mark.parametrize("name", BASELINES)
def test_two_short_tasks(fast_cfg, short_stream, name, monkeypatch):
    monkeypatch.setattr("lmsrr.engine.build_stream", lambda data_cfg, **_: short_stream)
    trainer = Trainer(fast_cfg.replace(method={"name": name}))
    method, net = trainer.method, trainer.net
    before = [p.detach().clone() for p in method.parameters()]
    # The switch vector belongs to LMSRR; the baselines train the network only.
    assert method.outside_parameters() == []
    assert len(method.parameters()) == sum(p.requires_grad for p in net.parameters())
    losses = []
    step = method.loss

    def recording_loss(batch):
        out = step(batch)
        losses.append(out.loss.detach())
        return out

    method.loss = recording_loss
    announced = []  # what the engine was told per task (progress bar, schedules)
    count = method.num_train_batches

    def recording_count(task, batch_size):
        announced.append(count(task, batch_size))
        return announced[-1]

    method.num_train_batches = recording_count
    for t in range(2):
        trainer.train_task(t)
        net.eval()
        cil, til = evaluate_seen_tasks(method, trainer.stream, t, trainer.device, 512, False)
        assert len(cil) == len(til) == t + 1
        assert all(0 <= c <= k <= 100 for c, k in zip(cil, til))  # task-IL restricts the argmax
    assert all(math.isfinite(float(v)) for v in losses)
    changed = any(not torch.equal(a, p) for a, p in zip(before, method.parameters()))
    if name == "nmc":
        assert not losses and not changed  # nothing is trained
        assert trainer.step == 0
    else:
        # train_batches yields exactly the announced number of batches per epoch.
        assert len(losses) == trainer.step == sum(announced) and changed

    # The method's state restores an equivalent method: same predictions on the same net.
    fresh = build_method(trainer.cfg, net, trainer.stream, trainer.device)
    fresh.load_state_dict(method.state_dict())
    fresh.begin_task(1)
    x = trainer.stream.augment(trainer.stream.task(1).test_x)
    torch.testing.assert_close(fresh.predict(x), method.predict(x))
