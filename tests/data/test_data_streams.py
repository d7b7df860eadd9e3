"""Each stream's task split, read from data written in its standard on-disk layout."""
import logging
import os
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from lmsrr.config import DataConfig
from lmsrr.data import available_streams, build_stream

PAPER_STREAMS = ["seq-cifar10", "seq-cifar100", "seq-tinyimg", "seq-imagenet-r", "seq-cub200",
                 "seq-cars196", "rot-mnist", "seq-digits"]


def stream(root, name, **kw):
    kw.setdefault("loader", "torch")
    return build_stream(DataConfig(stream=name, data_root=root, image_size=16, loader_workers=1, **kw))


def labels_of(s, t, split):
    it = (s.train_batches(t, 64, torch.Generator().manual_seed(0), "cpu") if split == "train"
          else s.test_batches(t, 64, "cpu"))
    return Counter(y for batch in it for y in batch[-1].tolist())


def test_every_paper_stream_is_registered():
    assert set(PAPER_STREAMS) <= set(available_streams())


# name: (tasks, classes per task, train images per class, test images per class)
LAYOUT = {"seq-cifar10": (5, 2, 15, 3), "seq-cifar100": (10, 10, 2, 2), "seq-tinyimg": (10, 20, 2, 1),
          "seq-cub200": (10, 20, 1, 1), "seq-cars196": (14, 14, 1, 1)}


