"""The loaders every data test runs with; DALI's only where it is installed."""
import importlib.util

import pytest

HAS_DALI = importlib.util.find_spec("nvidia.dali") is not None
needs_dali = pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed "
                                "(pip install nvidia-dali-cuda130; .ci/run installs it)")
LOADERS = ["torch", pytest.param("dali", marks=needs_dali)]
