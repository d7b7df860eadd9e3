"""Bad input gives one clear message (what is wrong, what to do) and exit status 2."""
import pytest

from lmsrr.cli import main



def test_unknown_source_name_suggests_close_names(cli, tmp_path):
    code, err = cli("--sources", "vit_tiny_patch16_22", "--out-dir", str(tmp_path))
    assert code == 2
    assert "unknown timm model 'vit_tiny_patch16_22'" in err and "vit_tiny_patch16_224" in err


def test_missing_dataset_names_the_expected_path(cli, tmp_path):
    code, err = cli("--stream", "seq-cifar100", "--data-root", str(tmp_path / "nowhere"),
                        "--out-dir", str(tmp_path))
    assert code == 2
    assert str(tmp_path / "nowhere" / "cifar-100-python") in err and "--download" in err


def test_unknown_stream_and_method(cli, tmp_path):
    code, err = cli("--stream", "seq-cifar1000", "--out-dir", str(tmp_path))
    assert code == 2 and "unknown stream 'seq-cifar1000'" in err and "seq-cifar100" in err
    code, err = cli("--method", "lmsr", "--out-dir", str(tmp_path))
    assert code == 2 and "unknown method 'lmsr'" in err and "did you mean 'lmsrr'" in err


@pytest.mark.parametrize("flag,value,message", [
    ("--lr", "-0.1", "lr must be > 0"),
    ("--batch-size", "0", "batch_size must be >= 1"),
    ("--buffer-size", "-5", "buffer_size must be >= 0"),
    ("--alpha", "-1", "alpha must be >= 0"),
    ("--tau", "0", "tau must be > 0"),
    ("--epochs", "0", "epochs must be >= 1"),
    ("--fusion-kernels", "3,4", "positive odd integer"),
    ("--class-order", "shuffled", "'natural' or 'seed:N'"),
    ("--trainable-blocks", "9", "trainable_blocks=9 but the model has 4 blocks"),
])
def test_invalid_numbers(cli, tmp_path, flag, value, message):
    code, err = cli(flag, value, "--out-dir", str(tmp_path))
    assert code == 2 and message in err, err


def test_missing_weight_file(cli, tmp_path):
    code, err = cli("--pretrained", f"{tmp_path}/a.pth,{tmp_path}/b.pth", "--out-dir", str(tmp_path))
    assert code == 2 and "a.pth" in err and "does not exist" in err
    code, err = cli("--pretrained", f"{tmp_path}/a.pth", "--out-dir", str(tmp_path))
    assert code == 2 and "one per source" in err


def test_unwritable_results_directory(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = cli("--out-dir", str(blocker), "--epochs", "1")
    assert code == 2 and "cannot write the results directory" in err


def test_non_numeric_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--lr", "fast"])
    assert e.value.code == 2 and "invalid float value" in capsys.readouterr().err


def test_forcing_triton_kernels_on_cpu_is_a_clear_error(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("LMSRR_KERNEL_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    code, err = cli("--device", "cpu", "--out-dir", str(tmp_path))
    assert code == 2 and "need CUDA tensors" in err and "TRITON_INTERPRET=1" in err
    monkeypatch.setenv("LMSRR_KERNEL_BACKEND", "fastest")
    code, err = cli("--device", "cpu", "--out-dir", str(tmp_path))
    assert code == 2 and "'fastest' is not a kernel backend" in err


def test_help_names_every_stream_method_and_preset(capsys):
    from lmsrr.config import PRESETS
    from lmsrr.data import available_streams
    from lmsrr.methods import available_methods

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in [*available_streams(), *available_methods(), *PRESETS]:
        assert name.replace("-", "- ") in text or name in text, name
    assert "(default: )" not in text
