"""lmsrr: a fast, faithful continual-learning trainer for LMSRR (NeurIPS 2025)."""
import importlib.util as _importlib_util
import os as _os

__version__ = "0.1.0"


def _check_kernel_package() -> None:
    """Our fused ops live in the top-level package ``kernels`` beside this one. Another
    distribution of that import name (Hugging Face's kernel hub, which transformers can pull in)
    would shadow it; say so at import instead of failing later on ``kernels.distill``."""
    expected = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "kernels")
    spec = _importlib_util.find_spec("kernels")
    found = list(spec.submodule_search_locations or []) if spec is not None else []
    ours = any(_os.path.realpath(p) == _os.path.realpath(expected)
               and _os.path.isfile(_os.path.join(p, "dispatch.py")) for p in found)
    if not ours:
        where = found[0] if found else (spec.origin if spec is not None else "nowhere")
        raise ImportError(
            f"lmsrr needs its own 'kernels' package ({expected}), but 'import kernels' resolves to "
            f"{where}: another distribution named 'kernels' (e.g. Hugging Face's kernel hub) shadows "
            f"it. Uninstall that one ('pip uninstall kernels') or use lmsrr in an environment "
            f"without it.")


_check_kernel_package()
