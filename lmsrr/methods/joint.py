"""joint: the upper bound. At task t it trains on the union of the training data of tasks 0..t.

"Joint" here means cumulative training: after each task the model has trained on everything seen
so far (continuing from its current weights, ``--epochs`` epochs over the union per task), so it
has an accuracy after every task like the other methods, and its last row is a model trained on
all tasks' data at once. Loss as finetune: L = CE(f(x), y). It costs (T + 1) / 2 times finetune's
steps over T tasks.
"""
from __future__ import annotations

from lmsrr.methods.finetune import Finetune
from lmsrr.methods.registry import register_method


@register_method("joint")
class Joint(Finetune):
    def __init__(self, cfg, net, stream, device):
        super().__init__(cfg, net, stream, device)
        self._union: tuple[int, object, object] | None = None

    def training_split(self, task: int):
        """The training samples of tasks 0..task (built once per task: a domain-incremental
        stream materialises the union of its per-task transformed splits)."""
        if self._union is None or self._union[0] != task:
            self._union = (task, *self.stream.union_train_split(range(task + 1)))
        return self._union[1], self._union[2]
