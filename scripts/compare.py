#!/usr/bin/env python
"""Compare continual-learning methods on one stream; see ``python scripts/compare.py --help``.

Works installed (``lmsrr-compare``) and from a checkout without installing (then the checkout
root is put on sys.path), like ``scripts/train.py``.
"""
import os
import sys

if __name__ == "__main__":
    try:
        import lmsrr  # noqa: F401
    except ModuleNotFoundError:  # running from an uninstalled checkout
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from lmsrr.compare import main

    sys.exit(main(prog="python scripts/compare.py"))
