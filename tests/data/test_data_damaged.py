"""Property-based: generated damage to dataset files (truncated, wrong counts, wrong types,
out-of-range labels, random bytes) either loads with the correct content or raises a UserError
with one message naming what is wrong; never another exception, never a traceback.

Each example builds a tiny dataset in a fresh folder and calls the reader directly; a few go
through the CLI in-process. Examples are derandomised (the same cases every run) so CI is
reproducible; together they take well under a minute.
"""
import contextlib
import gzip
import io
import os
import pickle
import tempfile
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import datagen
from lmsrr.cli import main
from lmsrr.config import DataConfig
from lmsrr.data import build_stream
from lmsrr.data.cifar import load_cifar_tensors
from lmsrr.data.mnist import load_mnist
from lmsrr.data.tinyimagenet import tinyimagenet_items
from lmsrr.errors import UserError

FAST = settings(max_examples=60, deadline=timedelta(seconds=10), derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
PER_CLASS = 2  # images of each class in each CIFAR-10 file


def one_message(e: BaseException) -> str:
    msg = str(e)
    assert isinstance(e, UserError), f"{type(e).__name__}: {msg}"
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


# ------------------------------------------------------------------ CIFAR: structured damage
# A mutation of one batch dict: (kind, argument). ok(kind, arg) is the layout's rule, written
# independently of the reader: is the batch still a valid CIFAR batch after it?
MUTATIONS = st.one_of(
    st.tuples(st.just("label_count"), st.integers(-3, 3)),
    st.tuples(st.just("label_value"), st.tuples(st.integers(0, 10 * PER_CLASS - 1), st.integers(-3, 13))),
    st.tuples(st.just("data_dtype"), st.sampled_from(["uint8", "int16", "int64", "float32", "bool", "str"])),
    st.tuples(st.just("columns"), st.sampled_from([0, 3071, 3072, 3073])),
    st.tuples(st.just("bytes_keys"), st.booleans()),
    st.tuples(st.just("container"), st.sampled_from(["list", "none", "int", "dict"])),
    st.tuples(st.just("drop_key"), st.sampled_from(["data", "labels"])),
    st.tuples(st.just("labels_type"), st.sampled_from(["list", "tuple", "int64", "int8", "float64", "ragged"])),
)


def mutation_ok(kind, arg) -> bool:
    return {
        "label_count": lambda: arg == 0,
        "label_value": lambda: 0 <= arg[1] < 10,
        "data_dtype": lambda: arg in ("uint8", "int16", "int64"),
        "columns": lambda: arg == 3072,
        "bytes_keys": lambda: True,
        "container": lambda: arg == "dict",
        "drop_key": lambda: False,
        "labels_type": lambda: arg in ("list", "tuple", "int64", "int8"),
    }[kind]()


def apply_mutation(d: dict, kind, arg):
    data, labels = d["data"], list(d["labels"])
    if kind == "label_count":
        labels = labels[:len(labels) + arg] if arg < 0 else labels + [0] * arg
    elif kind == "label_value":
        labels[arg[0]] = arg[1]
    elif kind == "data_dtype":
        data = data.astype(str) if arg == "str" else data.astype(arg)
    elif kind == "columns":
        data = np.concatenate([data, data[:, :1]], 1)[:, :arg] if arg else data[:, :0]
    elif kind == "labels_type":
        labels = {"list": labels, "tuple": tuple(labels), "int64": np.array(labels, np.int64),
                  "int8": np.array(labels, np.int8), "float64": np.array(labels, np.float64),
                  "ragged": [[v] for v in labels[:-1]] + [[1, 2]]}[arg]
    out = {"data": data, "labels": labels, "batch_label": "training batch"}
    if kind == "bytes_keys" and arg:
        out = {k.encode(): v for k, v in out.items()}
    if kind == "drop_key":
        del out[arg]
    if kind == "container":
        out = {"list": [data, labels], "none": None, "int": 3, "dict": out}[arg]
    return out


def write_batches(root, batches, protocol):
    path = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(path)
    for name, d in batches.items():
        with open(os.path.join(path, name), "wb") as f:
            pickle.dump(d, f, protocol=protocol)
    return path


def pristine(seed):
    rng = np.random.default_rng(seed)
    return {name: {"data": rng.integers(0, 256, (10 * PER_CLASS, 3072), dtype=np.uint8),
                   "labels": list(range(10)) * PER_CLASS} for name in CIFAR_FILES}


@FAST
@given(damage=st.dictionaries(st.sampled_from(CIFAR_FILES), MUTATIONS, min_size=1, max_size=3),
       protocol=st.sampled_from([2, pickle.HIGHEST_PROTOCOL]), seed=st.integers(0, 3))
def test_cifar_structured_damage(damage, protocol, seed):
    truth = pristine(seed)
    written = dict(truth)
    for name, (kind, arg) in damage.items():
        written[name] = apply_mutation(truth[name], kind, arg)
        if kind == "label_value" and mutation_ok(kind, arg):
            truth[name] = {"data": truth[name]["data"], "labels": list(written[name]["labels"])}
    valid = all(mutation_ok(*m) for m in damage.values())
    with tempfile.TemporaryDirectory() as root:
        path = write_batches(root, written, protocol)
        try:
            xtr, ytr, xte, yte = load_cifar_tensors("seq-cifar10", root, download=False)
        except Exception as e:
            msg = one_message(e)
            # Each file holds every class twice, so one changed label never empties a class:
            # the error must be about one of the damaged files.
            assert not valid and any(os.path.join(path, n) in msg for n in damage), msg
            return
    assert valid
    train = [truth[n] for n in CIFAR_FILES[:5]]
    assert np.array_equal(xtr.numpy(), np.concatenate([d["data"] for d in train]).reshape(-1, 3, 32, 32))
    assert ytr.tolist() == [v for d in train for v in d["labels"]]
    assert np.array_equal(xte.numpy(), truth["test_batch"]["data"].reshape(-1, 3, 32, 32))
    assert yte.tolist() == list(truth["test_batch"]["labels"])


# ------------------------------------------------------------------ byte-level damage
BYTE_DAMAGE = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 0.999)),
    st.tuples(st.just("random"), st.binary(max_size=300)),
    st.tuples(st.just("flip"), st.tuples(st.floats(0, 0.999), st.integers(1, 255))),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=50)),
)


