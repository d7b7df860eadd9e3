"""Dataset content is checked before training: each damaged file is one message naming the file
(or the class folder) and what is wrong, exit status 2 through the CLI; complete variants load."""
import builtins
import errno
import gzip
import os
import pickle

import numpy as np
import pytest

import datagen
from lmsrr.cli import main
from lmsrr.config import DataConfig
from lmsrr.data import build_stream
from lmsrr.errors import DataError, UserError

TINY = ["--pretrained", "none", "--sources", "vit_tiny_patch16_224(input_size=8,patch_size=4,embed_dim=16,depth=2,num_heads=1)",
        "--trainable-blocks", "1", "--epochs", "1", "--batch-size", "16", "--buffer-size", "16",
        "--replay-batch-size", "8", "--image-size", "16", "--loader", "torch", "--loader-workers", "1",
        "--threads", "1", "--no-progress"]


def build(root, name, **kw):
    return build_stream(DataConfig(stream=name, data_root=str(root), loader="torch", loader_workers=1, **kw))


def cli(capsys, root, stream, *extra):
    code = main(["--stream", stream, "--data-root", str(root), "--out-dir", os.path.join(str(root), "runs"),
                 *TINY, *extra])
    return code, capsys.readouterr().err


def rewrite_batch(path, edit, protocol=pickle.DEFAULT_PROTOCOL):
    with open(path, "rb") as f:
        d = pickle.load(f)
    d = edit(d)
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=protocol)


# ------------------------------------------------------------------ CIFAR
def test_labels_shorter_than_images_is_refused_naming_the_file(tmp_path, capsys):
    # Before: 40 missing labels trained with exit 0, every later label on the wrong picture.
    path = datagen.write_cifar(str(tmp_path), 10, per_class=20)
    batch = os.path.join(path, "data_batch_2")
    rewrite_batch(batch, lambda d: {**d, "labels": d["labels"][:-40]})
    code, err = cli(capsys, tmp_path, "seq-cifar10")
    assert code == 2 and "Traceback" not in err
    assert batch in err and "200 images but 160 labels" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("edit,message", [
    (lambda d: [d["data"], d["labels"]], "it holds a list, not a dict"),
    (lambda d: {"labels": d["labels"]}, "it has no 'data' entry"),
    (lambda d: {**d, "labels": [17] + d["labels"][1:]}, "label 17 at position 0 is out of range 0..9"),
    (lambda d: {**d, "labels": [-1] + d["labels"][1:]}, "label -1 at position 0 is out of range"),
    (lambda d: {**d, "labels": [str(v) for v in d["labels"]]}, "'labels' has dtype <U1, expected integers"),
    (lambda d: {**d, "data": d["data"][:, :3000]}, "'data' has 3000 values per image, expected 3072"),
    (lambda d: {**d, "data": d["data"].astype(np.float32)}, "'data' has dtype float32, expected integers"),
    (lambda d: {**d, "data": d["data"].astype(np.int32) * 2}, "'data' holds values outside 0..255"),
    (lambda d: {**d, "data": d["data"].reshape(-1, 3, 32, 32)}, "'data' has 4 dimension(s)"),
])
def test_malformed_cifar_batch_names_the_file_and_the_problem(tmp_path, edit, message):
    path = datagen.write_cifar(str(tmp_path), 10)
    rewrite_batch(os.path.join(path, "data_batch_4"), edit)
    with pytest.raises(DataError) as e:
        build(tmp_path, "seq-cifar10")
    assert os.path.join(path, "data_batch_4") in str(e.value) and message in str(e.value)


