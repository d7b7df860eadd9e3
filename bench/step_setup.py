"""One setup for the training-step benchmark and the profiler: a LMSRR step on a later task
(distillation and replay on), as the released code's four passes or as ours (eager / compiled).

Sizes: on a GPU, 2 x ViT-B/16 at 224 (the released code's sources, random weights: timing does
not depend on them) in bf16; on CPU, the default job's two tiny sources.
"""
from __future__ import annotations

import copy

import torch

from lmsrr.config import PAPER_SOURCES, Config
from lmsrr.methods import Batch, build_method
from lmsrr.models import TrainableTop, build_net
from lmsrr.released import released_loss
from lmsrr.synthetic import synthetic_stream

PROVIDERS = ("released", "eager", "compile")


def step_config(gpu: bool) -> Config:
    # Random weights either way: timing does not depend on them, and the paper's sources have no
    # built-in weights.
    model = {"sources": PAPER_SOURCES, "msidf": "reference"} if gpu else {}
    model["pretrained"] = "none"
    return Config().replace(model=model, method={"alpha": 0.3, "beta": 0.2},
                            log={"progress": False})


def setup_step(provider: str, batch: int, device: torch.device, precision: str = "fp32"):
    """Return (step_fn, images_per_step). step_fn runs forward, backward and an SGD step."""
    gpu = device.type == "cuda"
    if not gpu:
        torch.set_flush_denormal(True)  # as the trainer does on CPU (see lmsrr/engine.py)
    cfg = step_config(gpu)
    stream = synthetic_stream()
    torch.manual_seed(0)
    net = build_net(cfg.model, stream.n_classes).to(device).train()
    method = build_method(cfg, net, stream, device)
    method.begin_task(0)
    method.begin_task(1)  # a later task: the old blocks exist, distillation is on
    old_net = copy.deepcopy(net)  # the released code keeps a whole second network
    data = stream.task(1)
    x_u8 = data.train_x[:batch].repeat(-(-batch // len(data.train_x)), 1, 1, 1)[:batch].to(device)
    y = data.train_y[:batch].repeat(-(-batch // len(data.train_y)))[:batch].to(device)
    x = stream.augment(x_u8)
    buf_x = stream.augment(x_u8.flip(0))
    buf_logits = torch.randn(batch, stream.n_classes, device=device)
    method._replay_inputs = lambda: (buf_x, buf_logits)  # same replay batch for every provider
    opt = torch.optim.SGD(method.parameters(), lr=1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if provider == "compile":
        method.bind_top(torch.compile(TrainableTop(net)))
    batch_obj = Batch(x=x_u8, x_aug=x, y=y, task=1)

    def forward():
        if provider == "released":
            noise = method.switch.sample_noise()
            return released_loss(net, old_net, method.switch, 1, x, y, buf_x, buf_logits, noise,
                                 method.alpha, method.beta)
        return method.loss(batch_obj).loss

    def step():
        if dtype is not None:
            with torch.autocast(device.type, dtype=dtype):
                loss = forward()
        else:
            loss = forward()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, batch
