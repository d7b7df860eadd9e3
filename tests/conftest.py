import pytest
import torch

from lmsrr.cli import main
from lmsrr.config import Config


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_flush_denormal_leak():
    """The trainer flushes denormals on CPU (a process-wide switch); a test that builds a Trainer
    must not change the float arithmetic of the tests after it."""
    yield
    torch.set_flush_denormal(False)


@pytest.fixture
def tiny_cfg(tmp_path) -> Config:
    """The default job's configuration, shortened: one epoch, output under tmp_path."""
    return Config().replace(optim={"epochs": 1}, log={"out_dir": str(tmp_path), "progress": False})


@pytest.fixture
def cli(capsys):
    """cli(*flags) -> (exit status, stderr) of ``lmsrr-train`` run in-process, without bars."""

    def run(*args):
        code = main(list(args) + ["--no-progress"])
        return code, capsys.readouterr().err

    return run
