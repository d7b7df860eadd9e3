#!/usr/bin/env python
"""lmsrr-eval from a checkout; see ``python scripts/eval.py --help``.

Works installed (``lmsrr-eval``) and from a checkout without installing (then the checkout
root is put on sys.path), like ``scripts/train.py``.
"""
import os
import sys

if __name__ == "__main__":
    try:
        import lmsrr  # noqa: F401
    except ModuleNotFoundError:  # running from an uninstalled checkout
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from lmsrr.eval_cli import eval_main

    sys.exit(eval_main())
