"""The same command twice on one machine gives the same weights; the seed and the resume path
are honoured (weights are compared byte for byte, never with files made elsewhere)."""
import json
import shutil

import torch
from safetensors.torch import load_file

from lmsrr.pretrain.fractal import FractalSettings, generate

FILE = "vit_tiny_patch16_224-fractal4.safetensors"


def test_same_command_twice_gives_identical_weights(pretrain):
    code_a, err_a, a = pretrain("a")
    code_b, err_b, b = pretrain("b")
    assert code_a == 0 and code_b == 0, err_a + err_b
    assert (a / FILE).read_bytes() == (b / FILE).read_bytes()
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["files"][0]["sha256"] == mb["files"][0]["sha256"]


def test_another_seed_gives_other_weights(pretrain):
    _, _, a = pretrain("a")
    _, _, b = pretrain("b", "--seed", "1")
    wa, wb = load_file(str(a / FILE)), load_file(str(b / FILE))
    assert wa.keys() == wb.keys()
    assert not all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_continues_to_the_same_weights(pretrain, tmp_path):
    _, _, a = pretrain("a")
    # Drop the last epoch's checkpoint: resuming must redo exactly that epoch.
    ckpts = tmp_path / "a-work" / "vit_tiny_patch16_224-fractal4" / "checkpoints"
    shutil.rmtree(ckpts / "step-00000002")
    (a / FILE).unlink()
    code, err, b = pretrain("a", "--resume", "auto")
    assert code == 0, err
    _, _, ref = pretrain("ref")
    assert (b / FILE).read_bytes() == (ref / FILE).read_bytes()


def test_generated_sets_are_seeded_and_independent_of_worker_threads():
    s = FractalSettings(categories=3, images_per_category=100, image_size=16, walkers=16, steps=8, burn_in=2)
    x1, y1 = generate(s, workers=1)
    x2, y2 = generate(s, workers=2)
    assert x1.shape == (300, 3, 16, 16) and x1.dtype == torch.uint8
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(torch.bincount(y1), torch.full((3,), 100))
    fresh, _ = generate(s, epoch=1)
    assert not torch.equal(fresh, x1)  # another epoch draws other instances
    # Instances differ from one another; the figures are not blank.
    assert (x1[0] != x1[3]).any()
    assert x1.float().std(dim=(1, 2, 3)).min() > 5


def test_a_sources_weights_do_not_depend_on_the_other_sources_listed(pretrain, tiny_source):
    # The built-in files may be made source by source (in parallel) and finished by the full
    # command with --resume auto: that is only the same result if each source's weights depend
    # on nothing but its own item.
    cnx = "convnext_atto(input_size=32,dims=8/16/32/64,depths=1/1/1/1)"
    _, err_a, alone = pretrain("alone")
    code, err, both = pretrain("both", "--sources", f"{cnx},{tiny_source}")
    assert code == 0, err
    assert (alone / FILE).read_bytes() == (both / FILE).read_bytes()
