#!/usr/bin/env python
"""Pre-train sources on generated fractal categories; see ``python scripts/pretrain.py --help``.

Works installed (``lmsrr-pretrain``) and from a checkout (``python scripts/pretrain.py``,
``torchrun scripts/pretrain.py``) without installing: then the checkout root is put on sys.path.
"""
import os
import sys

if __name__ == "__main__":
    try:
        import lmsrr  # noqa: F401
    except ModuleNotFoundError:  # running from an uninstalled checkout
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from lmsrr.pretrain.train import main

    sys.exit(main())
