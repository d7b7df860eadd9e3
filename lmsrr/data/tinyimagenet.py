"""seq-tinyimg: TinyImageNet (200 classes, 64x64), 10 tasks x 20 classes, decoded once into memory.

Layout under ``--data-root`` (the official zip from http://cs231n.stanford.edu/tiny-imagenet-200.zip,
unpacked)::

    tiny-imagenet-200/wnids.txt                      200 class ids; their order is the class order
    tiny-imagenet-200/train/<wnid>/images/*.JPEG     500 training images per class
    tiny-imagenet-200/val/images/*.JPEG              10,000 images: the test split
    tiny-imagenet-200/val/val_annotations.txt        <file> <wnid> <bbox>, one line per val image

All 110,000 images are decoded once (threads, progress bar) into uint8 tensors; unreadable files
are reported and skipped. Augmentation as the released code: 4-pixel padded random crop, flip.
"""
from __future__ import annotations

import glob
import os

import torch

from lmsrr.data.augment import Augment
from lmsrr.data.common import loader_kwargs, plain_name, read_text_lines, require_dir, require_file, require_files
from lmsrr.data.images import check_classes, decode_all, report_unreadable
from lmsrr.data.registry import register_dataset
from lmsrr.data.stream import ContinualStream
from lmsrr.errors import DataError, DataNotFoundError

SOURCE = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
SIZE = 64


def tinyimagenet_items(root: str):
    """([(path, label)] train, [(path, label)] test) in the official layout."""
    base = require_dir(os.path.join(root, "tiny-imagenet-200"), "seq-tinyimg", "the folder tiny-imagenet-200",
                       SOURCE, "unzip it there or point --data-root at its parent (there is no --download)")
    wnids_txt = os.path.join(base, "wnids.txt")
    wnids = [plain_name(line.strip(), "seq-tinyimg", f"{os.path.abspath(wnids_txt)} line {n}")
             for n, line in enumerate(read_text_lines(wnids_txt, "seq-tinyimg"), 1) if line.strip()]
    if len(set(wnids)) != 200:
        raise DataError(f"seq-tinyimg: {os.path.abspath(wnids_txt)} lists {len(set(wnids))} distinct classes, "
                        f"expected 200; re-extract the dataset")
    if len(wnids) != 200:
        raise DataError(f"seq-tinyimg: {os.path.abspath(wnids_txt)} lists a class more than once; "
                        f"re-extract the dataset")
    label = {w: i for i, w in enumerate(wnids)}
    train = []
    for w in wnids:
        folder = os.path.join(base, "train", w, "images")
        files = sorted(glob.glob(os.path.join(folder, "*.JPEG")))
        if not files:
            raise DataNotFoundError(f"seq-tinyimg: incomplete dataset: no images in {os.path.abspath(folder)}")
        train += [(p, label[w]) for p in files]
    ann = require_file(os.path.join(base, "val", "val_annotations.txt"), "seq-tinyimg")
    test = []
    for n, line in enumerate(read_text_lines(ann, "seq-tinyimg"), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or parts[1] not in label:
            raise DataError(f"seq-tinyimg: {os.path.abspath(ann)} line {n} is malformed or names an unknown "
                            f"class: {line.strip()!r}")
        name = plain_name(parts[0], "seq-tinyimg", f"{os.path.abspath(ann)} line {n}")
        test.append((os.path.join(base, "val", "images", name), label[parts[1]]))
    require_files([p for p, _ in test], "seq-tinyimg")
    return train, test


@register_dataset("seq-tinyimg")
def seq_tinyimg(data_cfg) -> ContinualStream:
    train, test = tinyimagenet_items(data_cfg.data_root)
    tensors, bad, kept = [], [], []
    for items, what in ((train, "train"), (test, "test")):
        x, good, b = decode_all([p for p, _ in items], SIZE, f"seq-tinyimg: decoding {what} images")
        y = torch.tensor([items[i][1] for i in good], dtype=torch.long)
        tensors += [x, y]
        bad += b
        kept.append((items, good))
    report_unreadable("seq-tinyimg", bad)
    for (items, good), what in zip(kept, ("training", "test")):
        check_classes("seq-tinyimg", items, 0, set(good), dict(bad), 200, what, required=what == "training")
    aug = Augment(pad=4, flip=True) if data_cfg.augment else Augment()
    stream = ContinualStream("seq-tinyimg", *tensors, n_tasks=10, classes_per_task=20, augment=aug,
                             class_order=data_cfg.class_order, **loader_kwargs(data_cfg))
    stream.skipped_files = [p for p, _ in bad]
    return stream
