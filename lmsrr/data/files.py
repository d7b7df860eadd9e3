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

from lmsrr.data.augment import Augment, CropAugment, ResizedCropAugment
from lmsrr.data.common import (check_labels, list_dir, loader_kwargs, one_line, parse_int, read_bytes, read_text_lines,
                               require_dir, require_file, require_files)
from lmsrr.data.images import check_classes, report_unreadable, scan_images
from lmsrr.data.registry import register_dataset
from lmsrr.data.released_views import ReleasedView
from lmsrr.data.splits import FileSplit
from lmsrr.data.stream import ContinualStream
from lmsrr.errors import DataError, DataNotFoundError

DEFAULT_SIZE = 224
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def _no_download(stream: str, data_cfg) -> str:
    if data_cfg.download:
        return f"--download cannot fetch {stream} (no working downloader); download it by hand"
    return "put it there or point --data-root at its parent"


def imagenet_r_items(root: str, split_seed: int = 0, download_hint: str = ""):
    base = require_dir(os.path.join(root, "imagenet-r"), "seq-imagenet-r", "the folder imagenet-r",
                       "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar", download_hint)
    wnids = sorted(d for d in list_dir(base, "seq-imagenet-r") if os.path.isdir(os.path.join(base, d)))
    if len(wnids) != 200:
        raise DataNotFoundError(f"seq-imagenet-r: incomplete dataset: {os.path.abspath(base)} has "
                                f"{len(wnids)} class folder(s), expected 200; re-extract imagenet-r.tar")
    train, test = [], []
    for label, w in enumerate(wnids):
        folder = os.path.join(base, w)
        files = image_files(folder, "seq-imagenet-r")
        if len(files) < 2:
            raise DataNotFoundError(f"seq-imagenet-r: incomplete dataset: {os.path.abspath(folder)} holds "
                                    f"{len(files)} image(s); every class needs at least 2 (train and test)")
        seeded_split(files, label, split_seed, n_test_images(len(files)), train, test)
    return train, test


def image_files(folder: str, stream: str) -> list[str]:
    """The image files of a class folder, sorted by name, as full paths."""
    names = sorted(f for f in list_dir(folder, stream) if f.lower().endswith(IMAGE_EXTENSIONS))
    return [os.path.join(folder, f) for f in names]


