"""Fixtures of the method tests; plain helpers live in method_helpers.py (test modules import
that, never conftest: several conftest modules share the name)."""
import pytest
import torch

from lmsrr.config import Config
from lmsrr.data import build_stream


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a shared 2-core machine two threads spin against each other and the
    other processes (forward/backward steps measured 50x slower). Restored after each test."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def fast_cfg(tmp_path) -> Config:
    """The default job's sources, shortened: one epoch, batches of 32."""
    return Config().replace(optim={"epochs": 1}, data={"batch_size": 32, "eval_batch_size": 512},
                            runtime={"threads": 1}, log={"out_dir": str(tmp_path), "progress": False})


@pytest.fixture(scope="session")
def stream():
    return build_stream(Config().data)


@pytest.fixture(scope="session")
def short_stream():
    """seq-digits with its first 32 training and 12 test images per class: the same five tasks,
    short enough that every method can train two of them within the suite's time budget."""
    from lmsrr.data.augment import Augment
    from lmsrr.data.digits import load_digits_tensors
    from lmsrr.data.stream import ContinualStream

    xtr, ytr, xte, yte = load_digits_tensors()

    def per_class(x, y, k):
        idx = torch.cat([torch.nonzero(y == c).flatten()[:k] for c in range(10)])
        return x[idx], y[idx]

    return ContinualStream("seq-digits", *per_class(xtr, ytr, 32), *per_class(xte, yte, 12),
                           n_tasks=5, classes_per_task=2, augment=Augment(pad=1))