@pytest.mark.parametrize("name", sorted(LAYOUT))
def test_class_incremental_split(data_root, name):
    root, _ = data_root
    n_tasks, per_task, n_train, n_test = LAYOUT[name]
    s = stream(root, name)
    assert (s.setting, s.n_tasks, s.classes_per_task, s.n_classes) == ("class-il", n_tasks, per_task, n_tasks * per_task)
    for t in (0, n_tasks // 2, n_tasks - 1):
        classes = list(range(t * per_task, (t + 1) * per_task))
        assert s.task_classes(t) == classes and s.seen_classes(t) == (t + 1) * per_task
        assert labels_of(s, t, "train") == {c: n_train for c in classes}
        assert labels_of(s, t, "test") == {c: n_test for c in classes}


def test_tinyimagenet_class_order_is_wnids_txt(data_root):
    root, info = data_root
    s = stream(root, "seq-tinyimg")
    base = os.path.join(root, "tiny-imagenet-200", "train")
    # The first training image of the 30th wnid in wnids.txt (not in sorted order) has label 29.
    wnid = info["tiny_wnids"][29]
    expected = np.asarray(Image.open(os.path.join(base, wnid, "images", f"{wnid}_0.JPEG")).convert("RGB"))
    x = s._train.x[s._train.y == 29]
    assert any(torch.equal(img.permute(1, 2, 0), torch.from_numpy(expected.copy())) for img in x)


def test_imagenet_r_split_follows_the_documented_rule(data_root):
    root, info = data_root
    s = stream(root, "seq-imagenet-r", split_seed=3)
    base = os.path.join(root, "imagenet-r")
    train, test = set(), set()
    for label, wnid in enumerate(sorted(os.listdir(base))):
        files = sorted(os.listdir(os.path.join(base, wnid)))
        perm = torch.randperm(len(files), generator=torch.Generator().manual_seed(3 * 1000 + label)).tolist()
        for rank, i in enumerate(perm):
            (test if rank < len(files) // 5 else train).add((os.path.join(base, wnid, files[i]), label))
    assert (info["corrupt"], 7) in train | test
    train.discard((info["corrupt"], 7))
    test.discard((info["corrupt"], 7))
    got_train = set(zip(s._train.paths, s._train.y.tolist()))
    got_test = set(zip(s._test.paths, s._test.y.tolist()))
    assert got_train == train and got_test == test
    assert len(test | train) == 200 * 5 + 100 - 1  # 5 or 6 per class, one unreadable
    assert len(test) in (199, 200)  # n // 5 = 1 per class (less the unreadable file if drawn)
    other = stream(root, "seq-imagenet-r", split_seed=4)
    assert set(other._test.paths) != set(s._test.paths)


def test_cub_and_cars_use_the_official_annotations(data_root):
    root, _ = data_root
    cub = stream(root, "seq-cub200")
    assert all(p.endswith("_0.jpg") for p in cub._train.paths) and all(p.endswith("_1.jpg") for p in cub._test.paths)
    # Class folder 017.* holds label 16 (classes are 1-based in image_class_labels.txt).
    assert all((f"/017.Bird_17/" in p) == (y == 16) for p, y in zip(cub._train.paths, cub._train.y.tolist()))
    cars = stream(root, "seq-cars196")
    assert all("cars_train" in p for p in cars._train.paths) and all("cars_test" in p for p in cars._test.paths)
    assert all(p.endswith(f"_{y + 1:05d}.jpg") for p, y in zip(cars._test.paths, cars._test.y.tolist()))


def test_rot_mnist_is_domain_incremental_with_fixed_rotations(data_root):
    root, info = data_root
    s = stream(root, "rot-mnist")
    x_raw, y_raw = info["mnist"]["train"]
    assert (s.setting, s.n_tasks, s.n_classes) == ("domain-il", 20, 10)
    assert all(s.task_class_range(t) == (0, 10) and s.seen_classes(t) == 10 for t in (0, 19))
    angles = s.angles
    assert angles.shape == (20,) and bool(((angles >= 0) & (angles < 180)).all()) and len(set(angles.tolist())) == 20
    assert torch.equal(angles, stream(root, "rot-mnist").angles)  # fixed by --split-seed
    assert not torch.equal(angles, stream(root, "rot-mnist", split_seed=1).angles)
    for t in (0, 13):
        d = s.task(t)
        assert Counter(d.train_y.tolist()) == Counter(y_raw.tolist())  # every digit, every task
        assert torch.equal(d.train_y, torch.from_numpy(y_raw.astype(np.int64)))
        # Independent truth: PIL's rotation (counter-clockwise, nearest, zero fill) of image 5.
        ref = np.asarray(Image.fromarray(x_raw[5]).rotate(angles[t].item(), resample=Image.NEAREST))
        agree = (d.train_x[5, 0].numpy() == ref).mean()
        assert agree > 0.9, agree  # the two rotations may round a few border pixels differently
    assert not torch.equal(s.task(0).train_x, s.task(1).train_x)


def test_corrupt_file_is_reported_skipped_and_counted(data_root, caplog):
    root, info = data_root
    with caplog.at_level(logging.WARNING, logger="lmsrr.data"):
        s = stream(root, "seq-imagenet-r")
    assert info["corrupt"] in caplog.text and "skipped 1 unreadable" in caplog.text
    assert s.skipped_files == [info["corrupt"]]
    assert info["corrupt"] not in s._train.paths + s._test.paths
    # Its class (label 7) is in task 0: the task trains without touching the file.
    assert labels_of(s, 0, "train")[7] == 4


def test_tinyimagenet_skips_a_corrupt_file_while_decoding(tmp_path, caplog):
    import datagen

    wnids = datagen.write_tinyimagenet(str(tmp_path))
    bad = os.path.join(str(tmp_path), "tiny-imagenet-200", "train", wnids[5], "images", f"{wnids[5]}_1.JPEG")
    datagen.corrupt(bad)
    with caplog.at_level(logging.WARNING, logger="lmsrr.data"):
        s = stream(str(tmp_path), "seq-tinyimg")
    assert s.skipped_files == [bad] and bad in caplog.text
    assert labels_of(s, 0, "train") == {c: (1 if c == 5 else 2) for c in range(20)}


def test_seeded_class_order_on_a_file_stream(data_root):
    root, _ = data_root
    s = stream(root, "seq-cub200", class_order="seed:3")
    natural = torch.arange(200)
    assert not torch.equal(s.order, natural) and sorted(s.order.tolist()) == natural.tolist()
    for path, label in zip(s._train.paths, s._train.y.tolist()):
        folder_class = int(path.split("/images/")[1][:3]) - 1  # "017.Bird_17/..." -> 16
        assert s.order[label] == folder_class
    assert labels_of(s, 0, "train") == {c: 1 for c in range(20)}
