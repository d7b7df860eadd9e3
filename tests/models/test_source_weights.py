"""Pretrained weights for sources: Hugging Face ViT folders, files of the wrong architecture or
shape, the offline hub cache, and --trainable-blocks per source."""
import json
import socket
import time

import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file

from lmsrr.cli import main
from lmsrr.config import Config, ModelConfig
from lmsrr.distributed import state_hash
from lmsrr.errors import ConfigError
from lmsrr.models.aro import SwitchVector
from lmsrr.models.net import build_net
from lmsrr.models.source import Source, parse_sources

VIT = "vit_tiny_patch16_224(input_size=32,patch_size=8,embed_dim=32,depth=2,num_heads=2,mlp_ratio=2)"
CNN = "resnet18(input_size=32,layers=1/1/1/1)"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*a, **k):
        raise AssertionError("network access")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _run(cli_args, tmp_path):
    return main(cli_args + ["--epochs", "1", "--stop-after", "1", "--batch-size", "128", "--threads", "1",
                            "--no-progress", "--out-dir", str(tmp_path), "--run-name", "r"])


# --- Hugging Face transformers ViT folders -------------------------------------------------------

def _hf_vit(tmp_path, classifier: bool, safe: bool):
    transformers = pytest.importorskip("transformers")  # the dev extra; only these tests need it
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, image_size=32, patch_size=8)
    torch.manual_seed(3)
    model = (transformers.ViTForImageClassification(cfg) if classifier else transformers.ViTModel(cfg)).eval()
    for p in model.parameters():  # non-trivial norms and biases, so a wrong mapping shows
        nn.init.normal_(p, std=0.2) if p.dim() < 2 else None
    folder = tmp_path / ("hf_cls" if classifier else "hf")
    model.save_pretrained(folder)
    if not safe:  # the older format, as the released code's checkpoints were first published
        from safetensors.torch import load_file
        torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    return folder, model


@pytest.mark.parametrize("classifier,safe", [(False, True), (True, False)])
def test_hf_vit_folder_maps_onto_timm_vit(tmp_path, classifier, safe):
    folder, hf = _hf_vit(tmp_path, classifier, safe)
    assert (folder / ("model.safetensors" if safe else "pytorch_model.bin")).exists()
    src = Source(parse_sources(VIT)[0], 2, str(folder)).eval()
    x = torch.randn(2, 3, 32, 32)  # already normalised: compare the networks, not preprocessing
    with torch.no_grad():
        base = hf.vit if classifier else hf
        ref = base(pixel_values=x).last_hidden_state[:, 0]  # the released code's CLS feature
        ours = src.tail(src.run_blocks(src._split_prefix(x))[-1])
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    eps = {m.eps for m in src.model.modules() if isinstance(m, nn.LayerNorm)}
    assert eps == {hf.config.layer_norm_eps} == {1e-12}


def test_hf_folder_of_another_shape_is_one_message(tmp_path, cli):
    folder, _ = _hf_vit(tmp_path, False, True)
    wide = VIT.replace("embed_dim=32", "embed_dim=48")
    code, err = cli("--sources", wide, "--pretrained", str(folder), "--out-dir", str(tmp_path))
    assert code == 2 and "Traceback" not in err
    assert "wrong shape" in err and "cls_token (1, 1, 32) vs (1, 1, 48)" in err


# --- wrong files --------------------------------------------------------------------------------


def test_file_of_another_architecture_is_one_short_message(tmp_path, cli):
    f = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet18", layers=(1, 1, 1, 1)).state_dict(), f)
    code, err = cli("--sources", VIT, "--pretrained", str(f), "--out-dir", str(tmp_path))
    assert code == 2 and "Traceback" not in err
    assert "missing: cls_token, pos_embed, patch_embed.proj.weight, ..." in err
    assert "unexpected: conv1.weight, bn1.weight, bn1.bias, ..." in err
    assert len(err) < 1000 and str(f) in err


