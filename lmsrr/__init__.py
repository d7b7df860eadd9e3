"""lmsrr: a fast, faithful continual-learning trainer for LMSRR (NeurIPS 2025)."""

__version__ = "0.1.0"
