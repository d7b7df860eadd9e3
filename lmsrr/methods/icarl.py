"""icarl: iCaRL (Rebuffi et al., CVPR 2017): herding exemplars, distillation, nearest mean of
exemplars.

Memory: at most K = --buffer-size exemplars, m = K // (classes seen) per class. At a task's end
the exemplar lists of old classes are cut to their first m entries (herding order is priority
order) and each new class gets m exemplars chosen by herding on L2-normalised fused features:
the k-th exemplar is the image whose feature brings the running mean of the chosen k closest to
the class mean mu:

    p_k = argmin_x || mu - (phi(x) + sum_{j<k} phi(p_j)) / k ||

Training at task t runs on the task's data plus all exemplars, with sigmoid binary cross-entropy
over the classes seen so far; the targets of earlier classes are the previous model's sigmoid
outputs (distillation), those of the current classes the one-hot labels:

    L = BCE( f(x)[:n_seen], [sigmoid(f_old(x)[:n_old]), onehot(y)[n_old:n_seen]] )

Prediction: nearest mean of exemplars, y* = argmin_y || phi(x) - mu_y || with phi and mu_y
normalised (mu_y: the mean of the normalised exemplar features). Herding and means use the whole
task's un-augmented training data in eval mode, so every DDP rank computes the same exemplars.

Exemplars are kept as positions into the stream's training split (the memory budget counts
images all the same): training batches over the task plus its exemplars are then ordinary
stream batches, for in-memory and file datasets alike, and checkpoints stay small.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lmsrr.errors import ConfigError, UserError
from lmsrr.methods.base import Batch, StepOutput
from lmsrr.methods.common import Baseline, encode, require_buffer, require_class_il
from lmsrr.methods.registry import register_method


def herding(feats: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of the m rows of ``feats`` (n, D) chosen greedily so that the running mean of the
    chosen rows stays closest to the mean of all rows; in selection order."""
    n = feats.shape[0]
    m = min(m, n)
    mu = feats.mean(0)
    running = torch.zeros_like(mu)
    taken = torch.zeros(n, dtype=torch.bool, device=feats.device)
    chosen = []
    for k in range(1, m + 1):
        dist = (mu - (running + feats) / k).norm(dim=1)
        dist = dist.masked_fill(taken, float("inf"))
        i = int(dist.argmin())  # task-end bookkeeping, not the training loop: a sync is fine
        chosen.append(i)
        taken[i] = True
        running += feats[i]
    return torch.tensor(chosen, dtype=torch.long, device=feats.device)


@register_method("icarl")
class ICaRL(Baseline):
    @classmethod
    def check_config(cls, cfg, stream) -> None:
        require_buffer(cfg, cls.name)
        require_class_il(stream, cls.name)
        if cfg.method.buffer_size < stream.n_classes:
            raise ConfigError(f"method 'icarl' keeps --buffer-size // (classes seen) exemplars per "
                              f"class: --buffer-size must be >= {stream.n_classes} (the stream's "
                              f"classes), got {cfg.method.buffer_size}")

    def __init__(self, cfg, net, stream, device):
        super().__init__(cfg, net, stream, device)
        self.memory = cfg.method.buffer_size
        self.eval_batch = cfg.data.eval_batch_size
        self.exemplars: dict[int, torch.Tensor] = {}  # class -> training-split positions (CPU), herding order
        self.class_means: torch.Tensor | None = None  # (n_classes, D), rows of unseen classes unused
        self.n_means = 0  # classes 0..n_means-1 have means
        self.old = None

    # ------------------------------------------------------------------ data
    def training_split(self, task: int):
        """The task's training samples plus every stored exemplar (class-IL streams share one
        training split, so exemplars of earlier tasks are positions in the same split)."""
        split, pos = self.stream.train_split(task)
        return split, torch.cat([pos, *(ex for _, ex in sorted(self.exemplars.items()))])

    # ------------------------------------------------------------------ training
    def begin_task(self, task: int) -> None:
        super().begin_task(task)
        self.old = self.net.snapshot_top() if task > 0 else None

    def targets(self, zs: list[torch.Tensor], y: torch.Tensor, task: int) -> torch.Tensor:
        """BCE targets over the classes seen so far (see the module docstring)."""
        n_seen = self.stream.seen_classes(task)
        target = F.one_hot(y, self.stream.n_classes)[:, :n_seen].float()
        if self.old is not None:
            n_old = self.stream.seen_classes(task - 1)
            with torch.no_grad():
                target[:, :n_old] = torch.sigmoid(self.net.logits_with(zs, self.old)[:, :n_old].float())
        return target

    def loss(self, batch: Batch) -> StepOutput:
        zs = self.net.prefix(batch.x_aug)
        ((_, logits),) = self.top(zs)
        n_seen = self.stream.seen_classes(batch.task)
        bce = F.binary_cross_entropy_with_logits(logits[:, :n_seen].float(),
                                                 self.targets(zs, batch.y, batch.task))
        return StepOutput(bce, logits, {"loss/bce": bce})

    # ------------------------------------------------------------------ memory and means
    def end_task(self, task: int) -> None:
        n_seen = self.stream.seen_classes(task)
        m = self.memory // n_seen
        for c in self.exemplars:
            self.exemplars[c] = self.exemplars[c][:m]
        split, pos = self.stream.train_split(task)
        feats, labels = self.encode(split, pos)
        feats, labels = F.normalize(feats, dim=1), labels.cpu()
        for c in self.stream.task_classes(task):
            mine = labels == c
            self.exemplars[c] = pos[mine][herding(feats[mine.to(feats.device)], m).cpu()]
        self.update_class_means(n_seen)

    def encode(self, split, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused features and labels of the samples ``pos``, every one of them (herding picks
        positions, so a sample a file loader left out as unreadable would misalign them)."""
        feats, labels = encode(self.net, self.stream.images(split, pos, self.eval_batch, self.device))
        if feats.shape[0] != pos.shape[0]:
            raise UserError(f"icarl: {pos.shape[0] - feats.shape[0]} training image(s) of "
                            f"{self.stream.name} could not be decoded; run with --verify-images to "
                            f"leave unreadable files out before training")
        return feats, labels

    def update_class_means(self, n_seen: int) -> None:
        split, _ = self.stream.train_split(self.task)
        means = []
        for c in range(n_seen):
            f = F.normalize(self.encode(split, self.exemplars[c])[0], dim=1)
            means.append(F.normalize(f.mean(0), dim=0))
        self.class_means = torch.stack(means)
        self.n_means = n_seen

    @torch.no_grad()
    def predict_from_prefix(self, zs: list[torch.Tensor]) -> torch.Tensor:
        """Minus the squared distance to each class's exemplar mean; -inf for unseen classes."""
        f = F.normalize(self.net.fused(self.net.top_hiddens(zs)).float(), dim=1)
        out = torch.full((f.shape[0], self.stream.n_classes), float("-inf"), device=f.device)
        if self.class_means is not None:
            out[:, : self.n_means] = -torch.cdist(f, self.class_means).square()
        return out

    def state_dict(self) -> dict:
        return {"exemplars": dict(self.exemplars), "class_means": self.class_means,
                "n_means": self.n_means, "old": self.old.state_dict() if self.old is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.exemplars = {int(c): pos.long().cpu() for c, pos in state["exemplars"].items()}
        means = state["class_means"]  # checkpoints load on the CPU
        self.class_means = None if means is None else means.to(self.device)
        self.n_means = int(state["n_means"])
        self.old = None
        if state["old"] is not None:
            self.old = self.net.snapshot_top()
            self.old.load_state_dict(state["old"])