def test_hand_written_files(tmp_path, cli):
    bad_shape = tmp_path / "bad.safetensors"
    sd = timm.create_model("resnet18", layers=(1, 1, 1, 1), num_classes=0).state_dict()
    sd["layer4.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    save_file({k: v.contiguous() for k, v in sd.items()}, bad_shape)
    code, err = cli("--sources", CNN, "--pretrained", str(bad_shape), "--out-dir", str(tmp_path))
    assert code == 2 and "Traceback" not in err
    assert "wrong shape (file vs model): layer4.0.conv1.weight (3, 3, 3, 3) vs (512, 256, 3, 3)" in err
    assert "missing" not in err and "unexpected" not in err

    garbage = tmp_path / "notes.pth"
    garbage.write_text("not a checkpoint")
    code, err = cli("--sources", CNN, "--pretrained", str(garbage), "--out-dir", str(tmp_path))
    assert code == 2 and "cannot read weight file" in err and "Traceback" not in err

    code, err = cli("--sources", CNN, "--pretrained", str(tmp_path / "absent.pth"), "--out-dir", str(tmp_path))
    assert code == 2 and "does not exist" in err

    (tmp_path / "empty").mkdir()
    code, err = cli("--sources", CNN, "--pretrained", str(tmp_path / "empty"), "--out-dir", str(tmp_path))
    assert code == 2 and "is a folder without config.json" in err


def test_matching_file_loads_with_its_classifier_dropped(tmp_path):
    """A timm checkpoint with its 1000-class head (as timm ships them) loads into a head-less source."""
    ref = timm.create_model("resnet18", layers=(1, 1, 1, 1), num_classes=1000).eval()
    f = tmp_path / "resnet.pth"
    torch.save({"state_dict": ref.state_dict()}, f)
    src = Source(parse_sources(CNN)[0], 2, str(f)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(src.tail(src.run_blocks(src._split_prefix(x))[-1]),
                                   ref.forward_head(ref.forward_features(x), pre_logits=True), rtol=0, atol=1e-6)


# --- the hub cache, offline ---------------------------------------------------------------------


def _fake_hub_cache(root, repo: str, filename: str, state: dict) -> None:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<rev>/<file>}."""
    base = root / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text("0" * 40)
    snap = base / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, snap / filename)


def test_hub_without_cache_says_what_is_missing_at_once(tmp_path, monkeypatch, cli, no_network):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    t0 = time.perf_counter()
    code, err = cli("--sources", VIT, "--pretrained", "hub", "--out-dir", str(tmp_path))
    assert code == 2 and "Traceback" not in err
    assert "not in the local Hugging Face cache" in err
    assert "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k" in err and str(tmp_path / "hub") in err
    assert time.perf_counter() - t0 < 30


def test_hub_loads_from_a_warm_cache_offline(tmp_path, monkeypatch, no_network):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = parse_sources(VIT)[0]
    ref = timm.create_model(spec.name, img_size=32, num_classes=1000, **spec.kwargs).eval()
    _fake_hub_cache(tmp_path / "hub", "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
                    "model.safetensors", ref.state_dict())
    src = Source(spec, 1, "hub").eval()
    for name, t in src.model.state_dict().items():
        assert torch.equal(t, ref.state_dict()[name]), name


# --- --trainable-blocks, one per source ---------------------------------------------------------


def test_trainable_blocks_per_source(tmp_path):
    cfg = ModelConfig(sources=f"{VIT},{CNN}", pretrained="none", trainable_blocks="1,3")
    assert cfg.trainable_blocks_per_source == (1, 3)
    net = build_net(cfg, n_classes=10)
    assert [len(s.blocks) for s in net.sources] == [1, 3]
    switch = SwitchVector(len(net.sources), [len(s.blocks) for s in net.sources])
    assert switch().shape == (4,)  # one gate per (source, trainable unit)
    hs, _ = net.top(net.prefix(torch.rand(2, 1, 8, 8)))
    assert [len(h) for h in hs] == [1, 3]
    assert ModelConfig(sources=f"{VIT},{CNN}", trainable_blocks="2").trainable_blocks_per_source == (2, 2)
    # a config.json written when the field was an integer
    old = Config.from_dict({**Config().to_dict(), "model": {**Config().to_dict()["model"], "trainable_blocks": 2}})
    assert old.model.trainable_blocks == "2" and old.model.trainable_blocks_per_source == (2, 2)


@pytest.mark.parametrize("value,message", [
    ("1,2,3", "gives 3 counts for 2 source(s)"),
    ("0", "every count must be >= 1"),
    ("2,x", "use one integer, or one per source"),
    ("2,9", "trainable_blocks=9 but the model has 4 stages (ResNet layer1..4); use 1..4"),
    ("5,1", "trainable_blocks=5 but the model has 2 blocks (VisionTransformer blocks.0..1); use 1..2"),
])
def test_trainable_blocks_errors(tmp_path, cli, value, message):
    code, err = cli("--pretrained", "none", "--sources", f"{VIT},{CNN}", "--trainable-blocks", value, "--out-dir", str(tmp_path))
    assert code == 2 and message in err and "Traceback" not in err


def test_family_without_units_is_refused_with_its_reason(tmp_path, cli):
    code, err = cli("--pretrained", "none", "--sources", "densenet121(input_size=32)", "--out-dir", str(tmp_path))
    assert code == 2 and "Traceback" not in err
    assert "source densenet121: DenseNet cannot be split" in err and "no blocks / stages / layers" in err


def test_unknown_structure_is_a_config_error():
    class Flat(nn.Module):  # no blocks/stages/layers and no feature_info: nothing to split
        def forward_features(self, x):
            return x

    from lmsrr.models.source import find_units
    with pytest.raises(ConfigError, match="cannot be split"):
        find_units(Flat())


class _Toy(nn.Module):
    """A model with timm's interface whose forward_features does work outside its modules."""

    def __init__(self, between: bool):
        super().__init__()
        self.blocks = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        self.between = between

    def forward_features(self, x):
        x = x.flatten(1)[:, :4]
        x = self.blocks[0](x)
        if self.between:
            x = x * 2  # between two units: a split would lose it
        x = self.blocks[1](x)
        return x if self.between else x + 1  # after the last unit, outside any module

    def forward_head(self, x, pre_logits=False):
        return x


@pytest.mark.parametrize("between,message", [
    (True, "a unit's input is not the previous unit's output"),
    (False, "changes the last unit's output other than by modules"),
])
def test_forward_that_a_split_would_change_is_refused(between, message):
    from lmsrr.models.source import split_model
    with pytest.raises(ConfigError, match=f"source toy: _Toy cannot be split at its blocks.*{message}"):
        split_model(_Toy(between), 1, "toy", (2, 2), 1)


# --- state_hash with BatchNorm ------------------------------------------------------------------


def test_state_hash_covers_batch_norm_buffers():
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))

    a, b = net(), net()
    assert a[1].num_batches_tracked.dim() == 0
    assert state_hash(a) == state_hash(b) and len(state_hash(a)) == 64
    b[1].num_batches_tracked += 1
    assert state_hash(a) != state_hash(b)
    b[1].num_batches_tracked -= 1
    b[1].running_var[0] += 1e-3
    assert state_hash(a) != state_hash(b)
    a.register_buffer("flag", torch.tensor(True))  # bool and other non-float buffers hash too
    b = net()
    b.register_buffer("flag", torch.tensor(False))
    assert state_hash(a) != state_hash(b)
    b.flag.fill_(True)
    assert state_hash(a) == state_hash(b)
