"""--pipeline released: for each of the seven released streams, the batch the sources take (the
stream's view through its input stage) equals the released transforms, written out here with
torchvision as the released dataset classes and backbone compose them (datasets/seq_*.py,
rot_mnist.py, backbone/LMSRR.py's vitProcess), applied to the files the test wrote."""
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from lmsrr.config import DataConfig
from lmsrr.data import build_stream
from lmsrr.data.augment import to_float

BICUBIC = InterpolationMode.BICUBIC
N = 4  # images checked per view
TOL = 1e-5


def vit_process(batch: torch.Tensor) -> torch.Tensor:
    """backbone/LMSRR.py: Resize(224, BICUBIC) of the normalised batch unless it is 224 x 224,
    then a 1-channel batch repeated to 3 channels."""
    if batch.shape[-2:] != (224, 224):
        batch = T.Resize(224, interpolation=BICUBIC)(batch)
    if batch.shape[1] == 1:
        batch = batch.repeat(1, 3, 1, 1)
    return batch


def pil(path):
    return Image.open(path).convert("RGB")


def stream_of(root, name, **kw):
    return build_stream(DataConfig(stream=name, data_root=root, pipeline="released", loader="torch",
                                   augment=False, loader_workers=1, **kw))


def ours(stream, batches):
    x, _ = next(iter(batches))
    return stream.input_transform(to_float(x[:N]))


def check(got, truth_images):
    want = vit_process(torch.stack(truth_images))
    assert got.shape == want.shape, (got.shape, want.shape)
    assert (got - want).abs().max().item() <= TOL


def views(stream):
    """(un-augmented training view, evaluation view) of task 0, as the sources take them."""
    return (ours(stream, stream.train_images(0, N, "cpu")), ours(stream, stream.test_batches(0, N, "cpu")))


def first_paths(stream):
    (tr, ptr), (te, pte) = stream.train_split(0), stream.test_split(0)
    return [tr.paths[i] for i in ptr[:N].tolist()], [te.paths[i] for i in pte[:N].tolist()]


def normalize(mean, std):
    return T.Normalize(mean, std)


