"""ewc: online elastic weight consolidation (Schwarz et al., "Progress & Compress", ICML 2018).

    L = CE(f(x), y) + (lambda / 2) * sum_i F_i (theta_i - theta*_i)^2        lambda = --ewc-lambda

At each task's end: the (empirical) Fisher of the task, the mean over its training samples of the
squared per-sample gradient of the log-likelihood of the true label,
    F_t = mean_n ( grad_theta log p(y_n | x_n) )^2,
is folded into the running Fisher, F <- gamma * F + F_t (gamma = --ewc-gamma), and the anchor
theta* becomes the current parameters. Per-sample gradients come from one vmapped pass per chunk
(torch.func), on the un-augmented training data in eval mode.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

import kernels.dispatch as dispatch
from lmsrr import distributed
from lmsrr.data.augment import to_float
from lmsrr.fields import check, option, validate
from lmsrr.methods.base import Batch, StepOutput
from lmsrr.methods.common import eval_mode
from lmsrr.methods.finetune import Finetune
from lmsrr.methods.registry import register_method
from lmsrr.models.net import TrainableTop


@contextlib.contextmanager
def reference_kernels():
    """Run the fused ops through their PyTorch references (vmap cannot batch a Triton launch)."""
    previous = dispatch._override  # restore exactly what was set, including "no override"
    dispatch.set_backend("torch")
    try:
        yield
    finally:
        dispatch.set_backend(previous)


def per_sample_sq_grads(net, params: dict[str, torch.Tensor], batches
                        ) -> tuple[dict[str, torch.Tensor], int]:
    """sum_n (grad_theta log p(y_n | x_n))^2 for the named ``params`` over the un-augmented
    ``(uint8 x, y)`` batches (one vmapped pass each), and the number of samples."""
    top = TrainableTop(net)
    names = list(params)

    def nll(p: dict[str, torch.Tensor], zs: list[torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        ((_, logits),) = functional_call(top, p, ([z.unsqueeze(0) for z in zs],))
        return F.cross_entropy(logits.float(), label.unsqueeze(0))  # -log p(y | x)

    per_sample = vmap(grad(nll), in_dims=(None, 0, 0))
    total = {n: torch.zeros_like(params[n]) for n in names}
    count = 0
    with reference_kernels(), warnings.catch_warnings():
        # CPU attention has no vmap batching rule yet; torch warns that it loops instead.
        warnings.filterwarnings("ignore", message="There is a performance drop")
        for x, y in batches:
            g = per_sample(params, net.prefix(to_float(x)), y)
            for n in names:
                total[n] += g[n].square().sum(0)
            count += x.shape[0]
    return total, count


@dataclass
class EWCOptions:
    lambda_: float = option(10.0, "ewc: weight of the penalty (lambda/2) * sum F (theta - theta*)^2; "
                            "plain SGD diverges once lr * lambda * max F exceeds 2", flag="--ewc-lambda")
    gamma: float = option(1.0, "ewc: online EWC decay of the accumulated Fisher at each task end (1 = none)")

    def __post_init__(self):
        validate(self)
        check(self.lambda_ >= 0, f"ewc_lambda must be >= 0, got {self.lambda_}")
        check(0 <= self.gamma <= 1, f"ewc_gamma must be in [0, 1], got {self.gamma}")


@register_method("ewc")
class EWC(Finetune):
    Options = EWCOptions

    def __init__(self, cfg, net, stream, device):
        super().__init__(cfg, net, stream, device)
        self.lam, self.gamma = self.options.lambda_, self.options.gamma
        self.eval_batch = cfg.data.eval_batch_size
        self._params = self.parameters()
        self.fisher: list[torch.Tensor] | None = None
        self.anchor: list[torch.Tensor] | None = None

    def penalty(self) -> torch.Tensor:
        """sum_i F_i (theta_i - theta*_i)^2 (0 before the first task ends)."""
        if self.fisher is None:
            return torch.zeros((), device=self.device)
        return sum((f * (p - a).square()).sum() for f, p, a in zip(self.fisher, self._params, self.anchor))

    def loss(self, batch: Batch) -> StepOutput:
        out = super().loss(batch)
        if self.fisher is None:
            return out
        out.terms["loss/ewc"] = self.penalty()
        out.loss = out.loss + 0.5 * self.lam * out.terms["loss/ewc"]
        return out

    def task_fisher(self, task: int) -> list[torch.Tensor]:
        """F_t: mean over the task's training samples of the squared per-sample gradient of
        log p(y | x); under DDP each rank takes its share and the sums are added up."""
        ids = {id(p) for p in self._params}
        params = {f"net.{n}": p.detach() for n, p in self.net.named_parameters() if id(p) in ids}
        n_params = sum(p.numel() for p in self._params)
        # Per-sample gradients take chunk x n_params floats: about 256 MiB per chunk.
        chunk = max(1, min(self.eval_batch, (64 << 20) // max(n_params, 1)))
        images = self.stream.train_images(task, chunk, self.device, distributed.rank(),
                                          distributed.world_size())
        with eval_mode(self.net):
            sums, seen = per_sample_sq_grads(self.net, params, images)
        count = torch.tensor(float(seen), device=self.device)
        fisher = [sums[f"net.{n}"] for n, p in self.net.named_parameters() if id(p) in ids]
        for f in fisher:
            distributed.all_reduce_sum_(f)
        distributed.all_reduce_sum_(count)
        return [f / count for f in fisher]

    def end_task(self, task: int) -> None:
        f_t = self.task_fisher(task)
        self.fisher = f_t if self.fisher is None else [self.gamma * f + g for f, g in zip(self.fisher, f_t)]
        self.anchor = [p.detach().clone() for p in self._params]

    def state_dict(self) -> dict:
        return {"fisher": self.fisher, "anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        # Checkpoints load on the CPU.
        self.fisher, self.anchor = ([t.to(self.device) for t in state[k]] if state[k] is not None
                                    else None for k in ("fisher", "anchor"))