def test_a_class_missing_from_every_training_batch_is_refused(tmp_path):
    path = datagen.write_cifar(str(tmp_path), 10)
    for i in range(1, 6):
        rewrite_batch(os.path.join(path, f"data_batch_{i}"),
                      lambda d: {**d, "labels": [v if v != 9 else 8 for v in d["labels"]]})
    with pytest.raises(DataError, match=r"no sample of class\(es\) 9 \(of 10\)"):
        build(tmp_path, "seq-cifar10")


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_pickles_with_bytes_keys_load_like_str_keys(tmp_path, protocol):
    path = datagen.write_cifar(str(tmp_path), 100, per_class=2)
    with open(os.path.join(path, "train"), "rb") as f:
        original = pickle.load(f)
    for name in ("train", "test"):  # what a Python 3 re-save of encoding='bytes' batches holds
        rewrite_batch(os.path.join(path, name), lambda d: {k.encode(): v for k, v in d.items()}, protocol)
    s = build(tmp_path, "seq-cifar100")
    expected = np.asarray(original["data"]).reshape(-1, 3, 32, 32)
    assert np.array_equal(s._train.x.numpy(), expected)
    assert s._train.y.tolist() == [int(s.order.argsort()[v]) for v in original["fine_labels"]]


def test_a_pickle_that_would_call_a_function_is_refused_before_calling_it(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.remove, (str(tmp_path / "victim"),))

    (tmp_path / "victim").write_text("still here")
    path = datagen.write_cifar(str(tmp_path), 10)
    with open(os.path.join(path, "test_batch"), "wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f)
    with pytest.raises(DataError, match=r"refers to (posix|os|nt)\.(remove|unlink)"):
        build(tmp_path, "seq-cifar10")
    assert (tmp_path / "victim").read_text() == "still here"


def _deny(monkeypatch, suffix):
    """Reading files ending in ``suffix`` fails with EACCES (the tests run as root, where chmod
    000 does not stop a read)."""
    real = builtins.open

    def fake(file, *a, **k):
        if str(file).endswith(suffix):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real(file, *a, **k)

    monkeypatch.setattr(builtins, "open", fake)


def test_unreadable_cifar_file_names_the_file(tmp_path, capsys, monkeypatch):
    path = datagen.write_cifar(str(tmp_path), 10)
    _deny(monkeypatch, "data_batch_3")
    code, err = cli(capsys, tmp_path, "seq-cifar10")
    assert code == 2 and "Traceback" not in err
    assert f"cannot read {os.path.join(path, 'data_batch_3')}: Permission denied" in err


def test_download_onto_a_data_root_that_is_a_file(tmp_path, capsys):
    root = tmp_path / "not-a-folder"
    root.write_text("x")
    for stream in ("seq-cifar10", "rot-mnist"):
        # the run directory elsewhere: its own check (a file in the way) would come first
        code, err = cli(capsys, root, stream, "--download", "--out-dir", str(tmp_path / "runs"))
        assert code == 2 and "Traceback" not in err
        assert f"--data-root {root} is a file, not a folder" in err


# ------------------------------------------------------------------ MNIST
def test_mnist_damage_names_the_file(tmp_path):
    datagen.write_mnist(str(tmp_path))
    raw = tmp_path / "MNIST" / "raw"
    images_gz = raw / "train-images-idx3-ubyte.gz"
    good = images_gz.read_bytes()
    images_gz.write_bytes(good[:20] + bytes(64) + good[84:])  # deflate stream damaged
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is not a readable gzip file"):
        build(tmp_path, "rot-mnist")
    images_gz.write_bytes(gzip.compress((0x0803).to_bytes(4, "big") + bytes(5)))
    with pytest.raises(DataError, match="truncated inside its header"):
        build(tmp_path, "rot-mnist")
    datagen.write_mnist(str(tmp_path))
    labels = raw / "t10k-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[8 + 5] = 12
    labels.write_bytes(bytes(data))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: label 12 at position 5 is out of range 0..9"):
        build(tmp_path, "rot-mnist")
    datagen.write_mnist(str(tmp_path))
    labels.write_bytes((0x0801).to_bytes(4, "big") + (19).to_bytes(4, "big") + bytes(19))
    with pytest.raises(DataError, match="holds 20 images but .*t10k-labels-idx1-ubyte 19 labels"):
        build(tmp_path, "rot-mnist")


# ------------------------------------------------------------------ class folders
@pytest.mark.parametrize("wnid", ["n00000050", "n00000199"])  # a middle class and the last one
def test_imagenet_r_class_with_only_unreadable_files_names_its_folder(tmp_path, capsys, wnid):
    # Before: the middle class trained on nothing with exit 0, the last crashed with a ValueError.
    datagen.write_imagenet_r(str(tmp_path), per_class=5)
    folder = tmp_path / "imagenet-r" / wnid
    for f in folder.iterdir():
        f.write_bytes(b"not an image")
    code, err = cli(capsys, tmp_path, "seq-imagenet-r")
    assert code == 2 and "Traceback" not in err
    assert f"every training image of class folder {folder} is unreadable" in err


def test_one_unreadable_file_in_a_class_is_skipped_not_fatal(tmp_path):
    datagen.write_imagenet_r(str(tmp_path), per_class=5)
    bad = tmp_path / "imagenet-r" / "n00000003" / "img_1.jpg"
    bad.write_bytes(b"junk")
    s = build(tmp_path, "seq-imagenet-r")
    assert s.skipped_files == [str(bad)] and s.n_classes == 200


def test_tinyimagenet_class_with_only_unreadable_files_names_its_folder(tmp_path):
    wnids = datagen.write_tinyimagenet(str(tmp_path))
    folder = tmp_path / "tiny-imagenet-200" / "train" / wnids[120] / "images"
    for f in folder.iterdir():
        f.write_bytes(b"")
    with pytest.raises(DataError, match=f"every training image of class folder {folder} is unreadable"):
        build(tmp_path, "seq-tinyimg")


def test_tinyimagenet_unreadable_or_binary_annotation_names_the_file(tmp_path, monkeypatch):
    datagen.write_tinyimagenet(str(tmp_path))
    wnids = tmp_path / "tiny-imagenet-200" / "wnids.txt"
    text = wnids.read_text()
    wnids.write_bytes(b"\xff\xfe" + text.encode())
    with pytest.raises(DataError, match=f"{wnids} is not a text file"):
        build(tmp_path, "seq-tinyimg")
    wnids.write_text(text.replace(text.splitlines()[1], text.splitlines()[0]))
    with pytest.raises(DataError, match="lists 199 distinct classes, expected 200"):
        build(tmp_path, "seq-tinyimg")
    wnids.write_text(text)
    _deny(monkeypatch, "val_annotations.txt")
    with pytest.raises(DataError, match="cannot read .*val_annotations.txt: Permission denied"):
        build(tmp_path, "seq-tinyimg")


def test_cub_labels_must_be_integers_in_range(tmp_path):
    base = datagen.write_cub(str(tmp_path))
    labels = os.path.join(base, "image_class_labels.txt")
    original = open(labels).read()
    with open(labels, "w") as f:
        f.write(original.replace("\n3 2\n", "\n3 two\n"))
    with pytest.raises(DataError, match="image id 3: 'two' is not an integer"):
        build(tmp_path, "seq-cub200")
    with open(labels, "w") as f:
        f.write(original.replace("\n3 2\n", "\n3 201\n"))
    with pytest.raises(DataError, match="label 200 at position .* out of range 0..199"):
        build(tmp_path, "seq-cub200")


def test_every_data_error_is_a_user_error():
    assert issubclass(DataError, UserError)


def test_complete_datasets_still_load_unchanged(tmp_path):
    path = datagen.write_cifar(str(tmp_path), 10)
    with open(os.path.join(path, "data_batch_1"), "rb") as f:
        first = pickle.load(f)
    s = build(tmp_path, "seq-cifar10")
    assert np.array_equal(s._train.x[:30].numpy().reshape(30, -1), first["data"])
    assert s._train.y[:30].tolist() == first["labels"]  # natural order: labels unchanged
