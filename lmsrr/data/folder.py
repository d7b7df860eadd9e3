"""folder:PATH: one's own images in an ImageFolder layout, split into tasks by class.

Layout (one folder per class; class names are the folder names, and their sorted order is the
natural class order; files may sit in subfolders of a class folder)::

    PATH/train/<class>/*.{jpg,jpeg,png,webp}
    PATH/val/<class>/*.{jpg,jpeg,png,webp}     optional: the test split

Without ``val/`` each class's files are split like ImageNet-R's: sorted by path, permuted with a
generator seeded with ``--split-seed * 1000 + class index``, the first fifth (at least one) is the
test split. Names starting with a dot are ignored (``.ipynb_checkpoints``, ``.DS_Store``).

Tasks: ``--tasks N`` splits the classes evenly (the class count must divide by N), or
``--classes-per-task`` gives each task's size (``4,2,2``: a first task of 4 classes, then 2 and
2; one number: that many per task). ``--class-order seed:K`` permutes the classes before they are
dealt out. Images are read like ImageNet-R's: scanned once (unreadable files reported and
skipped), decoded per batch at ``--image-size`` by the torch or DALI loader.
"""
from __future__ import annotations

import os

from lmsrr.data.augment import ResizedCropAugment
from lmsrr.data.common import list_dir, loader_kwargs
from lmsrr.data.files import DEFAULT_SIZE, IMAGE_EXTENSIONS, n_test_images, scan_splits, seeded_split
from lmsrr.data.registry import register_dataset, split_stream_name
from lmsrr.data.stream import ContinualStream
from lmsrr.errors import ConfigError, DataError, DataNotFoundError

LAYOUT = "PATH/train/<class>/<images> and optionally PATH/val/<class>/<images>"


def _visible(names):
    return sorted(n for n in names if not n.startswith("."))


def class_folders(split_dir: str, stream: str) -> list[str]:
    return [d for d in _visible(list_dir(split_dir, stream)) if os.path.isdir(os.path.join(split_dir, d))]


def class_images(folder: str, stream: str) -> list[str]:
    """Image files under a class folder (subfolders included), sorted by path."""
    out = []
    for entry in _visible(list_dir(folder, stream)):
        full = os.path.join(folder, entry)
        if os.path.isdir(full):
            out += class_images(full, stream)
        elif entry.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(full):
            out.append(full)
    return sorted(out)


def folder_items(path: str, stream: str, split_seed: int = 0):
    """(class names, [(file, label)] train, [(file, label)] test, whether val/ gave the test split)."""
    if not os.path.isdir(path):
        raise DataNotFoundError(f"{stream}: {os.path.abspath(path)} is not a folder; expected {LAYOUT}")
    train_dir, val_dir = os.path.join(path, "train"), os.path.join(path, "val")
    if not os.path.isdir(train_dir):
        raise DataNotFoundError(f"{stream}: {os.path.abspath(path)} has no train/ folder; expected {LAYOUT}")
    classes = class_folders(train_dir, stream)
    if not classes:
        raise DataError(f"{stream}: no images: {os.path.abspath(train_dir)} holds no class folders; "
                        f"expected {LAYOUT}")
    train_files = {c: class_images(os.path.join(train_dir, c), stream) for c in classes}
    if not any(train_files.values()):
        raise DataError(f"{stream}: no images: the class folders under {os.path.abspath(train_dir)} hold no "
                        f"{'/'.join(IMAGE_EXTENSIONS)} files")
    has_val = os.path.isdir(val_dir)
    val_files = {}
    if has_val:
        val_classes = class_folders(val_dir, stream)
        only_val = [c for c in val_classes if c not in train_files]
        if only_val:
            raise DataError(f"{stream}: class folder(s) {', '.join(only_val[:5])} exist only in "
                            f"{os.path.abspath(val_dir)}; every class needs training images in train/<class>/")
        val_files = {c: class_images(os.path.join(val_dir, c), stream) for c in val_classes}
    train, test = [], []
    for label, c in enumerate(classes):
        files = train_files[c]
        if not files:
            raise DataError(f"{stream}: the class folder {os.path.abspath(os.path.join(train_dir, c))} holds no "
                            f"{'/'.join(IMAGE_EXTENSIONS)} files; add images or remove the folder")
        if has_val:
            if not val_files.get(c):
                raise DataError(f"{stream}: class {c!r} has no images in {os.path.abspath(os.path.join(val_dir, c))}; "
                                f"with a val/ folder every class needs validation images (or remove val/ to "
                                f"split train/ by --split-seed)")
            train += [(f, label) for f in files]
            test += [(f, label) for f in val_files[c]]
        else:
            if len(files) < 2:
                raise DataError(f"{stream}: the class folder {os.path.abspath(os.path.join(train_dir, c))} holds 1 "
                                f"image; without val/ every class needs at least 2 (train and test)")
            seeded_split(files, label, split_seed, n_test_images(len(files)), train, test)
    return classes, train, test, has_val


