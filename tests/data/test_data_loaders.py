"""The torch and DALI loaders: same batches, seeded reshuffling, sharding, normalisation."""
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from loader_params import LOADERS, needs_dali
from lmsrr.config import DataConfig
from lmsrr.data import build_stream
from lmsrr.data.augment import Augment, ResizedCropAugment, to_float
from lmsrr.data.sampler import num_shard_batches, shard_batches


def stream(root, name, loader, **kw):
    kw.setdefault("image_size", 16)
    return build_stream(DataConfig(stream=name, data_root=root, loader=loader, loader_workers=1, **kw))


def epoch(s, t, seed=0, bs=8, shard=(0, 1), generator=None):
    g = generator or torch.Generator().manual_seed(seed)
    return list(s.train_batches(t, bs, g, "cpu", *shard))


# ---------------------------------------------------------------- sampler
@pytest.mark.parametrize("n,bs,w", [(1, 4, 1), (17, 4, 1), (16, 4, 2), (17, 4, 2), (9, 4, 2), (33, 4, 4),
                                    (34, 4, 4), (7, 2, 3), (5, 8, 4), (100, 7, 3)])
def test_shards_cover_every_sample_once_with_equal_steps(n, bs, w):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    per_rank = [shard_batches(order, bs, r, w) for r in range(w)]
    steps = num_shard_batches(n, bs, w)
    assert all(len(b) == steps for b in per_rank)  # DDP needs the same step count on every rank
    seen = torch.cat([b for rank in per_rank for b in rank])
    assert sorted(seen.tolist()) == sorted(order.tolist())  # each sample exactly once
    assert all(1 <= len(b) <= bs + 1 for rank in per_rank for b in rank)
    if w == 1:
        assert [len(b) for b in per_rank[0]] == [len(c) for c in torch.split(order, bs)]


def test_more_ranks_than_samples_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot shard 3 sample"):
        num_shard_batches(3, 8, 4)


# ---------------------------------------------------------------- loaders agree
def _same(a, b):
    return all(torch.equal(u, v) for u, v in zip(a, b))


@needs_dali
@pytest.mark.parametrize("name,t,size", [("seq-cifar10", 2, 16), ("rot-mnist", 3, 16), ("seq-digits", 0, 16),
                                         ("seq-cub200", 1, 20), ("seq-cars196", 5, 18)])
@pytest.mark.parametrize("augment", [False, True])
def test_loaders_give_identical_batches(data_root, name, t, size, augment):
    """In memory: identical with augmentation on or off. Files at a size that needs no resampling
    for the un-augmented view (CUB images are 20x24, Cars 18x26): decoding and cropping are exact,
    so x is identical, and x_aug too without augmentation. Random resized crops always resample,
    and the two libraries' filters differ slightly: those agree within a few levels."""
    root, _ = data_root
    a = epoch(stream(root, name, "torch", augment=augment, image_size=size), t)
    b = epoch(stream(root, name, "dali", augment=augment, image_size=size), t)
    resampled = augment and name in ("seq-cub200", "seq-cars196")
    assert len(a) == len(b) > 0
    for (x1, xa1, y1), (x2, xa2, y2) in zip(a, b):
        assert x1.dtype == x2.dtype == torch.uint8 and xa1.dtype == xa2.dtype == torch.float32
        assert torch.equal(y1, y2) and torch.equal(x1, x2)
        assert (xa1 - xa2).abs().mean() < 3 / 255 if resampled else torch.equal(xa1, xa2)
        if not augment:
            assert torch.equal(xa1, to_float(x1))
    if augment and name != "rot-mnist":  # rot-mnist has no augmentation beyond its rotation
        assert any(not torch.equal(xa, to_float(x)) for x, xa, _ in a)
    ta = list(stream(root, name, "torch", image_size=size).test_batches(t, 5, "cpu"))
    tb = list(stream(root, name, "dali", image_size=size).test_batches(t, 5, "cpu"))
    assert len(ta) == len(tb) > 0 and all(_same(p, q) for p, q in zip(ta, tb))


