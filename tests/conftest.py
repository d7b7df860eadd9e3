import pytest
import torch

from lmsrr.config import Config


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_cfg(tmp_path) -> Config:
    """The default job's configuration, shortened: one epoch, output under tmp_path."""
    return Config().replace(optim={"epochs": 1}, log={"out_dir": str(tmp_path), "progress": False})
