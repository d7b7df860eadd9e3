"""Streams read from image files, decoded per batch: seq-imagenet-r, seq-cub200, seq-cars196.

Each image is used at a fixed ``--image-size`` (default 224): the un-augmented view x (what the
replay buffer stores and what evaluation sees) is the image resized so its shorter side is
``image-size``, centre-cropped to a square; the training view is a random resized crop (area
8-100%, aspect ratio 3/4-4/3) resized to the same square, flipped half the time. All files are
scanned once when the stream is built; unreadable ones are reported with their paths and skipped.

Layouts under ``--data-root`` (none has a torchvision downloader that works, so ``--download``
cannot fetch them):

* ``imagenet-r/<wnid>/*.jpg``: 200 class folders (class order: sorted wnids). No official split:
  each class's files, sorted by name, are permuted with a generator seeded with
  ``--split-seed * 1000 + class index``; the first ``n // 5`` are the test split, the rest train.
* ``CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, images/}``: the
  official split (5,994 train / 5,794 test); classes 1..200 become labels 0..199.
* ``stanford_cars/{cars_train/, cars_test/, devkit/cars_train_annos.mat,
  cars_test_annos_withlabels.mat}``: torchvision's StanfordCars layout and the official split
  (8,144 / 8,041); classes 1..196 become 0..195.
"""
from __future__ import annotations

import os

import torch

from lmsrr.data.augment import ResizedCropAugment
from lmsrr.data.common import loader_kwargs, require_dir, require_file, require_files
from lmsrr.data.images import report_unreadable, scan_images
from lmsrr.data.registry import register_dataset
from lmsrr.data.splits import FileSplit
from lmsrr.data.stream import ContinualStream
from lmsrr.errors import DataNotFoundError

DEFAULT_SIZE = 224
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def _no_download(stream: str, data_cfg) -> str:
    if data_cfg.download:
        return f"--download cannot fetch {stream} (no working downloader); download it by hand"
    return "put it there or point --data-root at its parent"


def imagenet_r_items(root: str, split_seed: int = 0, download_hint: str = ""):
    base = require_dir(os.path.join(root, "imagenet-r"), "seq-imagenet-r", "the folder imagenet-r",
                       "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar", download_hint)
    wnids = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
    if len(wnids) != 200:
        raise DataNotFoundError(f"seq-imagenet-r: incomplete dataset: {os.path.abspath(base)} has "
                                f"{len(wnids)} class folder(s), expected 200; re-extract imagenet-r.tar")
    train, test = [], []
    for label, w in enumerate(wnids):
        folder = os.path.join(base, w)
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
        if len(files) < 2:
            raise DataNotFoundError(f"seq-imagenet-r: incomplete dataset: {os.path.abspath(folder)} holds "
                                    f"{len(files)} image(s); every class needs at least 2 (train and test)")
        g = torch.Generator().manual_seed(split_seed * 1000 + label)
        perm = torch.randperm(len(files), generator=g).tolist()
        n_test = len(files) // 5
        for rank, i in enumerate(perm):
            (test if rank < n_test else train).append((os.path.join(folder, files[i]), label))
    return train, test


def _read_table(path: str, stream: str, n_cols: int = 2) -> dict[str, list[str]]:
    out = {}
    with open(require_file(path, stream)) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < n_cols:
                raise DataNotFoundError(f"{stream}: {path} line {n} is malformed: {line.strip()!r}")
            out[parts[0]] = parts[1:]
    return out