def damage_bytes(data: bytes, kind, arg) -> bytes:
    if kind == "truncate":
        return data[:int(len(data) * arg)]
    if kind == "random":
        return arg
    if kind == "flip":
        i = int(len(data) * arg[0])
        return data[:i] + bytes([data[i] ^ arg[1]]) + data[i + 1:]
    return data + arg


@FAST
@given(name=st.sampled_from(CIFAR_FILES), damage=BYTE_DAMAGE)
@example(name="data_batch_1", damage=("random", b"P"))  # pickle's error text spans two lines
def test_cifar_byte_damage(name, damage):
    with tempfile.TemporaryDirectory() as root:
        path = write_batches(root, pristine(0), pickle.HIGHEST_PROTOCOL)
        f = os.path.join(path, name)
        with open(f, "rb") as fh:
            good = fh.read()
        bad = damage_bytes(good, *damage)
        with open(f, "wb") as fh:
            fh.write(bad)
        try:
            xtr, ytr, xte, yte = load_cifar_tensors("seq-cifar10", root, download=False)
        except Exception as e:
            assert f in one_message(e) or "no sample of class" in str(e)
            return
    # Loaded: a byte flip in the pixels is a different but valid image; everything else holds.
    assert xtr.shape == (5 * 10 * PER_CLASS, 3, 32, 32) and xte.shape == (10 * PER_CLASS, 3, 32, 32)
    assert ytr.shape[0] == xtr.shape[0] and yte.shape[0] == xte.shape[0]
    assert 0 <= int(ytr.min()) and int(ytr.max()) < 10 and 0 <= int(yte.min()) and int(yte.max()) < 10
    if bad == good or damage[0] == "append":  # bytes after the pickle's STOP are never read
        truth = pristine(0)
        assert ytr.tolist() == [v for n in CIFAR_FILES[:5] for v in truth[n]["labels"]]


# ------------------------------------------------------------------ MNIST
def idx_reference(data: bytes, ndim: int):
    """The IDX rule, independently: magic, big-endian dims, exactly prod(dims) uint8 values."""
    if len(data) < 4 + 4 * ndim or int.from_bytes(data[:4], "big") != 0x0800 + ndim:
        return None
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = data[4 + 4 * ndim:]
    return np.frombuffer(body, np.uint8).reshape(dims) if len(body) == int(np.prod(dims)) else None


MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte"]


@FAST
@given(name=st.sampled_from(MNIST_FILES), damage=BYTE_DAMAGE, gz=st.sampled_from(["no", "payload", "stream"]),
       label_value=st.none() | st.integers(0, 255))