def n_test_images(n_files: int) -> int:
    """A fifth of a class's files are its test images, and at least one, so that every class is
    evaluated (the released split takes n // 5, the same for every class of 5 or more files)."""
    return max(1, n_files // 5)


def seeded_split(files: list[str], label: int, split_seed: int, n_test: int, train: list, test: list) -> None:
    """ImageNet-R's split rule: a class's files (sorted) permuted by a generator seeded with
    ``split_seed * 1000 + label``; the first ``n_test`` go to ``test``, the rest to ``train``."""
    g = torch.Generator().manual_seed(split_seed * 1000 + label)
    perm = torch.randperm(len(files), generator=g).tolist()
    for rank, i in enumerate(perm):
        (test if rank < n_test else train).append((files[i], label))


def _read_table(path: str, stream: str, n_cols: int = 2) -> dict[str, list[str]]:
    out = {}
    for n, line in enumerate(read_text_lines(path, stream), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < n_cols:
            raise DataError(f"{stream}: {os.path.abspath(path)} line {n} is malformed: {line.strip()!r}")
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
        where = f"image_class_labels.txt, image id {image_id}"
        item = (os.path.join(base, "images", rel), parse_int(labels[image_id][0], "seq-cub200", where) - 1)
        if is_train[image_id][0] not in ("0", "1"):
            raise DataError(f"seq-cub200: train_test_split.txt, image id {image_id}: {is_train[image_id][0]!r} "
                            f"is neither 1 (train) nor 0 (test); re-extract the dataset")
        (train if is_train[image_id][0] == "1" else test).append(item)
    check_labels("seq-cub200", [y for _, y in train + test], 200,
                 f"{os.path.join(base, 'image_class_labels.txt')} (classes 1..200, shown here as 0..199)")
    require_files([p for p, _ in train + test], "seq-cub200")
    return train, test


def _load_cars_annotations(path: str):
    import scipy.io

    read_bytes(require_file(path, "seq-cars196"), "seq-cars196")  # unreadable (EACCES) names the file
    try:
        ann = scipy.io.loadmat(path, squeeze_me=True)["annotations"]
        items = [(str(a["fname"]), int(a["class"]) - 1) for a in ann]
    except Exception as e:  # loadmat raises several types for a broken file
        raise DataError(f"seq-cars196: {path} is not a readable annotation file "
                        f"({type(e).__name__}: {one_line(e)}); re-download the devkit") from e
    check_labels("seq-cars196", [y for _, y in items], 196, f"{path} (classes 1..196, shown here as 0..195)",
                 require_all=False)
    return items


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


def scan_splits(name: str, train, test, n_classes: int, data_cfg) -> tuple[FileSplit, FileSplit, list[str]]:
    """Scan every listed file once, report the unreadable ones, check that every class keeps
    readable training images, and return (train split, test split, skipped paths)."""
    size = data_cfg.image_size or DEFAULT_SIZE
    paths = [p for p, _ in train + test]
    hw, good, bad = scan_images(paths, f"{name}: checking {len(paths)} images", data_cfg.verify_images)
    report_unreadable(name, bad)
    good_set = set(good)
    reasons = dict(bad)
    check_classes(name, train, 0, good_set, reasons, n_classes, "training")
    check_classes(name, test, len(train), good_set, reasons, n_classes, "test", required=False)

    def split(items, offset):
        keep = [i for i in range(len(items)) if i + offset in good_set]
        return FileSplit([items[i][0] for i in keep], torch.tensor([items[i][1] for i in keep], dtype=torch.long),
                         hw[[i + offset for i in keep]].reshape(-1, 2), size)

    return split(train, 0), split(test, len(train)), [p for p, _ in bad]


def released_views(name: str, augment: bool):
    """(training view, evaluation view, augmentation) of the released dataset class of ``name``
    (``datasets/seq_imagenet_r.py``, ``seq_cub200.py``, ``seq_cars196.py``)."""
    if name == "seq-imagenet-r":
        # TRANSFORM: RandomResizedCrop(224, bicubic) + flip; the buffer's view Resize((224, 224));
        # TEST_TRANSFORM: Resize((256, 256), bicubic) + CenterCrop(224).
        return (ReleasedView((224, 224), 224, augmented="resized-crop"), ReleasedView((256, 256), 224),
                ResizedCropAugment(224, enabled=augment))
    if name == "seq-cub200":
        # TRANSFORM: Resize((300, 300), bicubic) + RandomCrop(224) + flip;
        # TEST_TRANSFORM: Resize(256, bicubic) + CenterCrop(224).
        return (ReleasedView((300, 300), 224, augmented="crop"), ReleasedView(256, 224),
                CropAugment(300, 224, enabled=augment))
    # Cars-196: every image resized once (tensor Resize(224, bicubic, antialias) + CenterCrop(224))
    # and stored; TRANSFORM flips it, TEST_TRANSFORM takes it as it is.
    view = ReleasedView(224, 224, tensor_resize=True, augmented="flip")
    return view, view, Augment(flip=augment)


def file_stream(name: str, train, test, n_tasks: int, per_task: int, data_cfg) -> ContinualStream:
    train_split, test_split, skipped = scan_splits(name, train, test, n_tasks * per_task, data_cfg)
    aug = ResizedCropAugment(data_cfg.image_size or DEFAULT_SIZE, enabled=data_cfg.augment)
    if data_cfg.pipeline == "released":
        train_split.view, test_split.view, aug = released_views(name, data_cfg.augment)
    stream = ContinualStream.from_splits(name, train_split, test_split, n_tasks, per_task,
                                         aug, data_cfg.class_order, **loader_kwargs(data_cfg))
    stream.skipped_files = skipped
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
