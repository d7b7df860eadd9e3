"""Methods that read whole tasks (joint, iCaRL, A-GEM, EWC, NMC) on a stream decoded from disk.

The generated CUB-200 layout: 200 classes in 10 tasks, one training and one test image per class.
"""
import json

import pytest
import torch

from loader_params import LOADERS
from lmsrr.cli import main
from lmsrr.config import Config
from lmsrr.data import build_stream
from lmsrr.data.augment import to_float
from lmsrr.data.splits import FileSplit

SOURCE = "vit_tiny_patch16_224(input_size=8,patch_size=4,embed_dim=16,depth=2,num_heads=1)"
TINY = ["--pretrained", "none", "--sources", SOURCE, "--trainable-blocks", "1", "--epochs", "1", "--batch-size", "8",
        "--buffer-size", "200", "--replay-batch-size", "8", "--image-size", "16", "--loader-workers", "1",
        "--threads", "1", "--no-progress", "--stop-after", "2"]


def cub_method(data_root, name: str, loader: str = "torch"):
    # Imported here, not at collection: lmsrr.methods imports triton, and tests/kernels must set
    # TRITON_INTERPRET before the first triton import to run its kernels in this process.
    from lmsrr.methods import build_method
    from lmsrr.models import build_net

    root, _ = data_root
    cfg = Config().replace(data={"stream": "seq-cub200", "data_root": root, "image_size": 16,
                                 "loader": loader, "loader_workers": 1, "eval_batch_size": 7},
                           model={"sources": SOURCE, "pretrained": "none", "trainable_blocks": 1},
                           method={"name": name, "buffer_size": 200})
    stream = build_stream(cfg.data)
    net = build_net(cfg.model, stream.n_classes)
    return build_method(cfg, net, stream, torch.device("cpu")), stream


def images_of(stream, tasks):
    """(uint8 x, y) of the training images of ``tasks`` as the stream serves them un-augmented."""
    xs, ys = zip(*(b for t in tasks for b in stream.train_images(t, 64, torch.device("cpu"))))
    return torch.cat(xs), torch.cat(ys)


def as_multiset(x, y):
    return sorted(zip(y.tolist(), x.flatten(1).tolist()))


@pytest.mark.parametrize("name", ["joint", "icarl", "agem", "ewc", "nmc"])
def test_whole_task_methods_train_on_a_stream_read_from_disk(data_root, tmp_path, name):
    root, _ = data_root
    code = main(["--stream", "seq-cub200", "--method", name, "--data-root", root,
                 "--out-dir", str(tmp_path), "--run-name", "r", *TINY])
    assert code == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["tasks_trained"] == 2 and len(res["acc_class_il"]) == 2


@pytest.mark.parametrize("loader", LOADERS)
def test_joint_batches_cover_the_union_of_tasks_from_disk(data_root, loader):
    m, stream = cub_method(data_root, "joint", loader)
    assert isinstance(stream.train_split(0)[0], FileSplit)
    batches = list(m.train_batches(2, 8, torch.Generator().manual_seed(0)))
    assert len(batches) == m.num_train_batches(2, 8) == 8  # 60 images in batches of 8
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[2] for b in batches])
    assert as_multiset(x, y) == as_multiset(*images_of(stream, range(3)))


def test_nmc_means_from_disk_are_the_per_class_averages(data_root):
    m, stream = cub_method(data_root, "nmc")
    for t in range(2):
        m.end_task(t)
    x, y = images_of(stream, range(2))
    m.net.eval()
    with torch.no_grad():
        feats = m.net.fused_features(to_float(x))
    for c in range(40):
        torch.testing.assert_close(m.means[c], feats[y == c].mean(0), atol=1e-5, rtol=1e-5)
    assert m.has_mean.sum() == 40


def test_icarl_exemplars_from_disk_are_positions_of_their_class(data_root):
    m, stream = cub_method(data_root, "icarl")
    m.begin_task(0)
    m.end_task(0)
    split, pos = stream.train_split(0)
    assert sorted(m.exemplars) == list(range(20))
    # 200 // 20 = 10 per class, but each class has one training image: that one is kept.
    assert all(torch.equal(m.exemplars[c], pos[split.y[pos] == c]) for c in range(20))
    m.begin_task(1)
    train_split, train_pos = m.training_split(1)
    assert train_split is split
    assert sorted(split.y[train_pos].tolist()) == list(range(40))  # task 1 plus the exemplars


def test_agem_memory_from_disk_holds_the_finished_task(data_root):
    m, stream = cub_method(data_root, "agem")
    m.end_task(0)
    x, y = images_of(stream, [0])
    assert len(m.buffer) == 20  # 200 slots, 20 images: all kept
    assert as_multiset(m.buffer.x[:20], m.buffer.y[:20]) == as_multiset(x, y)


def test_domain_union_holds_every_tasks_own_transformed_images(data_root):
    from lmsrr.config import DataConfig

    root, _ = data_root
    stream = build_stream(DataConfig(stream="rot-mnist", data_root=root))
    split, pos = stream.union_train_split(range(3))
    parts = [stream.train_split(t) for t in range(3)]
    assert not torch.equal(parts[0][0].x, parts[2][0].x)  # the tasks' rotations differ
    assert torch.equal(split.x[pos], torch.cat([s.x[p] for s, p in parts]))
    assert torch.equal(split.y[pos], torch.cat([s.y[p] for s, p in parts]))
