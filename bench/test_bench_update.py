"""One optimizer step of the trainer (``--update-backend``) over LMSRR's real trainable set.

The set: 2 x ViT-B/16 with their top 3 blocks trainable (one update group per block, as
``--aro-gate updates`` groups them), MSIDF fusion and a 100-class head, about 43M float32
parameters. Every provider builds its optimizer through :mod:`lmsrr.optim`, exactly as the trainer:

    torch        torch.optim (foreach on CUDA)                        every block updated
    fused        torch.optim, fused=True                              every block updated
    triton       kernels.masked_update, one launch                    every gate on
    triton-half  the same, blocks 1, 3, 5 gated off (head always on)  what --aro-gate updates runs
    torch-half   the masked update's PyTorch reference, half gated    --update-backend torch --aro-gate updates
    apex         apex.optimizers FusedSGD / FusedAdam                 skipped when apex is absent

Achieved GB/s counts the bytes the step must move for the parameters it updates (AdamW: read p,
g, m, v and write p, m, v = 28 B per float32 parameter; SGD with momentum: 20 B), so a half-gated
step is credited only with its active half; ``%peak`` compares it with the device's theoretical
memory bandwidth. On CPU the blocks are 64 wide (0.3M parameters) so that rounds stay short, and
the Triton providers run only under ``TRITON_INTERPRET=1`` (the interpreter: a correctness path,
its times say nothing about a GPU).
"""
import importlib.util
import os

import pytest
import torch

from bench_common import DEVICE, HAS_CUDA, note
from lmsrr.config import OptimConfig
from lmsrr.optim import apex_problem, resolve_update_backend

PROVIDERS = ["torch", "fused", "triton", "triton-half", "torch-half", "apex"]
OPTIMIZERS = {
    "sgd": OptimConfig(optimizer="sgd", lr=0.03, momentum=0.9, weight_decay=1e-4),
    "adamw": OptimConfig(optimizer="adamw", lr=1e-4, weight_decay=0.05),
}
BYTES_PER_PARAM = {"sgd": 20, "adamw": 28}


def trainable_set(width: int, n_classes: int = 100) -> list[list[torch.nn.Parameter]]:
    """2 sources x 3 ViT blocks of ``width``, then fusion + head: LMSRR's update groups."""
    from timm.models.vision_transformer import Block

    from lmsrr.models.msidf import MSIDF

    torch.manual_seed(0)
    blocks = [Block(width, max(width // 64, 1)) for _ in range(6)]
    head = torch.nn.ModuleList([MSIDF([width, width], width, (3, 5), "attention"),
                                torch.nn.Linear(width, n_classes)])
    groups = [list(m.to(DEVICE).parameters()) for m in blocks + [head]]
    g = torch.Generator(device=DEVICE).manual_seed(0)
    for ps in groups:
        for p in ps:
            p.grad = torch.randn(p.shape, device=DEVICE, generator=g) * 1e-3
    return groups


def _interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def skip_unavailable(provider: str) -> None:
    if provider.startswith("triton"):
        if importlib.util.find_spec("triton") is None:
            pytest.skip("triton is not installed")
        if not HAS_CUDA and not _interpreter():
            pytest.skip("Triton provider on CPU runs only in the interpreter (set TRITON_INTERPRET=1)")
    if provider == "apex" and apex_problem():
        pytest.skip(f"apex: {apex_problem()}")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("algo", ["adamw", "sgd"])
def test_update_step(benchmark, measure, provider, algo):
    skip_unavailable(provider)
    width = 768 if HAS_CUDA else 64
    if not HAS_CUDA:
        note("update step on CPU: reduced size, ViT blocks 64 wide (0.3M parameters), not 2 x ViT-B/16 (43M)")
    groups = trainable_set(width)
    half = provider.endswith("-half")
    backend = resolve_update_backend(provider.removesuffix("-half"), DEVICE, "--aro-gate updates" if half else None)
    opt = backend.build(groups, OPTIMIZERS[algo])
    gates = None
    n_active = sum(p.numel() for ps in groups for p in ps)
    if half:
        on = [i % 2 == 0 for i in range(len(groups) - 1)] + [True]  # blocks 1, 3, 5 off; head on
        gates = torch.tensor([float(x) for x in on], device=DEVICE)
        n_active = sum(p.numel() for ps, x in zip(groups, on) if x for p in ps)
    n = sum(p.numel() for ps in groups for p in ps)
    benchmark.group = f"update step {algo}"
    measure(lambda: backend.step(opt, None, gates), op=f"step {algo}",
            case=f"2x3 ViT blocks w={width} ({n / 1e6:.1f}M)", provider=provider,
            bytes_moved=BYTES_PER_PARAM[algo] * n_active, rounds=None if HAS_CUDA else 5)
