"""The shipped weights: files match the manifest, ``--pretrained builtin`` loads them into the
default sources with no network access, and anything else is a clear error."""
import json
import os
import shutil
import socket

import pytest
import torch
from safetensors.torch import load_file

from lmsrr.config import DEFAULT_SOURCES, ModelConfig
from lmsrr.errors import ConfigError, UserError
from lmsrr.models.net import build_net
from lmsrr.models.spec import parse_sources
from lmsrr.pretrain.builtin import MANIFEST, WEIGHTS_DIR, builtin_weight_files, sha256_file, spec_key


def _manifest() -> dict:
    with open(os.path.join(WEIGHTS_DIR, MANIFEST), encoding="utf-8") as f:
        return json.load(f)


def test_shipped_files_match_the_manifest():
    m = _manifest()
    assert m["command"].startswith("lmsrr-pretrain") and m["generator"]["categories"] >= 2
    for entry in m["files"]:
        path = os.path.join(WEIGHTS_DIR, entry["file"])
        assert os.path.getsize(path) == entry["bytes"]
        assert sha256_file(path) == entry["sha256"], entry["file"]
        (spec,) = parse_sources(entry["source"])
        assert spec_key(spec) == entry["key"]
        assert entry["input_size"][0] == 3 and len(entry["mean"]) == len(entry["std"]) == 3
        sidecar = json.loads(open(path.replace(".safetensors", ".json"), encoding="utf-8").read())
        assert sidecar["sha256"] == entry["sha256"] and sidecar["command"] == m["command"]
    # Small enough to ship inside the package.
    assert sum(e["bytes"] for e in m["files"]) < 8 * 2**20


def test_every_default_source_has_builtin_weights():
    assert len(builtin_weight_files(DEFAULT_SOURCES)) == len(parse_sources(DEFAULT_SOURCES))


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_pretrained_builtin_loads_the_shipped_weights_offline(no_network):
    net = build_net(ModelConfig(pretrained="builtin"), n_classes=10)
    files = builtin_weight_files(DEFAULT_SOURCES)
    for source, path in zip(net.sources, files):
        shipped = load_file(path)
        state = source.model.state_dict()
        assert set(shipped) == set(state)
        assert all(torch.equal(shipped[k], state[k]) for k in shipped)
    # And they are not what a random initialisation gives.
    random_net = build_net(ModelConfig(pretrained="none"), n_classes=10)
    w = "blocks.0.attn.qkv.weight"
    assert not torch.equal(net.sources[0].model.state_dict()[w], random_net.sources[0].model.state_dict()[w])


def test_a_source_without_builtin_weights_is_a_config_error():
    with pytest.raises(ConfigError, match="no built-in weights for source.*convnext_atto"):
        # The default ConvNeXt with other stage widths is another model.
        builtin_weight_files("convnext_atto(input_size=32,dims=8/16/32/64,depths=1/1/2/1)")


def test_an_altered_file_is_refused(tmp_path):
    folder = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, folder)
    entry = _manifest()["files"][0]
    with open(folder / entry["file"], "r+b") as f:
        f.seek(entry["bytes"] - 4)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(UserError, match="does not match its SHA-256"):
        builtin_weight_files(DEFAULT_SOURCES, folder=str(folder))


def test_train_cli_pretrained_builtin_bad_source_exits_2(cli, tmp_path):
    code, err = cli("--pretrained", "builtin", "--sources", "resnet18", "--out-dir", str(tmp_path),
                    "--epochs", "1", "--stop-after", "1")
    assert code == 2 and "no built-in weights" in err


def test_the_default_job_uses_the_builtin_weights():
    assert ModelConfig().pretrained == "builtin"


def test_other_sources_with_the_default_pretrained_say_how_to_start_from_random(cli, tmp_path):
    code, err = cli("--sources", "resnet18(input_size=32)", "--out-dir", str(tmp_path))
    assert code == 2 and "Traceback" not in err
    assert "--pretrained builtin (the default): no built-in weights for source(s) resnet18" in err
    assert "--pretrained none" in err
    assert not any(tmp_path.iterdir())  # refused before a run directory is made


def test_the_default_job_starts_offline_on_the_builtin_weights(no_network, cli, tmp_path):
    code, err = cli("--epochs", "1", "--stop-after", "1", "--threads", "1", "--out-dir", str(tmp_path),
                    "--run-name", "r")
    assert code == 0, err
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["model"]["pretrained"] == "builtin"
