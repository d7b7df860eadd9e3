"""Helpers shared by the method tests (fixtures are in conftest.py)."""
import torch

from lmsrr.config import Config
from lmsrr.methods import build_method
from lmsrr.models import build_net

BASELINES = ["finetune", "joint", "er", "der", "derpp", "lwf", "icarl", "agem", "ewc", "si", "nmc"]


def make_method(cfg: Config, stream, name: str, **method):
    """A method of ``name`` on a fresh network (CPU), with MethodConfig overrides."""
    cfg = cfg.replace(method={"name": name, **method})
    net = build_net(cfg.model, stream.n_classes)
    net.train()
    return build_method(cfg, net, stream, torch.device("cpu"))


def first_batch(stream, task: int, n: int = 16, seed: int = 0):
    """Task ``task``'s first n training images: (uint8 x, augmented x, y)."""
    from lmsrr.methods import Batch

    data = stream.task(task)
    x, y = data.train_x[:n], data.train_y[:n]
    g = torch.Generator().manual_seed(seed)
    return Batch(x=x, x_aug=stream.augment(x, g), y=y, task=task)


def sgd_step(method, batch, lr: float = 0.05):
    """One training step the way the engine runs it (loss, backward, hooks, plain SGD)."""
    opt = torch.optim.SGD(method.parameters(), lr=lr)
    out = method.loss(batch)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    method.after_backward(batch, out)
    opt.step()
    method.after_step(batch, out)
    return out
