"""ARO switch vector: one Gumbel-softmax gate per (source, trainable layer).

    p_{s,l} = softmax((theta_{s,l} + g_{s,l}) / tau)[0],   g ~ Gumbel(0, 1),  theta in R^2

as in the released code (logits ~ N(0, 1) at init, tau = 0.1, fresh noise every step). With
``hard`` the forward value is the one-hot argmax and the gradient the soft sample's
(straight-through).

Sources may train different numbers of layers (``--trainable-blocks 3,2``): the logits are then
padded to the deepest source and the padding is never used.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn


class SwitchVector(nn.Module):
    def __init__(self, n_sources: int, n_layers: int | Sequence[int], tau: float = 0.1, hard: bool = False):
        super().__init__()
        layers = [n_layers] * n_sources if isinstance(n_layers, int) else list(n_layers)
        if len(layers) != n_sources:
            raise ValueError(f"{len(layers)} layer counts for {n_sources} sources")
        deepest = max(layers)
        self.logits = nn.Parameter(torch.randn(n_sources, deepest, 2))
        # Flat positions of the real (source, layer) gates, so forward gathers them without a sync.
        index = [s * deepest + l for s, n in enumerate(layers) for l in range(n)]
        self.register_buffer("index", torch.tensor(index, dtype=torch.long), persistent=False)
        self.tau = tau
        self.hard = hard

    def sample_noise(self, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = 1e-20
        u = torch.rand(self.logits.shape, device=self.logits.device, generator=generator)
        return -torch.log(-torch.log(u + eps) + eps)

    def forward(self, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Gate probabilities p, one per (source, trainable layer), source-major: shape (sum of layers,)."""
        if noise is None:
            noise = self.sample_noise()
        y = torch.softmax((self.logits + noise) / self.tau, dim=-1)
        if self.hard:
            onehot = torch.zeros_like(y).scatter_(-1, y.argmax(-1, keepdim=True), 1.0)
            y = (onehot - y).detach() + y
        return y[..., 0].flatten()[self.index]
