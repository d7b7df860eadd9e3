"""Missing, incomplete and unusable data: one clear message naming what is missing."""
import os
import shutil

import pytest

import datagen
from lmsrr.cli import main
from lmsrr.config import DataConfig
from lmsrr.data import build_stream
from lmsrr.data import loaders as loaders_mod
from lmsrr.errors import ConfigError, DataNotFoundError


def build(root, name, **kw):
    return build_stream(DataConfig(stream=name, data_root=str(root), loader="torch", loader_workers=1, **kw))


@pytest.mark.parametrize("name,expected", [
    ("seq-cifar10", "cifar-10-batches-py"), ("seq-cifar100", "cifar-100-python"),
    ("rot-mnist", os.path.join("MNIST", "raw")), ("seq-tinyimg", "tiny-imagenet-200"),
    ("seq-imagenet-r", "imagenet-r"), ("seq-cub200", "CUB_200_2011"), ("seq-cars196", "stanford_cars"),
])
def test_missing_dataset_names_the_expected_folder_and_source(tmp_path, name, expected):
    with pytest.raises(DataNotFoundError) as e:
        build(tmp_path, name)
    msg = str(e.value)
    assert os.path.join(str(tmp_path), expected) in msg and "dataset not found" in msg and "http" in msg


def test_missing_dataset_through_the_cli_is_exit_status_2(tmp_path, capsys):
    code = main(["--stream", "seq-cub200", "--data-root", str(tmp_path), "--out-dir", str(tmp_path / "runs"),
                 "--no-progress"])
    assert code == 2 and "CUB_200_2011" in capsys.readouterr().err


def test_download_flag_says_when_a_dataset_cannot_be_fetched(tmp_path):
    with pytest.raises(DataNotFoundError, match="--download cannot fetch seq-cars196"):
        build(tmp_path, "seq-cars196", download=True)


def test_incomplete_cub_names_the_missing_image(tmp_path):
    base = datagen.write_cub(str(tmp_path))
    gone = os.path.join(base, "images", "042.Bird_42", "Bird_42_1.jpg")
    os.remove(gone)
    with pytest.raises(DataNotFoundError, match="1 listed image file"):
        build(tmp_path, "seq-cub200")
    try:
        build(tmp_path, "seq-cub200")
    except DataNotFoundError as e:
        assert gone in str(e)
    os.remove(os.path.join(base, "train_test_split.txt"))
    with pytest.raises(DataNotFoundError, match="train_test_split.txt is missing"):
        build(tmp_path, "seq-cub200")


def test_incomplete_imagenet_r_counts_its_class_folders(tmp_path):
    for c in range(3):
        os.makedirs(tmp_path / "imagenet-r" / f"n{c:08d}")
    with pytest.raises(DataNotFoundError, match="has 3 class folder"):
        build(tmp_path, "seq-imagenet-r")


def test_incomplete_or_broken_mnist(tmp_path):
    datagen.write_mnist(str(tmp_path))
    raw = tmp_path / "MNIST" / "raw"
    labels = raw / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-3])
    with pytest.raises(DataNotFoundError, match="t10k-labels-idx1-ubyte is truncated"):
        build(tmp_path, "rot-mnist")
    labels.write_bytes(b"garbage!")
    with pytest.raises(DataNotFoundError, match="is not an MNIST IDX file"):
        build(tmp_path, "rot-mnist")
    labels.unlink()
    with pytest.raises(DataNotFoundError, match="t10k-labels-idx1-ubyte.*is missing"):
        build(tmp_path, "rot-mnist")


def test_incomplete_tinyimagenet_and_cars(tmp_path):
    os.makedirs(tmp_path / "tiny-imagenet-200")
    with pytest.raises(DataNotFoundError, match="wnids.txt is missing"):
        build(tmp_path, "seq-tinyimg")
    base = datagen.write_cars(str(tmp_path))
    os.remove(os.path.join(base, "cars_test_annos_withlabels.mat"))
    with pytest.raises(DataNotFoundError, match="cars_test_annos_withlabels.mat is missing"):
        build(tmp_path, "seq-cars196")
    shutil.rmtree(os.path.join(base, "cars_test"))
    with open(os.path.join(base, "cars_test_annos_withlabels.mat"), "w") as f:
        f.write("not a mat file")
    with pytest.raises(DataNotFoundError, match="not a readable annotation file"):
        build(tmp_path, "seq-cars196")


def test_dali_loader_requested_but_not_installed(monkeypatch):
    monkeypatch.setattr(loaders_mod, "dali_available", lambda: False)
    with pytest.raises(ConfigError, match="pip install nvidia-dali-cuda130"):
        build_stream(DataConfig(loader="dali"))
    assert build_stream(DataConfig(loader="auto")).loader.name == "torch"


def test_auto_picks_dali_when_installed():
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    assert build_stream(DataConfig(loader="auto")).loader.name == "dali"


@pytest.mark.parametrize("flag,value,message", [
    ("--loader", "fast", "loader='fast' is not valid"),
    ("--image-size", "3", "image_size must be 0"),
    ("--loader-workers", "-1", "loader_workers must be >= 0"),
])
def test_invalid_data_flags(capsys, tmp_path, flag, value, message):
    try:
        code = main([flag, value, "--out-dir", str(tmp_path), "--no-progress"])
    except SystemExit as e:  # argparse rejects values outside a flag's choices itself
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and (message in err or "invalid choice: 'fast'" in err), err
