"""Settings a method cannot run with fail at start-up with one clear message."""
import pytest
import torch

from lmsrr.cli import main
from lmsrr.errors import ConfigError
from lmsrr.methods.registry import method_class


def test_er_without_buffer_is_a_cli_error_naming_the_flag(capsys, tmp_path):
    code = main(["--method", "er", "--buffer-size", "0", "--out-dir", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "'er'" in err and "--buffer-size must be >= 1" in err, err
    assert not list(tmp_path.iterdir())  # refused before any run directory was written


@pytest.mark.parametrize("name", ["er", "der", "derpp", "agem", "icarl"])
def test_replay_methods_need_a_buffer(tiny_cfg, stream, name):
    cfg = tiny_cfg.replace(method={"name": name, "buffer_size": 0})
    with pytest.raises(ConfigError, match="--buffer-size must be >= 1"):
        method_class(name).check_config(cfg, stream)


def test_icarl_needs_an_exemplar_per_class(tiny_cfg, stream):
    cfg = tiny_cfg.replace(method={"name": "icarl", "buffer_size": 7})
    with pytest.raises(ConfigError, match="--buffer-size must be >= 10"):
        method_class("icarl").check_config(cfg, stream)
    method_class("icarl").check_config(cfg.replace(method={"buffer_size": 10}), stream)


class _DomainStream:
    name, setting, n_classes = "rot-mnist", "domain-il", 10

    def task(self, t):
        raise AssertionError("not reached")


def test_icarl_is_class_incremental_only(tiny_cfg):
    with pytest.raises(ConfigError, match="class-incremental streams only; stream 'rot-mnist' is domain-il"):
        method_class("icarl").check_config(tiny_cfg.replace(method={"name": "icarl"}), _DomainStream())


@pytest.mark.parametrize("flag,value,message", [
    ("--der-alpha", "-1", "der_alpha must be >= 0"),
    ("--derpp-beta", "-0.5", "derpp_beta must be >= 0"),
    ("--lwf-temperature", "0", "lwf_temperature must be > 0"),
    ("--ewc-gamma", "1.5", "ewc_gamma must be in [0, 1]"),
    ("--si-xi", "0", "si_xi must be > 0"),
])
def test_invalid_method_weights(capsys, tmp_path, flag, value, message):
    code = main([flag, value, "--out-dir", str(tmp_path), "--no-progress"])
    assert code == 2 and message in capsys.readouterr().err
