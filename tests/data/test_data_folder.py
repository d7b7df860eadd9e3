"""--stream folder:PATH: one's own ImageFolder dataset, split into --tasks by class."""
import json
import os
from collections import Counter

import pytest
import torch

import datagen
from loader_params import LOADERS
from lmsrr.cli import main
from lmsrr.config import DataConfig
from lmsrr.data import build_stream
from lmsrr.data.folder import FolderStream
from lmsrr.errors import DataError

# Deliberately not in sorted order: the sorted folder names are the natural class order.
CLASSES = ["zebra", "apple", "mango", "cat", "dog", "kiwi"]
SORTED = sorted(CLASSES)
TINY = ["--pretrained", "none", "--sources", "vit_tiny_patch16_224(input_size=8,patch_size=4,embed_dim=16,depth=2,num_heads=1)",
        "--trainable-blocks", "1", "--epochs", "1", "--batch-size", "8", "--buffer-size", "12",
        "--replay-batch-size", "4", "--image-size", "16", "--loader-workers", "1", "--threads", "1",
        "--no-progress"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return datagen.write_image_folder(str(tmp_path_factory.mktemp("folder")), CLASSES, train=4, val=2)


def build(path, loader="torch", **kw):
    kw.setdefault("tasks", 3)
    return build_stream(DataConfig(stream=f"folder:{path}", loader=loader, loader_workers=1, image_size=16, **kw))


def folder_of(path):
    return os.path.basename(os.path.dirname(path))


def task_folders(s, t):
    """Folder names of task t's training and test files, read from the files' paths."""
    (tr, ptr), (te, pte) = s.train_split(t), s.test_split(t)
    return ({folder_of(tr.paths[i]) for i in ptr.tolist()}, {folder_of(te.paths[i]) for i in pte.tolist()})


@pytest.mark.parametrize("loader", LOADERS)
def test_folder_stream_trains_through_the_cli(folder, tmp_path, capsys, loader):
    code = main(["--stream", "folder:" + folder, "--tasks", "3", "--loader", loader, "--out-dir", str(tmp_path),
                 "--run-name", "r", *TINY])
    assert code == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["complete"] and res["tasks_trained"] == 3 and res["stream"] == "folder:" + folder
    acc = res["acc_class_il"]
    assert len(acc) == 3 and [len(row) for row in acc] == [1, 2, 3]
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["data"]["tasks"] == 3 and cfg["data"]["stream"] == "folder:" + folder


def test_run_directory_is_named_after_the_folder(folder, tmp_path):
    assert main(["--stream", "folder:" + folder + "/", "--tasks", "3", "--stop-after", "1", "--loader", "torch",
                 "--out-dir", str(tmp_path), *TINY]) == 0
    (run,) = os.listdir(tmp_path)
    assert run.startswith(f"folder-{os.path.basename(folder)}-lmsrr-")


def test_classes_map_to_tasks_in_sorted_folder_order(folder):
    s = build(folder)
    assert isinstance(s, FolderStream) and (s.n_tasks, s.n_classes) == (3, 6)
    for t in range(3):
        expected = set(SORTED[2 * t: 2 * t + 2])
        assert task_folders(s, t) == (expected, expected)
        assert s.task_class_names(t) == SORTED[2 * t: 2 * t + 2]
    # Every file's label is its folder's index in the sorted list; val/ is the test split.
    assert all(y == SORTED.index(folder_of(p)) for p, y in zip(s._train.paths, s._train.y.tolist()))
    assert sorted(s._test.paths) == sorted(os.path.join(folder, "val", c, f"{c}_{k}.jpg")
                                           for c in CLASSES for k in range(2))
    assert len(s._train) == 24 and len(s._test) == 12


def test_class_order_permutes_the_folders_before_dealing_them_out(folder):
    s = build(folder, class_order="seed:5")
    order = torch.randperm(6, generator=torch.Generator().manual_seed(5)).tolist()
    for t in range(3):
        expected = [SORTED[order[2 * t]], SORTED[order[2 * t + 1]]]
        assert s.task_class_names(t) == expected
        assert task_folders(s, t)[0] == set(expected)


@pytest.mark.parametrize("spec,tasks,sizes", [("4,1,1", 0, (4, 1, 1)), ("4,1,1", 3, (4, 1, 1)),
                                              ("3", 0, (3, 3)), ("2", 3, (2, 2, 2)), ("", 2, (3, 3))])
def test_classes_per_task(folder, spec, tasks, sizes):
    s = build(folder, tasks=tasks, classes_per_task=spec)
    assert s.n_tasks == len(sizes)
    lo = 0
    for t, n in enumerate(sizes):
        assert s.task_class_range(t) == (lo, lo + n) and s.seen_classes(t) == lo + n
        assert task_folders(s, t)[0] == set(SORTED[lo: lo + n])
        lo += n


def test_without_val_each_class_is_split_by_the_seeded_rule(tmp_path):
    root = datagen.write_image_folder(str(tmp_path), ["b", "a", "c"], train=11, val=0)
    s = build(root, split_seed=2)
    test = set()
    for label, c in enumerate(["a", "b", "c"]):
        files = sorted(os.path.join(root, "train", c, f) for f in os.listdir(os.path.join(root, "train", c)))
        perm = torch.randperm(11, generator=torch.Generator().manual_seed(2 * 1000 + label)).tolist()
        test |= {files[i] for i in perm[:2]}  # 11 // 5 = 2 test images per class
    assert set(s._test.paths) == test and len(s._train) == 27
    assert not set(s._train.paths) & test
    assert set(build(root, split_seed=3)._test.paths) != test


def test_nested_folders_and_hidden_entries(tmp_path):
    root = datagen.write_image_folder(str(tmp_path), ["x", "y", "z"], train=2, val=1)
    os.makedirs(os.path.join(root, "train", "x", "sub"))
    os.rename(os.path.join(root, "train", "x", "x_1.jpg"), os.path.join(root, "train", "x", "sub", "x_1.jpg"))
    os.makedirs(os.path.join(root, "train", ".ipynb_checkpoints"))
    (tmp_path / "train" / "y" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "train" / "y" / "notes.txt").write_text("not an image")
    s = build(root)
    assert s.n_classes == 3 and len(s._train) == 6
    assert os.path.join(root, "train", "x", "sub", "x_1.jpg") in s._train.paths


def test_corrupt_files_are_skipped_and_an_all_corrupt_class_is_an_error(tmp_path):
    root = datagen.write_image_folder(str(tmp_path), ["a", "b", "c"], train=3, val=1)
    bad = os.path.join(root, "train", "b", "b_0.jpg")
    datagen.corrupt(bad)
    s = build(root)
    assert s.skipped_files == [bad] and len(s._train) == 8
    for k in (1, 2):
        datagen.corrupt(os.path.join(root, "train", "b", f"b_{k}.jpg"))
    with pytest.raises(DataError, match=f"every training image of class folder {os.path.join(root, 'train', 'b')} "
                                        "is unreadable"):
        build(root)


@pytest.mark.parametrize("loader", LOADERS)
def test_two_shards_see_every_training_image_once(folder, loader):
    s = build(folder, loader=loader)
    batches = lambda shard: list(s.train_batches(1, 3, torch.Generator().manual_seed(0), "cpu", shard, 2))
    key = lambda bs: Counter((tuple(x.flatten().tolist()), int(yy)) for x, _, y in bs for x, yy in zip(x, y))
    whole = list(s.train_batches(1, 3, torch.Generator().manual_seed(0), "cpu"))
    assert key(batches(0)) + key(batches(1)) == key(whole) and sum(key(whole).values()) == 8


def _layout(tmp_path, case):
    root = str(tmp_path / "ds")
    if case == "empty class folder":
        datagen.write_image_folder(root, ["a", "b", "c"], train=2, val=1)
        for f in os.listdir(os.path.join(root, "train", "b")):
            os.remove(os.path.join(root, "train", "b", f))
        return root, f"the class folder {os.path.join(root, 'train', 'b')} holds no"
    if case == "class only in val":
        datagen.write_image_folder(root, ["a", "b", "c"], train=2, val=1)
        datagen.write_image_folder(os.path.join(str(tmp_path), "extra"), ["d"], train=0, val=1)
        os.rename(os.path.join(str(tmp_path), "extra", "val", "d"), os.path.join(root, "val", "d"))
        return root, "class folder(s) d exist only in"
    if case == "class missing from val":
        datagen.write_image_folder(root, ["a", "b", "c"], train=2, val=1)
        for f in os.listdir(os.path.join(root, "val", "c")):
            os.remove(os.path.join(root, "val", "c", f))
        return root, "class 'c' has no images in"
    if case == "no class folders":
        os.makedirs(os.path.join(root, "train"))
        return root, "no images:"
    if case == "no image files":
        for c in "abc":
            os.makedirs(os.path.join(root, "train", c))
            open(os.path.join(root, "train", c, "readme.txt"), "w").close()
        return root, "no images: the class folders under"
    if case == "no train folder":
        datagen.write_image_folder(os.path.join(root, "x"), ["a"], train=1, val=0)
        return root, "has no train/ folder"
    if case == "not a folder":
        return os.path.join(root, "missing"), "is not a folder"
    if case == "one image without val":
        datagen.write_image_folder(root, ["a", "b", "c"], train=1, val=0)
        return root, "holds 1 image; without val/ every class needs at least 2"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["empty class folder", "class only in val", "class missing from val",
                                  "no class folders", "no image files", "no train folder", "not a folder",
                                  "one image without val"])
