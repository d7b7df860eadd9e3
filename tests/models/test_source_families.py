"""Every common timm family as a source: the generic split reproduces the model's own features,
BatchNorm sources keep their frozen parts fixed, and each family trains end to end."""
import json

import pytest
import torch
import torch.nn as nn

from lmsrr.cli import main
from lmsrr.models.source import Source, parse_sources

# Tiny configurations of each family (random weights): (source text, unit, number of units).
FAMILIES = {
    "vit": ("vit_tiny_patch16_224(input_size=32,patch_size=8,embed_dim=32,depth=3,num_heads=2)", "block", 3),
    "deit": ("deit_tiny_patch16_224(input_size=32,patch_size=8,embed_dim=32,depth=3,num_heads=2)", "block", 3),
    "dinov2-reg": ("vit_small_patch14_reg4_dinov2(input_size=28,embed_dim=32,depth=3,num_heads=2)", "block", 3),
    "eva": ("eva_giant_patch14_224(input_size=28,embed_dim=32,depth=3,num_heads=2,mlp_ratio=2)", "block", 3),
    "eva02": ("eva02_tiny_patch14_224(input_size=28,embed_dim=32,depth=3,num_heads=2)", "block", 3),
    "beit": ("beit_base_patch16_224(input_size=32,patch_size=8,embed_dim=32,depth=3,num_heads=2)", "block", 3),
    "swin": ("swin_tiny_patch4_window7_224(input_size=32,window_size=4,embed_dim=16,depths=1/1/1/1,"
             "num_heads=1/1/1/1)", "stage", 4),
    "convnext": ("convnext_atto(input_size=32,dims=8/16/24/32,depths=1/1/1/1)", "stage", 4),
    "convnextv2": ("convnextv2_atto(input_size=32,dims=8/16/24/32,depths=1/1/1/1)", "stage", 4),
    "resnet": ("resnet18(input_size=32,layers=1/1/1/1)", "stage", 4),
    "resnext": ("resnext50_32x4d(input_size=32,layers=1/1/1/1)", "stage", 4),
    "efficientnet": ("efficientnet_b0(input_size=32)", "stage", 7),
    "mobilenetv3": ("mobilenetv3_small_100(input_size=32)", "stage", 6),
    "regnet": ("regnety_002(input_size=32)", "stage", 4),
    "fastvit": ("fastvit_t8(input_size=32)", "stage", 4),
    "levit": ("levit_128s(input_size=32)", "stage", 3),
}
BATCH_NORM = {"resnet", "resnext", "efficientnet", "mobilenetv3", "regnet", "fastvit", "levit"}


def _source(family: str, k: int) -> Source:
    return Source(parse_sources(FAMILIES[family][0])[0], k)


def _model_features(src: Source, x: torch.Tensor) -> torch.Tensor:
    """The independent truth: timm's own forward_features and head pooling on the same input."""
    m = src.model
    return m.forward_head(m.forward_features(src.preprocess(x)), pre_logits=True)


def _split_features(src: Source, x: torch.Tensor) -> torch.Tensor:
    hs = src.run_blocks(src.prefix(x))
    assert len(hs) == len(src.blocks)
    return src.tail(hs[-1])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prefix_units_tail_reproduce_the_models_features(family):
    text, unit, n = FAMILIES[family]
    for k in sorted({1, 2, n}):
        src = _source(family, k).eval()
        assert (src.unit, src.n_units, len(src.blocks)) == (unit, n, k)
        x = torch.rand(3, 3, 20, 20)  # native-resolution batch, resized by the source
        with torch.no_grad():
            ours, ref = _split_features(src, x), _model_features(src, x)
        assert ours.shape == ref.shape == (3, src.width)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
        trainable = {id(p) for b in src.blocks for p in b.parameters()}
        assert trainable and all(p.requires_grad == (id(p) in trainable) for p in src.model.parameters())
        assert src.has_batch_stats == (family in BATCH_NORM)


@pytest.mark.parametrize("family", ["resnet", "efficientnet", "levit"])
def test_batch_norm_source_trains_its_units_only(family):
    """In train mode the trainable units use and update batch statistics; every frozen part
    (prefix, final conv/norm, head) keeps its running statistics and computes as in eval mode."""
    src = _source(family, 2).train()
    frozen_bn = [m for m in src.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 and not any(m is u for b in src.blocks for u in b.modules())]
    unit_bn = [m for b in src.blocks for m in b.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert frozen_bn and unit_bn
    before = [m.running_mean.clone() for m in frozen_bn + unit_bn]
    x = torch.rand(4, 3, 32, 32)
    z = src.prefix(x)
    f_train_tail = src.tail(z_last := src.run_blocks(z)[-1].detach())
    src.eval()
    z_eval, f_eval_tail = src.prefix(x), src.tail(z_last)
    src.train()
    torch.testing.assert_close(z, z_eval, rtol=0, atol=0)
    torch.testing.assert_close(f_train_tail, f_eval_tail, rtol=0, atol=0)
    src.tail(src.run_blocks(z)[-1]).sum().backward()
    after = [m.running_mean for m in frozen_bn + unit_bn]
    assert all(torch.equal(a, b) for a, b in zip(before[:len(frozen_bn)], after[:len(frozen_bn)]))
    assert any(not torch.equal(a, b) for a, b in zip(before[len(frozen_bn):], after[len(frozen_bn):]))
    assert all(p.grad is not None for b in src.blocks for p in b.parameters())
    assert all(p.grad is None for p in src.model.parameters() if not p.requires_grad)


# One short run per family, grouped into mixed multi-source runs (the paper's heterogeneous
# sources); two groups train two tasks, so BatchNorm units and EVA-02 blocks with their rotary
# embedding are also distilled from their snapshot and replayed.
RUNS = [
    (["vit", "swin", "resnet"], "3", "2"),
    (["deit", "convnext", "efficientnet"], "2", "1"),
    (["dinov2-reg", "convnextv2", "mobilenetv3"], "2,3,4", "1"),
    (["eva02", "regnet", "fastvit"], "1,2,3", "2"),
    (["eva", "beit", "levit", "resnext"], "2", "1"),
]


@pytest.mark.parametrize("families,blocks,tasks", RUNS, ids=["+".join(r[0]) for r in RUNS])
def test_each_family_trains_end_to_end(tmp_path, families, blocks, tasks):
    sources = ",".join(FAMILIES[f][0] for f in families)
    code = main(["--pretrained", "none", "--sources", sources, "--trainable-blocks", blocks, "--epochs", "1",
                 "--stop-after", tasks, "--batch-size", "64", "--log-every", "1", "--no-progress", "--threads", "1",
                 "--out-dir", str(tmp_path), "--run-name", "r"])
    assert code == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["complete"] and len(res["weights_sha256"]) == 64  # BatchNorm buffers hash too
    assert res["tasks_trained"] == int(tasks)
    assert 0 <= res["acc_class_il"][-1][0] <= 100
    if tasks == "2":  # the second task distils every trainable unit from its snapshot
        steps = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
        assert any("loss/distill" in r for r in steps)
