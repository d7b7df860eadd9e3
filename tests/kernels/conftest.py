"""Kernel tests: Triton kernels run on CUDA when there is a GPU, else in Triton's CPU interpreter.

TRITON_INTERPRET is read when triton is imported, so it is set here, before anything in this
test tree imports triton. If triton was already imported in this process without it (e.g. a
test elsewhere used torch.compile first), the in-process interpreter cannot be switched on any
more: the Triton tests are then skipped here and ``test_kernels_subprocess.py`` runs this folder
again in a fresh interpreter process instead, so they still run and can still fail.
"""
import os
import sys

_TRUTHY = ("1", "true", "yes", "on")
TRITON_PREIMPORTED_WITHOUT_INTERPRETER = "triton" in sys.modules and (
    os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in _TRUTHY
)

import torch  # noqa: E402  (torch does not import triton)

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def _triton_status():
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the install
        return False, f"triton does not import: {exc}"
    if HAS_CUDA:
        return True, "CUDA"
    if TRITON_PREIMPORTED_WITHOUT_INTERPRETER:
        return False, ("triton was imported before TRITON_INTERPRET=1 was set; these tests run in "
                       "a subprocess (test_kernels_subprocess.py)")
    if os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in _TRUTHY:
        return False, "no CUDA and TRITON_INTERPRET is disabled"
    return True, "interpreter"


TRITON_OK, TRITON_WHY = _triton_status()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")


def pytest_configure(config):
    # read by test_kernels_compile_and_isolation.py (test modules should not import conftest)
    config._lmsrr_triton_preimported = TRITON_PREIMPORTED_WITHOUT_INTERPRETER and not HAS_CUDA
    config.addinivalue_line("markers", "triton: runs a Triton kernel (CUDA or the CPU interpreter)")


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    skip_triton = pytest.mark.skip(reason=TRITON_WHY)
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if not str(item.fspath).startswith(here):
            continue
        if "triton" in item.keywords and not TRITON_OK:
            item.add_marker(skip_triton)
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture
def backend():
    """Set a kernel backend for one test and restore the default afterwards."""
    import kernels

    yield kernels.set_backend
    kernels.set_backend(None)
