"""The LMSRR network: sources -> MSIDF -> linear classifier (the ARO switch vector belongs to the
method, :mod:`lmsrr.methods.lmsrr`).

The forward is split so a training step can share work:

    zs = net.prefix(x)                     frozen prefixes, once per input, no autograd
    hs, logits = net.top(zs)               trainable blocks (every level's output) and the head
    old_hs = net.top_hiddens(zs, old)      a frozen snapshot of the blocks on the same zs

The classifier covers every class of the stream from the start (the released code does the same),
so a new task changes no shapes.
"""
from __future__ import annotations

import copy
import hashlib
import os

import torch
import torch.nn as nn

from lmsrr.errors import ConfigError, UserError
from lmsrr.models.msidf import MSIDF
from lmsrr.models.source import Source, check_model_name, parse_sources
from lmsrr.pretrain.builtin import builtin_weight_files

Hiddens = list[list[torch.Tensor]]  # [source][level]


class LMSRRNet(nn.Module):
    def __init__(self, sources: list[Source], n_classes: int, kernel_sizes=(3, 5),
                 variant: str = "attention", fusion_dim: int = 0):
        super().__init__()
        self.sources = nn.ModuleList(sources)
        widths = [s.width for s in sources]
        dim = fusion_dim or max(widths)
        self.fusion = MSIDF(widths, dim, kernel_sizes, variant)
        self.classifier = nn.Linear(dim, n_classes)
        # Stream and replay inputs may share one forward only if no trainable layer keeps
        # batch statistics (BatchNorm would see a different batch than the released code's).
        self.has_batch_stats = any(s.has_batch_stats for s in sources)

    def prefix(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Float images in [0, 1] -> each source's frozen-prefix output (no autograd)."""
        return [s.prefix(x) for s in self.sources]

    def top_hiddens(self, zs: list[torch.Tensor], blocks: list[list[nn.Module]] | None = None) -> Hiddens:
        if blocks is None:
            return [s.run_blocks(z) for s, z in zip(self.sources, zs)]
        return [s.run_blocks(z, b) for s, z, b in zip(self.sources, zs, blocks)]

    def head(self, hs: Hiddens) -> torch.Tensor:
        feats = [s.tail(h[-1]) for s, h in zip(self.sources, hs)]
        return self.classifier(self.fusion(feats))

    def top(self, zs: list[torch.Tensor]) -> tuple[Hiddens, torch.Tensor]:
        hs = self.top_hiddens(zs)
        return hs, self.head(hs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(self.prefix(x))[1]

    def snapshot_blocks(self) -> nn.ModuleList:
        """Frozen copy of every source's trainable blocks (the 'old model' of ARO)."""
        old = nn.ModuleList(nn.ModuleList(copy.deepcopy(b) for b in s.blocks) for s in self.sources)
        old.requires_grad_(False)
        return old.train(self.training)

    # The baselines (lmsrr/methods/) read the network through these; nothing above uses them.
    def fused(self, hs: Hiddens) -> torch.Tensor:
        """The fused feature (the classifier's input) of the trainable blocks' outputs ``hs``."""
        return self.fusion([s.tail(h[-1]) for s, h in zip(self.sources, hs)])

    def fused_features(self, x: torch.Tensor) -> torch.Tensor:
        """Fused features of float images in [0, 1] (NMC and iCaRL's class means, herding)."""
        return self.fused(self.top_hiddens(self.prefix(x)))

    def snapshot_top(self) -> nn.ModuleDict:
        """Frozen copy of everything a step trains (blocks, fusion, classifier): the previous
        model of LwF and iCaRL. The prefixes are frozen, so with them it is the whole old net."""
        snap = nn.ModuleDict({"blocks": self.snapshot_blocks(), "fusion": copy.deepcopy(self.fusion),
                              "classifier": copy.deepcopy(self.classifier)})
        snap.requires_grad_(False)
        return snap.train(self.training)

    def logits_with(self, zs: list[torch.Tensor], snap: nn.ModuleDict) -> torch.Tensor:
        """Logits of a :meth:`snapshot_top` copy on prefix outputs ``zs``."""
        hs = self.top_hiddens(zs, snap["blocks"])
        return snap["classifier"](snap["fusion"]([s.tail(h[-1]) for s, h in zip(self.sources, hs)]))


class TrainableTop(nn.Module):
    """The trainable part of a step as one module: the unit the engine compiles and DDP-wraps.

    ``forward(zs_a, zs_b, ...)`` runs the blocks, fusion and head on each group of prefix outputs
    separately and returns ``((hs_a, logits_a), (hs_b, logits_b), ...)``; groups are separate
    only when batch statistics must not mix (stream vs replay with BatchNorm sources), and one
    call keeps DDP to one forward per step.
    """

    def __init__(self, net: LMSRRNet):
        super().__init__()
        self.net = net

    def forward(self, *groups: list[torch.Tensor]) -> tuple[tuple[Hiddens, torch.Tensor], ...]:
        return tuple(self.net.top(zs) for zs in groups)


def build_net(model_cfg, n_classes: int, input_transform=None) -> LMSRRNet:
    """The network of ``model_cfg``; ``input_transform`` (a stream's, under --pipeline released)
    replaces every source's own input stage."""
    specs = parse_sources(model_cfg.sources)
    weights = _weights_per_source(model_cfg.pretrained, specs)
    sources = [Source(spec, k, w) for spec, k, w in zip(specs, model_cfg.trainable_blocks_per_source, weights)]
    for s in sources:
        s.use_input_transform(input_transform)
    return LMSRRNet(sources, n_classes, model_cfg.kernel_sizes, model_cfg.msidf,
                    model_cfg.fusion_dim)


def check_sources(model_cfg) -> None:
    """What can be checked of the sources without building them: the spec parses, every name is
    a timm model, and --pretrained names one existing weights file or folder per source (or
    built-in weights that exist for them)."""
    specs = parse_sources(model_cfg.sources)
    for spec in specs:
        check_model_name(spec.name)
    for spec, weights in zip(specs, _weights_per_source(model_cfg.pretrained, specs)):
        if weights not in ("none", "hub") and not os.path.exists(weights):
            raise UserError(f"source {spec.name}: weight file {weights!r} does not exist")


def weights_description(pretrained: str) -> str:
    """What ``--pretrained`` starts the sources from, in words for the run's log."""
    return {"builtin": "built-in weights (pre-trained on generated fractals, shipped with lmsrr)",
            "none": "random initialisation",
            "hub": "timm weights from the local hub cache"}.get(pretrained, f"weight files {pretrained}")


def _weights_per_source(pretrained: str, specs) -> list[str]:
    if pretrained == "builtin":  # the files shipped in lmsrr/weights/, verified against the manifest
        return builtin_weight_files(specs)
    n = len(specs)
    if pretrained in ("none", "hub"):
        return [pretrained] * n
    files = [p.strip() for p in pretrained.split(",")]
    if len(files) != n:
        raise ConfigError(f"--pretrained names {len(files)} weight file(s) for {n} source(s); "
                          f"give one per source, or 'none' / 'hub' / 'builtin'")
    return files


def trainable_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and all buffers: what training changes. Frozen weights are rebuilt
    from the configuration instead (and checked with :func:`frozen_fingerprint`)."""
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in net.named_buffers()}
    return {k: v.detach().clone() for k, v in net.state_dict().items() if k in trainable or k in buffers}


def frozen_fingerprint(net: nn.Module) -> str:
    """SHA-256 of the frozen parameters: equal iff the frozen source weights are equal."""
    h = hashlib.sha256()
    for n, p in net.named_parameters():
        if not p.requires_grad:
            h.update(n.encode())
            h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
