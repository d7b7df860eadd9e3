"""Writes tiny datasets in each stream's on-disk layout (CIFAR pickles, MNIST IDX files, JPEG class
folders, CUB / Stanford Cars annotations), with known contents the tests check against."""
from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
from PIL import Image


def _jpeg(path: str, rng, h: int, w: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Smooth gradients plus noise: JPEG keeps them recognisable, resizing has real work to do.
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 256, 3)
    img = np.stack([(yy * 9 + xx * 5 + base[0]) % 256, (xx * 13 + base[1]) % 256, (yy * 7 + base[2]) % 256], -1)
    img = np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, quality=95)


def corrupt(path: str) -> None:
    """Truncate a JPEG after its header: it opens, but cannot be decoded."""
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3])


def truncate_after_header(path: str) -> None:
    """Replace an image by a noisy 48x48 JPEG cut at 70%: its header reads (size known), but
    decoding fails, so only a full decode finds it."""
    img = np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    Image.fromarray(img).save(path, format="JPEG", quality=95)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * 0.7)])


def write_cifar(root: str, n_classes: int = 10, per_class: int = 3, seed: int = 0) -> str:
    folder, names, key = (("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels")
                          if n_classes == 10 else ("cifar-100-python", ["train", "test"], "fine_labels"))
    path = os.path.join(root, folder)
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        labels = list(range(n_classes)) * per_class
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        with open(os.path.join(path, name), "wb") as f:
            pickle.dump({"data": data, key: labels}, f)
    return path


def _idx(path: str, arr: np.ndarray, gz: bool) -> None:
    header = (0x0800 + arr.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path + ".gz", "wb") as f:
            f.write(payload)
    else:
        with open(path, "wb") as f:
            f.write(payload)


def write_mnist(root: str, n_train: int = 40, n_test: int = 20, seed: int = 0):
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, n, gz in (("train", n_train, True), ("t10k", n_test, False)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = np.arange(n) % 10
        _idx(os.path.join(raw, f"{split}-images-idx3-ubyte"), x, gz)
        _idx(os.path.join(raw, f"{split}-labels-idx1-ubyte"), y, gz)
        out[split] = (x, y)
    return out


def write_tinyimagenet(root: str, per_class: int = 2, seed: int = 0) -> list[str]:
    base = os.path.join(root, "tiny-imagenet-200")
    rng = np.random.default_rng(seed)
    # wnids.txt in a non-sorted order: its order, not the sorted one, is the class order.
    wnids = [f"n{9999 - i:08d}" for i in range(200)]
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, "wnids.txt"), "w") as f:
        f.write("\n".join(wnids) + "\n")
    lines = []
    for c, w in enumerate(wnids):
        for k in range(per_class):
            _jpeg(os.path.join(base, "train", w, "images", f"{w}_{k}.JPEG"), rng, 64, 64)
        name = f"val_{c}.JPEG"
        _jpeg(os.path.join(base, "val", "images", name), rng, 64, 64)
        lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    with open(os.path.join(base, "val", "val_annotations.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return wnids


def write_imagenet_r(root: str, per_class: int = 5, seed: int = 0) -> str:
    base = os.path.join(root, "imagenet-r")
    rng = np.random.default_rng(seed)
    for c in range(200):
        for k in range(per_class + (c % 2)):  # odd classes have one more image
            h, w = (int(v) for v in rng.integers(12, 30, 2))
            _jpeg(os.path.join(base, f"n{c:08d}", f"img_{k}.jpg"), rng, h, w)
    return base


def write_cub(root: str, seed: int = 0) -> str:
    base = os.path.join(root, "CUB_200_2011")
    rng = np.random.default_rng(seed)
    images, labels, split = [], [], []
    i = 0
    for c in range(1, 201):
        for k in range(2):
            i += 1
            rel = f"{c:03d}.Bird_{c}/Bird_{c}_{k}.jpg"
            _jpeg(os.path.join(base, "images", rel), rng, 20, 24)
            images.append(f"{i} {rel}")
            labels.append(f"{i} {c}")
            split.append(f"{i} {1 if k == 0 else 0}")
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels), ("train_test_split.txt", split)):
        with open(os.path.join(base, name), "w") as f:
            f.write("\n".join(lines) + "\n")
    return base


def write_cars(root: str, seed: int = 0) -> str:
    import scipy.io

    base = os.path.join(root, "stanford_cars")
    rng = np.random.default_rng(seed)
    for split, folder, mat in (("train", "cars_train", os.path.join("devkit", "cars_train_annos.mat")),
                               ("test", "cars_test", "cars_test_annos_withlabels.mat")):
        rows = []
        for c in range(1, 197):
            fname = f"{split}_{c:05d}.jpg"
            _jpeg(os.path.join(base, folder, fname), rng, 18, 26)
            rows.append((0, 0, 25, 17, c, fname))
        ann = np.array(rows, dtype=[("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"),
                                    ("class", "O"), ("fname", "O")])
        os.makedirs(os.path.dirname(os.path.join(base, mat)), exist_ok=True)
        scipy.io.savemat(os.path.join(base, mat), {"annotations": ann})
    return base


def write_all(root: str) -> dict:
    """Every dataset under one data root; one corrupt JPEG in ImageNet-R's training files."""
    info = {"cifar10": write_cifar(root, 10), "cifar100": write_cifar(root, 100, per_class=2),
            "mnist": write_mnist(root), "tiny_wnids": write_tinyimagenet(root),
            "imagenet_r": write_imagenet_r(root), "cub": write_cub(root), "cars": write_cars(root)}
    bad = os.path.join(root, "imagenet-r", "n00000007", "img_2.jpg")
    corrupt(bad)
    info["corrupt"] = bad
    return info


def write_image_folder(root: str, classes: list[str], train: int = 4, val: int = 2, seed: int = 0) -> str:
    """An ImageFolder dataset: root/train/<class>/*.jpg and (val > 0) root/val/<class>/*.jpg."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for c in classes:
            for k in range(n):
                h, w = (int(v) for v in rng.integers(12, 24, 2))
                _jpeg(os.path.join(root, split, c, f"{c}_{k}.jpg"), rng, h, w)
    return root
