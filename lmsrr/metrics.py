"""Continual-learning metrics over an accuracy matrix.

R[i][j] = accuracy (%) on task j's test split after training task i, for j <= i.
With T tasks trained:
    average accuracy  A = mean_j R[T-1][j]
    forgetting        F = mean_{j < T-1} ( max_{i < T-1, i >= j} R[i][j] - R[T-1][j] )
    backward transfer B = mean_{j < T-1} ( R[T-1][j] - R[j][j] )
Forgetting and BWT are undefined (None) after a single task.
"""
from __future__ import annotations

import numpy as np


def as_matrix(rows: list[list[float]]) -> np.ndarray:
    """Lower-triangular list of rows -> square array with NaN above the diagonal."""
    t = len(rows)
    m = np.full((t, t), np.nan)
    for i, row in enumerate(rows):
        m[i, : len(row)] = row
    return m


def average_accuracy(rows: list[list[float]]) -> float:
    return float(np.mean(rows[-1]))


def forgetting(rows: list[list[float]]) -> float | None:
    m = as_matrix(rows)
    t = m.shape[0]
    if t < 2:
        return None
    drops = [np.nanmax(m[j : t - 1, j]) - m[t - 1, j] for j in range(t - 1)]
    return float(np.mean(drops))


def backward_transfer(rows: list[list[float]]) -> float | None:
    m = as_matrix(rows)
    t = m.shape[0]
    if t < 2:
        return None
    return float(np.mean([m[t - 1, j] - m[j, j] for j in range(t - 1)]))


def summarize(rows: list[list[float]]) -> dict:
    return {
        "avg_acc": average_accuracy(rows),
        "forgetting": forgetting(rows),
        "bwt": backward_transfer(rows),
    }
