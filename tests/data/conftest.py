"""Fixtures of the data tests; the loader parameters live in loader_params.py (test modules
import that, never conftest: several conftest modules share the name)."""
import pytest

import datagen


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """Every dataset, written once per test session (about 2,500 tiny files)."""
    root = tmp_path_factory.mktemp("datasets")
    info = datagen.write_all(str(root))
    return str(root), info