# ---------------------------------------------------------------- in-memory streams
@pytest.mark.parametrize("name,folder,files,key,mean,std", [
    ("seq-cifar10", "cifar-10-batches-py", (["data_batch_1"], ["test_batch"]), "labels",
     (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2615)),
    ("seq-cifar100", "cifar-100-python", (["train"], ["test"]), "fine_labels",
     (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
])
def test_cifar(data_root, name, folder, files, key, mean, std):
    root, _ = data_root
    stream = stream_of(root, name)
    classes = set(stream.task_classes(0))
    # seq_cifar*.py: TRANSFORM without its random parts (RandomCrop at offset 0, no flip) and
    # TEST_TRANSFORM are both ToTensor + Normalize(MEAN, STD).
    tf = T.Compose([T.ToTensor(), normalize(mean, std)])
    for got, names in zip(views(stream), files):
        with open(os.path.join(root, folder, names[0]), "rb") as f:
            d = pickle.load(f, encoding="latin1")
        imgs = d["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        keep = [i for i, y in enumerate(d[key]) if y in classes][:N]
        check(got, [tf(Image.fromarray(imgs[i], mode="RGB")) for i in keep])


def test_tinyimagenet(data_root):
    root, info = data_root
    stream = stream_of(root, "seq-tinyimg")
    base = os.path.join(root, "tiny-imagenet-200")
    wnids = info["tiny_wnids"]
    # seq_tinyimagenet.py: ToTensor + Normalize(MEAN, STD) (TRANSFORM's RandomCrop(64, padding=4)
    # and flip at their neutral setting). Classes in wnids.txt order; training images per class in
    # file order, validation images in annotation order.
    tf = T.Compose([T.ToTensor(), normalize((0.4802, 0.4480, 0.3975), (0.2770, 0.2691, 0.2821))])
    first = wnids[: stream.classes_per_task]
    train = [os.path.join(base, "train", w, "images", f) for w in first
             for f in sorted(os.listdir(os.path.join(base, "train", w, "images")))][:N]
    ann = [line.split("\t") for line in open(os.path.join(base, "val", "val_annotations.txt")) if line.strip()]
    test = [os.path.join(base, "val", "images", a[0]) for a in ann if a[1] in first][:N]
    got_train, got_test = views(stream)
    check(got_train, [tf(pil(p)) for p in train])
    check(got_test, [tf(pil(p)) for p in test])


class Rotation:
    """datasets/transforms/rotation.py: torchvision's rotate by a fixed angle (of the task)."""

    def __init__(self, degrees):
        self.degrees = degrees

    def __call__(self, x):
        return TF.rotate(x, self.degrees)


def test_rot_mnist(data_root):
    root, info = data_root
    stream = stream_of(root, "rot-mnist")
    # rot_mnist.py: Compose((Rotation(), ToTensor())) for training and test, no normalisation.
    tf = T.Compose((Rotation(float(stream.angles[0])), T.ToTensor()))
    got_train, got_test = views(stream)
    for got, split in ((got_train, "train"), (got_test, "t10k")):
        x, _ = info["mnist"][split]
        check(got, [tf(Image.fromarray(img, mode="L")) for img in x[:N]])


# ---------------------------------------------------------------- file streams
def test_imagenet_r(data_root):
    root, _ = data_root
    stream = stream_of(root, "seq-imagenet-r")
    norm = normalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    # seq_imagenet_r.py: the buffer's view Resize((224, 224), BICUBIC) + ToTensor (TRANSFORM's
    # RandomResizedCrop at the full image, no flip); TEST_TRANSFORM as written there.
    train_tf = T.Compose([T.Resize((224, 224), interpolation=BICUBIC), T.ToTensor(), norm])
    test_tf = T.Compose([T.Resize(size=(256, 256), interpolation=BICUBIC), T.CenterCrop(224), T.ToTensor(), norm])
    train, test = first_paths(stream)
    got_train, got_test = views(stream)
    check(got_train, [train_tf(pil(p)) for p in train])
    check(got_test, [test_tf(pil(p)) for p in test])


def test_cub200(data_root):
    root, _ = data_root
    stream = stream_of(root, "seq-cub200")
    norm = normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    # seq_cub200.py: TRANSFORM with RandomCrop(224) at the centre and no flip; TEST_TRANSFORM.
    train_tf = T.Compose([T.Resize((300, 300), interpolation=BICUBIC), T.CenterCrop(224), T.ToTensor(), norm])
    test_tf = T.Compose([T.Resize(256, interpolation=BICUBIC), T.CenterCrop(224), T.ToTensor(), norm])
    train, test = first_paths(stream)
    got_train, got_test = views(stream)
    check(got_train, [train_tf(pil(p)) for p in train])
    check(got_test, [test_tf(pil(p)) for p in test])


def test_cars196(data_root):
    root, _ = data_root
    stream = stream_of(root, "seq-cars196")
    # seq_cars196.py: PREPROCESSING_TRANSFORM on the decoded uint8 tensor, once; then the
    # stored image as a PIL image through ToTensor + Normalize(0, 1) (TRANSFORM without its
    # flip, TEST_TRANSFORM).
    pre = T.Compose([T.Resize(224, interpolation=BICUBIC, antialias=True), T.CenterCrop(224)])
    tf = T.Compose([T.ToTensor(), normalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))])

    def truth(p):
        stored = pre(torch.from_numpy(np.array(pil(p))).permute(2, 0, 1))
        return tf(Image.fromarray(stored.permute(1, 2, 0).numpy(), mode="RGB"))

    train, test = first_paths(stream)
    got_train, got_test = views(stream)
    check(got_train, [truth(p) for p in train])
    check(got_test, [truth(p) for p in test])


# ---------------------------------------------------------------- the DALI loader, training
def test_dali_released_views_are_close_to_the_torch_ones(data_root):
    """DALI resamples with its own cubic filter, not PIL's: the views differ by a few levels
    (the README gives the measured figures); its crops, flips and geometry are the same."""
    pytest.importorskip("nvidia.dali")
    root, _ = data_root
    for name in ("seq-imagenet-r", "seq-cub200", "seq-cars196"):
        got = {}
        for loader in ("torch", "dali"):
            stream = build_stream(DataConfig(stream=name, data_root=root, pipeline="released", loader=loader,
                                             loader_workers=1))
            x, _ = next(iter(stream.test_batches(0, 8, "cpu")))
            g = torch.Generator().manual_seed(0)
            _, a, _ = next(iter(stream.train_batches(0, 8, g, "cpu")))
            got[loader] = (to_float(x), a)
        for ours_t, dali in zip(got["torch"], got["dali"]):
            assert ours_t.shape == dali.shape == (ours_t.shape[0], 3, 224, 224)
            d = (ours_t - dali).abs()
            assert d.mean().item() < 1 / 255 and d.max().item() <= 20 / 255, (name, d.max().item())


# A 224 x 224 ViT small enough for the CPU: the released pipeline feeds 224 x 224 RGB batches.
TINY_224 = ["--pretrained", "none", "--sources", "vit_tiny_patch16_224(patch_size=32,embed_dim=16,depth=2,num_heads=1)",
            "--trainable-blocks", "1", "--epochs", "1", "--batch-size", "8", "--eval-batch-size", "64",
            "--buffer-size", "8", "--replay-batch-size", "4", "--loader-workers", "1", "--threads", "1",
            "--no-progress", "--stop-after", "2", "--pipeline", "released"]


@pytest.mark.parametrize("name,loader", [("seq-cub200", "torch"), ("seq-cars196", "dali"), ("rot-mnist", "torch")])
def test_released_pipeline_trains_with_replay(data_root, tmp_path, name, loader):
    """Two tasks (stream views, replayed buffer views through the stream's augmentation, evaluation)."""
    if loader == "dali":
        pytest.importorskip("nvidia.dali")
    import json

    from lmsrr.cli import main

    root, _ = data_root
    code = main(["--stream", name, "--data-root", root, "--loader", loader, "--out-dir", str(tmp_path),
                 "--run-name", "r", *TINY_224])
    assert code == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["tasks_trained"] == 2


def test_released_pipeline_refuses_a_source_of_another_resolution(data_root, tmp_path):
    from lmsrr.cli import main

    root, _ = data_root
    args = [a if not a.startswith("vit_tiny") else a.replace("patch_size=32", "img_size=64,patch_size=32")
            for a in TINY_224]
    assert main(["--stream", "seq-cifar10", "--data-root", root, "--out-dir", str(tmp_path), *args]) == 2


def test_released_pipeline_refuses_a_stream_it_does_not_know(tmp_path):
    from lmsrr.cli import main

    assert main(["--stream", "seq-digits", "--pipeline", "released", "--out-dir", str(tmp_path)]) == 2
