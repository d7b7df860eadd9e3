"""Input pipeline throughput: DALI vs the torch DataLoader, Split CIFAR-100 batches resized to 224.

One epoch of one Split CIFAR-100 task (in-memory uint8 32x32 images, random crop with 4-pixel
padding, horizontal flip, resize to 224x224, normalisation with the paper sources' mean/std,
delivered as float (B, 3, 224, 224) on the training device), by three providers:

* ``dali``: lmsrr's DALI pipeline (external_source -> slice -> flip -> resize -> normalise), on
  the GPU when CUDA is present, else on CPU threads (one per core);
* ``torch_dataloader``: the usual torchvision recipe, per-sample transforms in a
  ``torch.utils.data.DataLoader`` with one worker process per core, then copied to the device;
* ``torch_device``: lmsrr's torch loader (batched crop and flip on the device) followed by the
  resize and normalisation each source applies (``F.interpolate`` + normalise, on the device).

Run with pytest (``pytest bench/bench_loader.py --benchmark-only``; results join the shared
summary, images/s included) or standalone (``python bench/bench_loader.py``), which prints
images/s side by side. Target on a GPU: >= 5x the images/s of the 2 x ViT-B/16 training step
(``bench/test_bench_step.py``), i.e. data time < 5% of step time.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time

import pytest
import torch
import torch.nn.functional as F

_HERE = os.path.dirname(os.path.abspath(__file__))
if "bench_common" not in sys.modules:
    # Run as a script: bench/ is first on sys.path, where bench/profile.py would shadow the standard
    # library's profile module (torch imports cProfile). Load bench_common by path instead.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    _spec = importlib.util.spec_from_file_location("bench_common", os.path.join(_HERE, "bench_common.py"))
    sys.modules["bench_common"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["bench_common"])
from bench_common import DEVICE, HAS_CUDA, note  # noqa: E402

SIZE = 224
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # both ViT-B/16 sources of the released code
BATCH = 32
N_IMAGES = 5000 if HAS_CUDA else 512  # one CIFAR-100 task on a GPU; scaled down on CPU
PROVIDERS = ["dali", "torch_dataloader", "torch_device"]


def cifar100_stream(loader: str):
    """A Split CIFAR-100 stream over random images, task 0 holding N_IMAGES training images."""
    from lmsrr.data.augment import Augment
    from lmsrr.data.stream import ContinualStream

    g = torch.Generator().manual_seed(0)
    y = torch.arange(N_IMAGES) % 10  # task 0's ten classes ...
    y = torch.cat([y, torch.arange(10, 100)])  # ... and one image of every other class
    x = torch.randint(0, 256, (y.shape[0], 3, 32, 32), dtype=torch.uint8, generator=g)
    return ContinualStream("seq-cifar100", x, y, x[:100], torch.arange(100), 10, 10,
                           Augment(pad=4, flip=True), loader=loader, workers=os.cpu_count() or 1)


def dali_epoch_fn():
    from lmsrr.data.dali_loader import OutputSpec, PlanSource, tensor_train_pipeline, to_torch

    stream = cifar100_stream("dali")
    x_np = stream._train.x.numpy()
    source = PlanSource(lambda p: (x_np[p.idx.numpy()], p.crops.float().numpy(), p.flips.int().numpy()))
    dev = (DEVICE.index or 0) if HAS_CUDA else None
    pipe = tensor_train_pipeline(source, (32, 32), BATCH + 1, dev, os.cpu_count() or 1,
                                 (OutputSpec((SIZE, SIZE), MEAN, STD),))
    pipe.build()
    g = torch.Generator().manual_seed(0)
    state = {"used": False}

    def epoch():
        plans = stream.epoch_plan(*stream.train_split(0), BATCH, g)
        source.plans = plans
        if state["used"]:
            pipe.reset()
        state["used"] = True
        cuda_stream = torch.cuda.current_stream() if HAS_CUDA else None
        for _ in plans:
            out = to_torch(pipe.run(cuda_stream)[2], DEVICE)
        try:
            pipe.run(cuda_stream)
        except StopIteration:
            pass
        return out

    return epoch


class _TorchvisionCifar(torch.utils.data.Dataset):
    def __init__(self, x, y):
        from torchvision.transforms import v2

        self.x, self.y = x, y
        self.t = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(),
                             v2.Resize(SIZE, antialias=True), v2.ToDtype(torch.float32, scale=True),
                             v2.Normalize(MEAN, STD)])

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.t(self.x[i]), self.y[i]


def torch_dataloader_epoch_fn():
    stream = cifar100_stream("torch")
    _, pos = stream.train_split(0)
    ds = _TorchvisionCifar(stream._train.x[pos], stream._train.y[pos])
    workers = os.cpu_count() or 1
    dl = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers,
                                     pin_memory=HAS_CUDA, persistent_workers=True, prefetch_factor=4)

    def epoch():
        for xb, _ in dl:
            out = xb.to(DEVICE, non_blocking=True)
        return out

    return epoch


def torch_device_epoch_fn():
    stream = cifar100_stream("torch")
    g = torch.Generator().manual_seed(0)
    mean = torch.tensor(MEAN, device=DEVICE).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=DEVICE).view(1, 3, 1, 1)

    def epoch():
        for _, x_aug, _ in stream.train_batches(0, BATCH, g, DEVICE):
            out = (F.interpolate(x_aug, size=(SIZE, SIZE), mode="bilinear", antialias=True,
                                 align_corners=False) - mean) / std
        return out

    return epoch


MAKERS = {"dali": dali_epoch_fn, "torch_dataloader": torch_dataloader_epoch_fn,
          "torch_device": torch_device_epoch_fn}


def _make(provider):
    if provider == "dali":
        pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install nvidia-dali-cuda130)")
    return MAKERS[provider]()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_loader_cifar100_224(benchmark, measure, provider):
    if not HAS_CUDA:
        note(f"loader on CPU: {N_IMAGES} images per epoch (GPU: one 5,000-image CIFAR-100 task)")
    benchmark.group = "loader seq-cifar100 -> 224"
    epoch = _make(provider)
    measure(epoch, op="loader", case=f"cifar100 b{BATCH} ->{SIZE} x{N_IMAGES}", provider=provider,
            images=N_IMAGES, rounds=10 if HAS_CUDA else 3, warmup=1)


def main() -> None:
    from bench_common import ENV

    print(f"device: {ENV['device']}   revision: {ENV['revision']}   date: {ENV['date']}")
    print(f"one epoch of {N_IMAGES} CIFAR-100 images, batch {BATCH}, crop+flip -> {SIZE}x{SIZE} float, "
          f"normalised, on {DEVICE}")
    for provider in PROVIDERS:
        try:
            epoch = MAKERS[provider]()
        except ImportError as e:
            print(f"{provider:<18} skipped ({e})")
            continue
        epoch()  # warm-up: worker start, pipeline build, first allocations
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            epoch()
            if HAS_CUDA:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        best = min(times)
        print(f"{provider:<18} {N_IMAGES / best:>10.0f} images/s   (best of 3 epochs: {best:.3f} s)")


if __name__ == "__main__":
    main()
