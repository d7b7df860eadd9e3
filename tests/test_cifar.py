"""CIFAR streams read torchvision's on-disk layout; written here with a few images per class."""
import os
import pickle

import numpy as np
import pytest

from lmsrr.config import DataConfig
from lmsrr.data import build_stream
from lmsrr.errors import DataNotFoundError


def write_cifar10(root, per_class=3):
    path = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(path)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = list(range(10)) * per_class
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        with open(os.path.join(path, name), "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    return path


def test_seq_cifar10_splits_five_tasks_of_two_classes(tmp_path):
    write_cifar10(str(tmp_path))
    s = build_stream(DataConfig(stream="seq-cifar10", data_root=str(tmp_path)))
    assert (s.n_tasks, s.classes_per_task, s.image_shape) == (5, 2, (3, 32, 32))
    for t in range(5):
        d = s.task(t)
        assert set(d.train_y.tolist()) == {2 * t, 2 * t + 1}
        assert len(d.train_y) == 5 * 3 * 2 and len(d.test_y) == 3 * 2


def test_cifar_missing_file_and_corrupt_file(tmp_path):
    path = write_cifar10(str(tmp_path))
    os.remove(os.path.join(path, "data_batch_3"))
    with pytest.raises(DataNotFoundError, match="data_batch_3 is missing"):
        build_stream(DataConfig(stream="seq-cifar10", data_root=str(tmp_path)))
    with open(os.path.join(path, "data_batch_3"), "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(DataNotFoundError, match="not a readable CIFAR batch"):
        build_stream(DataConfig(stream="seq-cifar10", data_root=str(tmp_path)))
