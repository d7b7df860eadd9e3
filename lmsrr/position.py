"""Where training stands in the stream, and one task's epochs and batches from there.

A checkpoint records a :class:`StreamPosition`. Resuming inside an epoch replays that epoch's draw
exactly: the shuffling generator goes back to its state at the epoch's start, the batches already
trained are drawn and dropped, then every random generator is restored as checkpointed; so the
resumed run sees the same batches, augmentations and replay draws as an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

from lmsrr.checkpoint import restore_rng


@dataclass
class StreamPosition:
    task: int
    epoch: int = 0
    batch: int = 0  # batches of this epoch already trained
    epoch_generator: torch.Tensor | None = None  # the shuffling generator at the epoch's start

    def to_dict(self) -> dict:
        return {"task": self.task, "epoch": self.epoch, "batch": self.batch,
                "epoch_generator": self.epoch_generator}

    @classmethod
    def from_dict(cls, d: dict) -> "StreamPosition":
        return cls(d["task"], d["epoch"], d["batch"], d.get("epoch_generator"))


class TaskCursor:
    """One task's epochs and batches, starting at ``start`` (a fresh task when None).

    ``rng_state`` is the checkpoint's record of every generator, restored after a mid-epoch
    replay. :meth:`position` is what a checkpoint written now must record.
    """

    def __init__(self, task: int, epochs: int, shuffle: torch.Generator,
                 start: StreamPosition | None = None, rng_state: dict | None = None):
        self.task, self.n_epochs, self.shuffle = task, epochs, shuffle
        start = start or StreamPosition(task)
        self.epoch, self.batch = start.epoch, 0
        self._skip, self._epoch_gen, self._rng_state = start.batch, start.epoch_generator, rng_state

    @property
    def batches_done(self) -> int:
        """Batches of earlier epochs are not counted: multiply by the epoch length yourself."""
        return self._skip

    def epochs(self) -> Iterator[int]:
        for self.epoch in range(self.epoch, self.n_epochs):
            yield self.epoch

    def batches(self, draw: Callable[[], Iterable]) -> Iterator:
        """This epoch's items; ``draw()`` makes a fresh iterator over them (consuming the shuffling
        generator, as every epoch's draw does)."""
        if self._skip:
            self.shuffle.set_state(self._epoch_gen)
            items = iter(draw())
            for _ in range(self._skip):
                next(items)
            restore_rng(self._rng_state, {"shuffle": self.shuffle})
            self.batch, self._skip = self._skip, 0
        else:
            self._epoch_gen = self.shuffle.get_state()
            items = iter(draw())
            self.batch = 0
        for item in items:
            self.batch += 1
            yield item

    def position(self) -> StreamPosition:
        return StreamPosition(self.task, self.epoch, self.batch, self._epoch_gen)
