import importlib.util

import pytest

import datagen

HAS_DALI = importlib.util.find_spec("nvidia.dali") is not None
needs_dali = pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed "
                                "(pip install nvidia-dali-cuda130; .ci/run installs it)")
LOADERS = ["torch", pytest.param("dali", marks=needs_dali)]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """Every dataset, written once per test session (about 2,500 tiny files)."""
    root = tmp_path_factory.mktemp("datasets")
    info = datagen.write_all(str(root))
    return str(root), info
