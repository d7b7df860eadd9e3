"""lmsrr-pretrain's command line: help, and bad settings as one message with exit status 2."""
import pytest

from lmsrr.pretrain.train import main


def test_help_lists_generator_and_training_flags(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--categories", "--images-per-category", "--epochs", "--resume", "--precision", "--sources"):
        assert flag in out


@pytest.mark.parametrize("flags, words", [
    (["--categories", "1"], "categories must be >= 2"),
    (["--maps-min", "5", "--maps-max", "3"], "maps_min"),
    (["--epochs", "0"], "epochs must be >= 1"),
    (["--jitter", "0.9"], "jitter"),
    (["--precision", "fp8"], "precision='fp8' is not valid"),
    (["--sources", "vit_tinny_patch16_224"], "unknown timm model"),
    (["--batch-size", "1000"], "no full global batch"),
    (["--device", "gpu"], "device='gpu'"),
    (["--sources", "convnext_atto(input_size=16,dims=8/16/32/64,depths=1/1/1/1)"], "does not run at input size"),
])
def test_bad_settings_are_one_message_and_exit_2(pretrain, flags, words):
    code, err, out = pretrain("bad", *flags)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmsrr-pretrain: error: ") and words in lines[0], err
    assert not (out / "manifest.json").exists()