def test_mnist_damage(name, damage, gz, label_value):
    """gz: 'no' (plain file), 'payload' (the damaged IDX bytes, gzipped), 'stream' (the gzip
    stream itself damaged)."""
    with tempfile.TemporaryDirectory() as root:
        arrays = datagen.write_mnist(root)
        raw = os.path.join(root, "MNIST", "raw")
        contents = {}
        for n in MNIST_FILES:  # datagen gzips the training files only: every file plain here
            if os.path.exists(os.path.join(raw, n + ".gz")):
                os.remove(os.path.join(raw, n + ".gz"))
            split, kind = n.split("-")[0], "images" if "images" in n else "labels"
            a = arrays[split][0 if kind == "images" else 1]
            contents[n] = ((0x0803 if a.ndim == 3 else 0x0801).to_bytes(4, "big")
                           + b"".join(d.to_bytes(4, "big") for d in a.shape) + a.astype(np.uint8).tobytes())
            with open(os.path.join(raw, n), "wb") as fh:
                fh.write(contents[n])
        payload = contents[name]
        if label_value is not None and "labels" in name:
            payload = payload[:8] + bytes([label_value]) + payload[9:]  # the first label
        f = os.path.join(raw, name)
        os.remove(f)
        if gz == "no":
            stored = payload = damage_bytes(payload, *damage)
        elif gz == "payload":
            payload = damage_bytes(payload, *damage)
            stored = gzip.compress(payload)
            f += ".gz"
        else:
            stored = damage_bytes(gzip.compress(payload), *damage)
            f += ".gz"
            try:  # Python's gzip module is the reference for what the stream holds
                payload = gzip.decompress(stored)
            except Exception:
                payload = b""
        with open(f, "wb") as fh:
            fh.write(stored)
        contents[name] = payload
        ref = {n: idx_reference(contents[n], 3 if "images" in n else 1) for n in MNIST_FILES}
        valid = all(a is not None for a in ref.values())
        if valid:
            for split in ("train", "t10k"):
                x, y = ref[f"{split}-images-idx3-ubyte"], ref[f"{split}-labels-idx1-ubyte"]
                valid &= x.shape[1:] == (28, 28) and x.shape[0] == y.shape[0] and bool((y < 10).all())
            valid &= set(ref["train-labels-idx1-ubyte"].tolist()) == set(range(10))
        try:
            xtr, ytr, xte, yte = load_mnist(root, download=False)
        except Exception as e:
            msg = one_message(e)
            assert not valid, msg
            assert os.path.basename(f) in msg, msg
            return
    assert valid
    assert np.array_equal(xtr[:, 0].numpy(), ref["train-images-idx3-ubyte"])
    assert np.array_equal(ytr.numpy(), ref["train-labels-idx1-ubyte"])
    assert np.array_equal(xte[:, 0].numpy(), ref["t10k-images-idx3-ubyte"])
    assert np.array_equal(yte.numpy(), ref["t10k-labels-idx1-ubyte"])


# ------------------------------------------------------------------ TinyImageNet annotations
@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny"))
    return root, datagen.write_tinyimagenet(root, per_class=1)


LINE_DAMAGE = st.one_of(
    st.tuples(st.just("drop"), st.integers(0, 199)),
    st.tuples(st.just("duplicate"), st.integers(0, 199)),
    st.tuples(st.just("replace"), st.tuples(st.integers(0, 199), st.text(max_size=12))),
    st.tuples(st.just("bytes"), st.binary(max_size=40)),
    st.tuples(st.just("none"), st.just(None)),
)


def damage_lines(text: str, kind, arg) -> bytes:
    lines = text.splitlines()
    if kind == "drop":
        del lines[arg]
    elif kind == "duplicate":
        lines.insert(arg, lines[arg])
    elif kind == "replace":
        lines[arg[0]] = arg[1]
    elif kind == "bytes":
        return "\n".join(lines).encode() + arg
    return "\n".join(lines).encode()


@settings(FAST, max_examples=40)
@given(target=st.sampled_from(["wnids.txt", os.path.join("val", "val_annotations.txt")]), damage=LINE_DAMAGE)
@example(target="wnids.txt", damage=("replace", (3, "n0\x00")))  # NUL fails inside os calls
@example(target=os.path.join("val", "val_annotations.txt"), damage=("replace", (3, "../x.JPEG n00009999")))
def test_tinyimagenet_annotation_damage(tiny_root, target, damage):
    root, wnids = tiny_root
    f = os.path.join(root, "tiny-imagenet-200", target)
    with open(f) as fh:
        original = fh.read()
    try:
        with open(f, "wb") as fh:
            fh.write(damage_lines(original, *damage))
        try:
            train, test = tinyimagenet_items(root)
        except Exception as e:
            msg = one_message(e)
            assert os.path.basename(f) in msg or "missing" in msg or "no images" in msg, msg
            return
        # Loaded: exactly the classes and files the (possibly edited) annotations still name.
        label = {w: i for i, w in enumerate(wnids)}
        with open(f, "rb") as fh:
            now = fh.read().decode("utf-8")
        if target == "wnids.txt":
            assert [ln.strip() for ln in now.splitlines() if ln.strip()] == wnids
            assert len(test) == 200
        else:
            expected = [(os.path.join(root, "tiny-imagenet-200", "val", "images", p[0]), label[p[1]])
                        for p in (ln.split() for ln in now.splitlines()) if p]
            assert test == expected
        assert len(train) == 200 and [y for _, y in train] == list(range(200))
    finally:
        with open(f, "w") as fh:
            fh.write(original)


