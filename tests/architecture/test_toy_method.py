"""A new method is one file and one registration: its options become flags and config keys, the
engine trains it, nothing else changes. The toy lives in this file only."""
from dataclasses import dataclass

import pytest
import torch.nn.functional as F

from lmsrr.cli import build_parser, config_from_args, main
from lmsrr.config import Config
from lmsrr.fields import check, option, validate
from lmsrr.methods import registry
from lmsrr.methods.base import Batch, StepOutput
from lmsrr.methods.common import Baseline


@dataclass
class ToyOptions:
    label_smoothing: float = option(0.0, "toy: label smoothing of the cross-entropy")

    def __post_init__(self):
        validate(self)
        check(0 <= self.label_smoothing < 1, f"toy_label_smoothing must be in [0, 1), got {self.label_smoothing}")


class Toy(Baseline):
    Options = ToyOptions

    def loss(self, batch: Batch) -> StepOutput:
        (logits,) = self.forward_groups([batch.x_aug])
        ce = F.cross_entropy(logits, batch.y, label_smoothing=self.options.label_smoothing)
        return StepOutput(ce, logits, {"loss/ce": ce})


@pytest.fixture
def toy():
    registry.register_method("toy")(Toy)
    yield Toy
    del registry._METHODS["toy"]  # the registry is process-wide: leave it as found


def test_toy_options_are_flags_and_config_keys(toy):
    args = build_parser().parse_args(["--method", "toy", "--toy-label-smoothing", "0.25"])
    cfg = config_from_args(args)
    assert cfg.method.own == ToyOptions(0.25)
    assert cfg.method.to_dict()["toy_label_smoothing"] == 0.25
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_toy_option_checks_are_exit_2(toy, capsys, tmp_path):
    assert main(["--method", "toy", "--toy-label-smoothing", "1.5", "--out-dir", str(tmp_path)]) == 2
    assert "toy_label_smoothing must be in [0, 1)" in capsys.readouterr().err


def test_the_engine_trains_the_toy(toy, tmp_path, capsys):
    code = main(["--method", "toy", "--toy-label-smoothing", "0.1", "--epochs", "1", "--stop-after", "1",
                 "--threads", "1", "--no-progress", "--out-dir", str(tmp_path), "--run-name", "toy"])
    assert code == 0
    assert "toy" in capsys.readouterr().out
