"""seq-digits: scikit-learn's bundled handwritten digits (1,797 real 8x8 images), 5 tasks x 2.

Ships inside scikit-learn, so it needs no download. The train/test split is fixed: stratified,
20% test, ``random_state=0`` (1,437 train / 360 test images).
"""
from __future__ import annotations

import numpy as np
import torch

from lmsrr.data.augment import Augment
from lmsrr.data.common import loader_kwargs
from lmsrr.data.registry import register_dataset
from lmsrr.data.stream import ContinualStream


def load_digits_tensors():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    # Pixel values are 0..16; scale to uint8 0..255 like every other stream.
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # N,1,8,8
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    return (torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte))


@register_dataset("seq-digits")
def seq_digits(data_cfg) -> ContinualStream:
    xtr, ytr, xte, yte = load_digits_tensors()
    # Digits are not mirror-symmetric: shift-only augmentation.
    return ContinualStream("seq-digits", xtr, ytr, xte, yte, n_tasks=5, classes_per_task=2,
                           augment=Augment(pad=1, flip=False) if data_cfg.augment else Augment(),
                           class_order=data_cfg.class_order, **loader_kwargs(data_cfg))