def cub_items(root: str, download_hint: str = ""):
    base = require_dir(os.path.join(root, "CUB_200_2011"), "seq-cub200", "the folder CUB_200_2011",
                       "https://data.caltech.edu/records/65de6-vhp76 (CUB_200_2011.tgz)", download_hint)
    images = _read_table(os.path.join(base, "images.txt"), "seq-cub200")
    labels = _read_table(os.path.join(base, "image_class_labels.txt"), "seq-cub200")
    is_train = _read_table(os.path.join(base, "train_test_split.txt"), "seq-cub200")
    train, test = [], []
    for image_id, (rel,) in ((k, v[:1]) for k, v in images.items()):
        if image_id not in labels or image_id not in is_train:
            raise DataNotFoundError(f"seq-cub200: image id {image_id} ({rel}) has no class label or split "
                                    f"entry; the annotation files do not match, re-extract the dataset")
        item = (os.path.join(base, "images", rel), int(labels[image_id][0]) - 1)
        (train if is_train[image_id][0] == "1" else test).append(item)
    require_files([p for p, _ in train + test], "seq-cub200")
    return train, test


def _load_cars_annotations(path: str):
    import scipy.io

    try:
        ann = scipy.io.loadmat(require_file(path, "seq-cars196"), squeeze_me=True)["annotations"]
        return [(str(a["fname"]), int(a["class"]) - 1) for a in ann]
    except DataNotFoundError:
        raise
    except Exception as e:  # loadmat raises several types for a broken file
        raise DataNotFoundError(f"seq-cars196: {path} is not a readable annotation file "
                                f"({type(e).__name__}: {e}); re-download the devkit") from e


def cars_items(root: str, download_hint: str = ""):
    base = require_dir(os.path.join(root, "stanford_cars"), "seq-cars196", "the folder stanford_cars",
                       "https://www.kaggle.com/datasets/jessicali9530/stanford-cars-dataset (with the "
                       "devkit and cars_test_annos_withlabels.mat)", download_hint)
    train = [(os.path.join(base, "cars_train", f), c)
             for f, c in _load_cars_annotations(os.path.join(base, "devkit", "cars_train_annos.mat"))]
    test = [(os.path.join(base, "cars_test", f), c)
            for f, c in _load_cars_annotations(os.path.join(base, "cars_test_annos_withlabels.mat"))]
    require_files([p for p, _ in train + test], "seq-cars196")
    return train, test


def file_stream(name: str, train, test, n_tasks: int, per_task: int, data_cfg) -> ContinualStream:
    size = data_cfg.image_size or DEFAULT_SIZE
    paths = [p for p, _ in train + test]
    hw, good, bad = scan_images(paths, f"{name}: checking {len(paths)} images", data_cfg.verify_images)
    report_unreadable(name, bad)
    good_set = set(good)

    def split(items, offset):
        keep = [i for i in range(len(items)) if i + offset in good_set]
        return FileSplit([items[i][0] for i in keep], torch.tensor([items[i][1] for i in keep], dtype=torch.long),
                         hw[[i + offset for i in keep]].reshape(-1, 2), size)

    aug = ResizedCropAugment(size, enabled=data_cfg.augment)
    stream = ContinualStream.from_splits(name, split(train, 0), split(test, len(train)), n_tasks, per_task,
                                         aug, data_cfg.class_order, **loader_kwargs(data_cfg))
    stream.skipped_files = [p for p, _ in bad]
    return stream


@register_dataset("seq-imagenet-r")
def seq_imagenet_r(data_cfg) -> ContinualStream:
    train, test = imagenet_r_items(data_cfg.data_root, data_cfg.split_seed, _no_download("seq-imagenet-r", data_cfg))
    return file_stream("seq-imagenet-r", train, test, 10, 20, data_cfg)


@register_dataset("seq-cub200")
def seq_cub200(data_cfg) -> ContinualStream:
    train, test = cub_items(data_cfg.data_root, _no_download("seq-cub200", data_cfg))
    return file_stream("seq-cub200", train, test, 10, 20, data_cfg)


@register_dataset("seq-cars196")
def seq_cars196(data_cfg) -> ContinualStream:
    train, test = cars_items(data_cfg.data_root, _no_download("seq-cars196", data_cfg))
    return file_stream("seq-cars196", train, test, 14, 14, data_cfg)
