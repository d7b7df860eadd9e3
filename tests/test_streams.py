import numpy as np
import pytest
import torch

from lmsrr.config import DataConfig
from lmsrr.data import build_stream
from lmsrr.data.augment import Augment, random_crop
from lmsrr.data.digits import load_digits_tensors


def test_digits_natural_order_and_disjoint_tasks():
    s = build_stream(DataConfig())
    assert (s.n_tasks, s.classes_per_task, s.n_classes) == (5, 2, 10)
    seen = set()
    total_train = total_test = 0
    for t in range(5):
        d = s.task(t)
        assert d.classes == [2 * t, 2 * t + 1]
        labels = set(d.train_y.tolist()) | set(d.test_y.tolist())
        assert labels == set(d.classes)
        assert not labels & seen
        seen |= labels
        total_train += len(d.train_y)
        total_test += len(d.test_y)
    assert (total_train, total_test) == (1437, 360)  # fixed stratified 80/20 split


def test_natural_order_keeps_original_labels_and_images():
    xtr, ytr, _, _ = load_digits_tensors()
    d = build_stream(DataConfig()).task(3)
    mask = (ytr == 6) | (ytr == 7)
    assert torch.equal(d.train_x, xtr[mask]) and torch.equal(d.train_y, ytr[mask])


def test_seeded_class_order_is_a_reproducible_permutation():
    xtr, ytr, _, _ = load_digits_tensors()
    a = build_stream(DataConfig(class_order="seed:7"))
    b = build_stream(DataConfig(class_order="seed:7"))
    c = build_stream(DataConfig(class_order="seed:8"))
    assert torch.equal(a.order, b.order) and not torch.equal(a.order, c.order)
    assert sorted(a.order.tolist()) == list(range(10))
    for t in range(5):
        d = a.task(t)
        # task t holds the original classes order[2t], order[2t+1], relabelled 2t, 2t+1
        originals = a.order[2 * t : 2 * t + 2]
        mask = (ytr == originals[0]) | (ytr == originals[1])
        assert torch.equal(d.train_x, xtr[mask])
        expect = torch.where(ytr[mask] == originals[0], 2 * t, 2 * t + 1)
        assert torch.equal(d.train_y, expect)


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, r:r + 4, c:c + 4] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_augment_outputs_floats_in_unit_range():
    x = torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8)
    y = Augment(pad=0, flip=False)(x)
    assert y.dtype == torch.float32 and torch.allclose(y * 255, x.float())