@needs_dali
def test_file_loaders_agree_up_to_resampling_filters(data_root):
    """Resizing (DALI's and torch's antialiased linear filters differ slightly): same geometry,
    same labels, pixel values within a few levels."""
    root, _ = data_root
    a = epoch(stream(root, "seq-imagenet-r", "torch"), 4)
    b = epoch(stream(root, "seq-imagenet-r", "dali"), 4)
    assert len(a) == len(b)
    for (x1, xa1, y1), (x2, xa2, y2) in zip(a, b):
        assert torch.equal(y1, y2) and x1.shape == x2.shape == (y1.shape[0], 3, 16, 16)
        assert (x1.float() - x2.float()).abs().mean() < 3.0
        assert (xa1 - xa2).abs().mean() < 3.0 / 255


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("name", ["seq-cifar100", "seq-cub200"])
def test_seeded_reshuffling_per_epoch(data_root, loader, name):
    root, _ = data_root
    s = stream(root, name, loader)
    g = torch.Generator().manual_seed(5)
    e1, e2 = epoch(s, 1, generator=g), epoch(s, 1, generator=g)
    labels = [torch.cat([y for _, _, y in e]) for e in (e1, e2)]
    assert Counter(labels[0].tolist()) == Counter(labels[1].tolist())  # the task's whole data, each epoch
    x1, x2 = (torch.cat([x for x, _, _ in e]) for e in (e1, e2))
    assert not torch.equal(x1, x2)  # a new order each epoch ...
    again = torch.cat([x for x, _, _ in epoch(s, 1, generator=torch.Generator().manual_seed(5))])
    assert torch.equal(again, x1)  # ... reproduced by the seed


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("name", ["seq-cifar10", "seq-imagenet-r"])
def test_two_shards_see_every_sample_exactly_once(data_root, loader, name):
    root, _ = data_root
    s = stream(root, name, loader)
    whole = epoch(s, 0, bs=4)
    shards = [epoch(s, 0, bs=4, shard=(r, 2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == s.num_train_batches(0, 4, 2)
    key = lambda batches: Counter((tuple(x.flatten().tolist()), int(yy)) for x, _, y in batches
                                  for x, yy in zip(x, y))
    assert key(shards[0]) + key(shards[1]) == key(whole)
    assert not set(key(shards[0])) & set(key(shards[1]))
    test = [list(s.test_batches(0, 3, "cpu", r, 2)) for r in range(2)]
    n_test = sum(y.numel() for _, y in s.test_batches(0, 3, "cpu"))
    assert sum(y.numel() for part in test for _, y in part) == n_test


@pytest.mark.parametrize("loader", LOADERS)
def test_file_that_fails_to_decode_mid_task_is_skipped_not_fatal(tmp_path, loader, caplog):
    """With --no-verify-images a truncated file passes the header scan and fails when decoded:
    the batch goes on without it (DALI hands the rest of the pass to the torch loader)."""
    import datagen

    base = datagen.write_cub(str(tmp_path))
    bad = f"{base}/images/003.Bird_3/Bird_3_0.jpg"  # a training image of class 2 (task 0)
    datagen.truncate_after_header(bad)
    s = stream(str(tmp_path), "seq-cub200", loader, verify_images=False, image_size=16)
    assert s.skipped_files == [] and bad in s._train.paths
    with caplog.at_level("WARNING", logger="lmsrr.data"):
        for _ in range(2):  # and again the next epoch
            labels = Counter(torch.cat([y for _, _, y in epoch(s, 0, bs=4)]).tolist())
            assert labels == {c: 1 for c in range(20) if c != 2}
    assert f"skipped an unreadable image: {bad}" in caplog.text


# ---------------------------------------------------------------- augmentation
def test_replay_resized_crop_is_identity_for_the_full_window_and_stays_in_range():
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    full = ResizedCropAugment(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    torch.testing.assert_close(full(x), to_float(x), atol=1e-6, rtol=0)
    aug = ResizedCropAugment(16)(x)
    assert aug.shape == (6, 3, 16, 16) and aug.min() >= 0 and aug.max() <= 1
    assert torch.equal(ResizedCropAugment(16, enabled=False)(x), to_float(x))


def test_resized_crop_windows_follow_the_torchvision_rule():
    aug = ResizedCropAugment(16)
    hw = torch.tensor([[100, 150]] * 2000)
    win, flips = aug.sample_windows(hw, torch.Generator().manual_seed(0))
    top, left, h, w = win.T
    assert bool(((top >= 0) & (left >= 0) & (top + h <= 100) & (left + w <= 150)).all())
    area = (h * w).float() / (100 * 150)
    assert area.min() >= 0.07 and area.max() <= 1.0
    ratio = w.float() / h.float()
    assert ratio.min() >= 0.7 and ratio.max() <= 1.4
    assert 0.45 < flips.float().mean() < 0.55


def test_padded_crop_parameters_match_the_executed_crop():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.uint8).view(2, 3, 5, 5)
    aug = Augment(pad=2, flip=True)
    anchors, flips = aug.sample(2, torch.Generator().manual_seed(1))
    out = aug.apply(x, anchors, flips)
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(2):
        r, c = (anchors[i] + 2).tolist()
        ref = padded[i, :, r:r + 5, c:c + 5]
        assert torch.equal(out[i], ref.flip(-1) if flips[i] else ref)


# ---------------------------------------------------------------- per-source outputs
@needs_dali
def test_dali_per_source_resize_and_normalisation():
    """The in-memory DALI pipeline can emit one resized, normalised tensor per source."""
    from lmsrr.data.dali_loader import OutputSpec, PlanSource, tensor_train_pipeline, to_torch
    from lmsrr.data.splits import BatchPlan

    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    specs = (OutputSpec((32, 32), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
             OutputSpec((48, 40), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
    src = PlanSource(lambda p: (x.numpy()[p.idx.numpy()], torch.zeros(len(p.idx), 2).numpy(),
                                torch.zeros(len(p.idx), dtype=torch.int32).numpy()))
    src.plans = [BatchPlan(torch.arange(6))]
    pipe = tensor_train_pipeline(src, (32, 32), 6, None, 1, specs)
    pipe.build()
    _, _, native, resized = (to_torch(o, torch.device("cpu")) for o in pipe.run())
    for out, spec in ((native, specs[0]), (resized, specs[1])):
        mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
        ref = F.interpolate(to_float(x), size=spec.size, mode="bilinear", antialias=True, align_corners=False) \
            if spec.size != (32, 32) else to_float(x)
        assert out.shape == (6, 3, *spec.size)
        tol = 1e-5 if spec.size == (32, 32) else 0.05  # resampling filters differ slightly
        assert (out - (ref - mean) / std).abs().mean() < tol


# ---------------------------------------------------------------- GPU (DALI mixed decode)
@pytest.mark.gpu
@needs_dali
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dali_gpu_pipelines_match_the_cpu_loader(data_root):
    root, _ = data_root
    for name, size in (("seq-cub200", 20), ("seq-cifar10", 16)):
        cpu = epoch(stream(root, name, "torch", image_size=size), 1)
        g = torch.Generator().manual_seed(0)
        gpu = list(stream(root, name, "dali", image_size=size).train_batches(1, 8, g, "cuda"))
        for (x1, xa1, y1), (x2, xa2, y2) in zip(cpu, gpu):
            assert x2.is_cuda and xa2.is_cuda and torch.equal(y1, y2.cpu())
            # nvJPEG may round a few values differently from libjpeg-turbo.
            assert (x1.float() - x2.cpu().float()).abs().mean() < 2.0
            assert (xa1 - xa2.cpu()).abs().mean() < 2.0 / 255
