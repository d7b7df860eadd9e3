"""ARO-weighted distillation loss forward+backward: eager reference vs. torch.compile vs. Triton.

Real size: 2 sources x 3 layers of ViT token maps (32, 197, 768) in bfloat16 (the AMP dtype),
p of length 6. On CPU: batch 4 in float32 (the full size takes seconds per round there).
Target on GPU: Triton >= 2x eager.
"""
import pytest
import torch

from bench_common import DEVICE, HAS_CUDA, PROVIDERS, note, skip_unavailable
from kernels.distill.reference import distill_loss as distill_reference


def setup_distill(provider: str, batch: int, dtype, tokens: int = 197, width: int = 768, layers: int = 6):
    g = torch.Generator().manual_seed(0)
    old = [torch.randn(batch, tokens, width, generator=g).to(device=DEVICE, dtype=dtype) for _ in range(layers)]
    new = [(o.float() + 0.1 * torch.randn(o.shape, generator=g).to(DEVICE)).to(dtype).requires_grad_()
           for o in old]
    p = torch.rand(layers, generator=g).to(DEVICE).requires_grad_()
    if provider == "eager":
        fn = distill_reference
    elif provider == "compile":
        fn = torch.compile(distill_reference)
    else:
        import kernels  # noqa: F401  (registers torch.ops.lmsrr; Triton on CUDA tensors)

        def fn(old, new, p):
            return torch.ops.lmsrr.distill(list(old), list(new), p)[0]

    def step():
        loss = fn(old, new, p)
        torch.autograd.grad(loss, [p, *new])

    n = sum(t.numel() for t in new)
    es = new[0].element_size()
    # forward reads h_old and h; backward reads both again and writes dh
    return step, 5 * n * es


@pytest.mark.parametrize("provider", PROVIDERS)
def test_distill_fwd_bwd(benchmark, measure, provider):
    skip_unavailable(provider)
    if HAS_CUDA:
        batch, dtype = 32, torch.bfloat16
    else:
        batch, dtype = 4, torch.float32
        note("distill on CPU: batch 4 (not 32) and float32 (not bfloat16) to keep rounds short")
    benchmark.group = "distill fwd+bwd"
    step, nbytes = setup_distill(provider, batch, dtype)
    measure(step, op="distill fwd+bwd", case=f"6x({batch},197,768) {str(dtype)[6:]}", provider=provider,
            bytes_moved=nbytes)
