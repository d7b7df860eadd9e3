"""The LMSRR training step: the released code's four passes vs ours, eager and compiled.

GPU (when lent): 2 x ViT-B/16 at 224, bf16, batch 32 and 128. CPU: the default job's tiny
sources at batch 32 and 128, fp32. Images/s and ratios against the four-pass step are printed
at the end (targets: ours eager >= 2x released on CPU; on one H100, ours >= 3x released and
>= 2,500 images/s).
"""
import pytest
import torch

from bench_common import DEVICE, HAS_CUDA, note, skip_unavailable
from step_setup import PROVIDERS, setup_step

BATCHES = (32, 128)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_train_step(benchmark, measure, provider, batch):
    if provider == "compile":
        skip_unavailable(provider)
    precision = "bf16" if HAS_CUDA else "fp32"
    if not HAS_CUDA:
        note("train step on CPU: the default job's tiny sources, fp32 (GPU: 2 x ViT-B/16, bf16)")
    benchmark.group = f"train step batch {batch}"
    step, images = setup_step(provider, batch, DEVICE, precision)
    sources = "2xViT-B/16@224" if HAS_CUDA else "tiny ViT+ConvNeXt"
    measure(step, op="train step", case=f"{sources} b{batch} {precision}", provider=provider,
            images=images, rounds=20 if HAS_CUDA else 5)