def task_sizes(n_classes: int, tasks: int, counts: tuple[int, ...], stream: str) -> tuple[int, ...]:
    """The number of classes of each task, from --tasks and --classes-per-task (validated here,
    where the number of classes is known)."""
    if len(counts) > 1:
        sizes = counts
    elif len(counts) == 1:
        if n_classes % counts[0]:
            raise ConfigError(f"{stream}: {n_classes} classes do not split into tasks of {counts[0]}; "
                              f"give one size per task, e.g. --classes-per-task {_example(n_classes, tasks or 2)}")
        sizes = (counts[0],) * (n_classes // counts[0])
        if tasks and len(sizes) != tasks:
            raise ConfigError(f"{stream}: {n_classes} classes in tasks of {counts[0]} make {len(sizes)} tasks, "
                              f"but --tasks is {tasks}")
    else:
        if tasks > n_classes or n_classes % tasks:
            raise ConfigError(f"{stream}: {n_classes} classes do not split evenly into {tasks} tasks; "
                              f"give each task's size, e.g. --classes-per-task {_example(n_classes, tasks)}")
        sizes = (n_classes // tasks,) * tasks
    if sum(sizes) != n_classes:
        raise ConfigError(f"{stream}: --classes-per-task {','.join(map(str, sizes))} sums to {sum(sizes)}, "
                          f"but the folder has {n_classes} classes")
    return tuple(sizes)


def _example(n_classes: int, tasks: int) -> str:
    """A valid uneven split to suggest: the remainder goes to the first task."""
    tasks = max(1, min(tasks, n_classes))
    rest = n_classes // tasks
    return ",".join(map(str, [n_classes - rest * (tasks - 1)] + [rest] * (tasks - 1)))


class FolderStream(ContinualStream):
    """A class-incremental stream whose tasks may differ in size: task t owns the labels
    bounds[t] .. bounds[t+1]-1 in the chosen class order."""

    @classmethod
    def with_task_sizes(cls, name: str, train, test, sizes: tuple[int, ...], augment, class_order: str,
                        class_names: list[str], loader: str = "torch", workers: int = 0):
        self = cls.from_splits(name, train, test, 1, sum(sizes), augment, class_order, loader, workers)
        self.n_tasks = len(sizes)
        self.task_sizes = sizes
        # An int when the tasks are equal, as for the fixed streams; the sizes otherwise.
        self.classes_per_task = sizes[0] if len(set(sizes)) == 1 else sizes
        self.bounds = [0]
        for s in sizes:
            self.bounds.append(self.bounds[-1] + s)
        self.class_names = class_names  # class_names[original label]: its folder name
        return self

    def task_class_range(self, t: int) -> tuple[int, int]:
        return self.bounds[t], self.bounds[t + 1]

    def seen_classes(self, t: int) -> int:
        return self.bounds[t + 1]

    def task_class_names(self, t: int) -> list[str]:
        """The folder names of task t's classes, in label order."""
        lo, hi = self.task_class_range(t)
        return [self.class_names[int(self.order[i])] for i in range(lo, hi)]


@register_dataset("folder", takes_path=True)
def folder_stream(data_cfg) -> FolderStream:
    _, path = split_stream_name(data_cfg.stream)
    name = data_cfg.stream
    classes, train, test, _ = folder_items(path, name, data_cfg.split_seed)
    sizes = task_sizes(len(classes), data_cfg.tasks, data_cfg.class_counts, name)
    train_split, test_split, skipped = scan_splits(name, train, test, len(classes), data_cfg)
    aug = ResizedCropAugment(data_cfg.image_size or DEFAULT_SIZE, enabled=data_cfg.augment)
    stream = FolderStream.with_task_sizes(name, train_split, test_split, sizes, aug, data_cfg.class_order,
                                          classes, **loader_kwargs(data_cfg))
    stream.skipped_files = skipped
    return stream