# ------------------------------------------------------------------ an image-folder dataset
IMAGE_DAMAGE = st.one_of(BYTE_DAMAGE, st.tuples(st.just("empty"), st.none()), st.tuples(st.just("delete"), st.none()))
FOLDER_CLASSES = ["b", "a", "c"]


@settings(FAST, max_examples=30)
@given(damage=st.dictionaries(st.tuples(st.sampled_from(["train", "val"]), st.sampled_from(FOLDER_CLASSES),
                                        st.integers(0, 2)), IMAGE_DAMAGE, max_size=6))
def test_image_folder_damage(damage):
    with tempfile.TemporaryDirectory() as root:
        datagen.write_image_folder(root, FOLDER_CLASSES, train=3, val=2)
        damaged, deleted = set(), set()
        for (split, c, k), (kind, arg) in damage.items():
            if split == "val" and k == 2:
                continue  # val/ holds two images per class
            f = os.path.join(root, split, c, f"{c}_{k}.jpg")
            if kind == "delete":
                os.remove(f)
                deleted.add(f)
                continue
            with open(f, "rb") as fh:
                data = fh.read()
            with open(f, "wb") as fh:
                fh.write(b"" if kind == "empty" else damage_bytes(data, kind, arg))
            damaged.add(f)
        cfg = DataConfig(stream="folder:" + root, tasks=3, loader="torch", loader_workers=1, image_size=16)
        try:
            s = build_stream(cfg)
        except Exception as e:
            msg = one_message(e)
            # Only a class whose every training (or validation) file is damaged or gone may fail.
            hit = [(sp, c) for sp in ("train", "val") for c in FOLDER_CLASSES if os.path.join(root, sp, c) in msg]
            assert hit, msg
            sp, c = hit[0]
            files = [os.path.join(root, sp, c, f"{c}_{k}.jpg") for k in range(3 if sp == "train" else 2)]
            assert all(p in damaged | deleted for p in files), msg
            return
        assert set(s.skipped_files) <= damaged
        kept = dict(zip(s._train.paths, s._train.y.tolist())) | dict(zip(s._test.paths, s._test.y.tolist()))
        for split, n in (("train", 3), ("val", 2)):
            for c in FOLDER_CLASSES:
                for k in range(n):
                    p = os.path.join(root, split, c, f"{c}_{k}.jpg")
                    if p in deleted:
                        assert p not in kept
                    elif p not in damaged:  # every intact file is in, under its folder's sorted index
                        assert kept[p] == sorted(FOLDER_CLASSES).index(c)
        assert set(s._train.y.tolist()) == {0, 1, 2}


# ------------------------------------------------------------------ through the CLI
TINY = ["--pretrained", "none", "--sources", "vit_tiny_patch16_224(input_size=8,patch_size=4,embed_dim=16,depth=1,num_heads=1)",
        "--trainable-blocks", "1", "--epochs", "1", "--batch-size", "16", "--buffer-size", "8",
        "--replay-batch-size", "4", "--loader", "torch", "--loader-workers", "1", "--threads", "1",
        "--no-progress", "--stop-after", "1"]


@settings(FAST, max_examples=6, deadline=timedelta(seconds=60))
@given(name=st.sampled_from(CIFAR_FILES), kind_arg=MUTATIONS)
def test_cli_on_damaged_cifar_exits_0_or_2_without_traceback(name, kind_arg):
    truth = pristine(0)
    truth[name] = apply_mutation(truth[name], *kind_arg)
    with tempfile.TemporaryDirectory() as root:
        write_batches(root, truth, pickle.HIGHEST_PROTOCOL)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--stream", "seq-cifar10", "--data-root", root, "--out-dir", os.path.join(root, "runs"),
                         "--run-name", "r", *TINY])
        err = err.getvalue()
        assert code in (0, 2) and "Traceback" not in err, err
        if code == 2:
            lines = [ln for ln in err.splitlines() if ln.startswith("lmsrr-train: error:")]
            assert len(lines) == 1 and not mutation_ok(*kind_arg), err
            assert os.path.join(root, "cifar-10-batches-py", name) in lines[0] or "no sample of class" in lines[0]
        else:
            assert mutation_ok(*kind_arg) and os.path.exists(os.path.join(root, "runs", "r", "results.json"))
