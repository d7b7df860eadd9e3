#!/usr/bin/env python
"""Train a continual-learning method; see ``python scripts/train.py --help``.

Works installed (``lmsrr-train``) and from a checkout (``python scripts/train.py``,
``torchrun scripts/train.py``) without installing: then the checkout root is put on sys.path.
"""
import os
import sys

if __name__ == "__main__":
    try:
        import lmsrr  # noqa: F401
    except ModuleNotFoundError:  # running from an uninstalled checkout
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from lmsrr.cli import main

    sys.exit(main())