def test_bad_layouts_are_one_message_and_exit_2(tmp_path, capsys, case):
    root, message = _layout(tmp_path, case)
    code = main(["--stream", "folder:" + root, "--tasks", "3", "--loader", "torch",
                 "--out-dir", str(tmp_path / "runs"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and message in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags,message", [
    (["--tasks", "4"], "6 classes do not split evenly into 4 tasks; give each task's size, e.g. "
                       "--classes-per-task 3,1,1,1"),
    (["--tasks", "7"], "6 classes do not split evenly into 7 tasks"),
    (["--classes-per-task", "4"], "6 classes do not split into tasks of 4"),
    (["--classes-per-task", "2,2,1"], "--classes-per-task 2,2,1 sums to 5, but the folder has 6 classes"),
    (["--tasks", "2", "--classes-per-task", "2,2,2"], "lists 3 tasks but --tasks is 2"),
    (["--tasks", "2", "--classes-per-task", "2"], "make 3 tasks, but --tasks is 2"),
    (["--classes-per-task", "2,x"], "classes_per_task='2,x': use one positive integer or one per task"),
    (["--classes-per-task", "0,6"], "classes_per_task='0,6'"),
    ([], "needs --tasks N"),
    (["--tasks", "-1"], "tasks must be >= 1"),
])
def test_task_split_errors(folder, tmp_path, capsys, flags, message):
    code = main(["--stream", "folder:" + folder, "--loader", "torch", "--out-dir", str(tmp_path), *flags, *TINY])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err


@pytest.mark.parametrize("stream,flags,message", [
    ("seq-digits", ["--tasks", "3"], "--tasks and --classes-per-task apply only to folder:PATH streams, not to "
                                     "'seq-digits'"),
    ("folder", ["--tasks", "3"], "apply only to folder:PATH streams, not to 'folder'"),
    ("folder:", ["--tasks", "3"], "name the dataset folder after the colon"),
    ("folder", [], "unknown stream 'folder' (did you mean 'folder:PATH'?)"),
])
def test_stream_name_errors(tmp_path, capsys, stream, flags, message):
    code = main(["--stream", stream, "--out-dir", str(tmp_path), *flags, *TINY])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
