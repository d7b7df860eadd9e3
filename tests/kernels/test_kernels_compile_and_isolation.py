"""Checks that need a fresh process: the interpreter fallback, import without triton."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env(**changes):
    env = dict(os.environ)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_interpreter_suite_in_subprocess(request):
    """triton was imported before TRITON_INTERPRET=1 could be set (the in-process Triton tests
    were skipped): run this folder again in a fresh process where the interpreter works."""
    if not getattr(request.config, "_lmsrr_triton_preimported", False):
        pytest.skip("the Triton tests ran in this process")
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", here,
         "-k", "not test_launch_resources_within_budget and not test_interpreter_suite_in_subprocess"],
        cwd=ROOT, env=_env(TRITON_INTERPRET="1"), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " skipped" in proc.stdout


def test_import_without_triton_and_dispatch_override(monkeypatch):
    """`import kernels.<op>` must work where triton cannot be imported; the env override is
    honoured and an unknown backend is an error."""
    code = (
        "import sys; sys.modules['triton'] = None\n"          # make `import triton` fail
        "import torch, kernels, kernels.msidf, kernels.distill, kernels.masked_update\n"
        "from kernels.dispatch import resolve\n"
        "x = torch.zeros(1)\n"
        "assert resolve('msidf', x, True) == 'torch'\n"
        "assert kernels.get_backend() == 'torch'\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=_env(LMSRR_KERNEL_BACKEND="torch"), timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
    proc = subprocess.run([sys.executable, "-c", "import torch, kernels; kernels.get_backend()"],
                          cwd=ROOT, capture_output=True, text=True,
                          env=_env(LMSRR_KERNEL_BACKEND="cuda-please"), timeout=120)
    assert proc.returncode != 0 and "not a kernel backend" in proc.stderr
