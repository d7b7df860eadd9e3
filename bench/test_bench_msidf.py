"""MSIDF fusion forward+backward: eager reference vs. torch.compile vs. the Triton kernels.

Real sizes (also used on CPU, they are small): batch 32 and 256, 2 sources, width 768,
branches k = 3 and 5, 3 mixing logits (the released configuration), float32.
Target on GPU: Triton >= 3x eager and faster than torch.compile.
"""
import pytest
import torch

from bench_common import DEVICE, PROVIDERS, skip_unavailable
from kernels.msidf.reference import msidf as msidf_reference


def setup_msidf(provider: str, batch: int, width: int = 768, sources: int = 2, dtype=torch.float32):
    """Build inputs and a fwd+bwd closure for ``provider``; returns (step, bytes moved per step)."""
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device=DEVICE, dtype=dtype).requires_grad_()

    x = rnd(batch, sources, width)
    weights = [rnd(sources, 3), rnd(sources, 5)]
    biases, mix = rnd(2), rnd(3)
    gout = torch.randn(batch, width, generator=g).to(device=DEVICE, dtype=dtype)
    if provider == "eager":
        fn = msidf_reference
    elif provider == "compile":
        fn = torch.compile(msidf_reference)
    else:
        import kernels  # noqa: F401  (registers torch.ops.lmsrr; Triton on CUDA tensors)

        def fn(x, weights, biases, mix):
            return torch.ops.lmsrr.msidf(x, list(weights), biases, mix)
    leaves = [x, *weights, biases, mix]

    def step():
        out = fn(x, weights, biases, mix)
        torch.autograd.grad(out, leaves, gout)

    es = x.element_size()
    # forward reads x, writes out; backward reads x and dout, writes dx
    bytes_moved = es * (3 * batch * sources * width + 2 * batch * width)
    return step, bytes_moved


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("batch", [32, 256])
def test_msidf_fwd_bwd(benchmark, measure, provider, batch):
    skip_unavailable(provider)
    benchmark.group = f"msidf fwd+bwd B={batch}"
    step, nbytes = setup_msidf(provider, batch)
    measure(step, op="msidf fwd+bwd", case=f"B={batch} S=2 D=768 k=3,5", provider=provider,
            bytes_moved=nbytes, rounds=None if DEVICE.type == "cuda" else 20)
