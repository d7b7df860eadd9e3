"""MSIDF: multi-scale interaction and dynamic fusion of the sources' pooled features.

    x = stack_s proj_s(f_s)                        (B, S, D); proj_s = identity when width_s == D
    [attention]  a = softmax_s(v^T tanh(W x_s))    (B, S);   x_s <- S * a_s * x_s
    out = sum_i softmax(m)_i * Conv1d_{k_i}(x)     (B, D);   S input channels, one output channel

``reference`` reproduces the released code: branches k = 3, 5 with Xavier-uniform weights and bias
0.1, and a mixing vector of n + 1 logits (initialised to 1) of which the first n are used.
``attention`` adds the input-conditioned source attention; its output layer starts at zero, so at
initialisation the attention is uniform and the fusion equals the reference's branches.
The convolutions and the mix run through ``kernels.msidf`` (Triton on CUDA).
"""
from __future__ import annotations

import torch
import torch.nn as nn

import kernels.msidf


class SourceAttention(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.score[2].weight)
        nn.init.zeros_(self.score[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(self.score(x).squeeze(-1), dim=1)  # B, S
        return x * (x.shape[1] * a).unsqueeze(-1)


class MSIDF(nn.Module):
    def __init__(self, widths: list[int], dim: int, kernel_sizes=(3, 5), variant: str = "attention"):
        super().__init__()
        n_src = len(widths)
        self.dim = dim
        self.variant = variant
        self.proj = nn.ModuleList(nn.Identity() if w == dim else nn.Linear(w, dim) for w in widths)
        self.attention = SourceAttention(dim, max(16, dim // 4)) if variant == "attention" else None
        self.weights = nn.ParameterList()
        for k in kernel_sizes:
            w = torch.empty(1, n_src, k)
            nn.init.xavier_uniform_(w)  # same fans as Conv1d(n_src, 1, k).weight
            self.weights.append(nn.Parameter(w.squeeze(0)))
        self.biases = nn.Parameter(torch.full((len(kernel_sizes),), 0.1))
        n_mix = len(kernel_sizes) + (1 if variant == "reference" else 0)
        self.mix_logits = nn.Parameter(torch.ones(n_mix))

    def stack(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([p(f) for p, f in zip(self.proj, feats)], dim=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.stack(feats)
        if self.attention is not None:
            x = self.attention(x)
        return kernels.msidf.msidf(x, list(self.weights), self.biases, self.mix_logits)
