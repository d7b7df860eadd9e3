"""Flat parameter layout for the masked multi-tensor optimizer step.

All trainable parameters live in one flat buffer (and so do their gradients and every optimizer
state tensor, with the same layout). Parameters of one param group are contiguous; each group
starts on a multiple of ``block`` elements, so every block of ``block`` elements belongs to
exactly one group, hence to one layer and one gate. The step is then a single launch with one
program per block: the program looks up its group (``block_group``), the group's layer
(``group_layer``) and that layer's gate, and either updates its elements or returns at once.

    flat:  | g0: p0 p1 .. pad | g1: p2 .. pad | ... |
             ^ multiple of block

Inside a group every parameter starts on a multiple of ``align`` elements (256 bytes for
float32) so the parameter views stay aligned for the other kernels that read them. The gaps hold
zeros in every buffer and stay zero under both updates (0 gradient, 0 state, 0 parameter).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import torch


# elements per 128-bit-friendly run: the kernels' tail masks are constant over VEC elements
VEC = 16


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


@dataclass
class FlatLayout:
    block: int
    numel: int                              # total length of every flat buffer (multiple of block)
    offsets: List[int]                      # per parameter: start in the flat buffer
    shapes: List[torch.Size]                # per parameter: its shape
    param_group: List[int]                  # per parameter: its group index
    group_start: List[int]                  # per group: first element
    group_end: List[int]                    # per group: one past its last parameter element
    group_layer: List[int]                  # per group: gate index
    n_layers: int
    device: torch.device
    tables: dict = field(default_factory=dict)   # device copies, built by ``to_device``

    @property
    def n_groups(self) -> int:
        return len(self.group_start)

    @property
    def n_blocks(self) -> int:
        return self.numel // self.block

    def numel_of(self, i: int) -> int:
        n = 1
        for s in self.shapes[i]:
            n *= int(s)
        return n

    def param_slices(self) -> List[Tuple[int, int, int]]:
        """(group, start, numel) for every parameter, in order."""
        return [(self.param_group[i], self.offsets[i], self.numel_of(i)) for i in range(len(self.offsets))]

    @classmethod
    def build(
        cls,
        group_shapes: Sequence[Sequence[torch.Size]],
        group_layers: Sequence[int],
        device: torch.device,
        block: int = 4096,
        align: int = 64,
    ) -> "FlatLayout":
        if block < VEC or block & (block - 1):
            raise ValueError(f"block must be a power of two >= {VEC}, got {block}")
        if any(layer < 0 for layer in group_layers):
            raise ValueError("layer ids must be non-negative")
        offsets, shapes, param_group = [], [], []
        g_start, g_end = [], []
        cursor = 0
        for g, gshapes in enumerate(group_shapes):
            cursor = _round_up(cursor, block)
            g_start.append(cursor)
            for shape in gshapes:
                cursor = _round_up(cursor, align) if cursor > g_start[-1] else cursor
                n = 1
                for s in shape:
                    n *= int(s)
                offsets.append(cursor)
                shapes.append(torch.Size(shape))
                param_group.append(g)
                cursor += n
            g_end.append(cursor)
        numel = max(_round_up(cursor, block), block)
        layout = cls(
            block=block, numel=numel, offsets=offsets, shapes=shapes, param_group=param_group,
            group_start=g_start, group_end=g_end, group_layer=list(group_layers),
            n_layers=(max(group_layers) + 1) if group_layers else 0, device=torch.device(device),
        )
        layout.to_device()
        return layout

    def to_device(self) -> None:
        """(Re)build the small index tables the kernel reads: block -> group, group -> layer/end."""
        block_group = torch.zeros(self.n_blocks, dtype=torch.int32)
        for g, (s, e) in enumerate(zip(self.group_start, self.group_end)):
            if e > s:
                block_group[s // self.block : _round_up(e, self.block) // self.block] = g
        # blocks that belong to no group (never: groups tile the buffer) would map to group 0
        # whose end mask keeps them idle.
        self.tables = {
            "block_group": block_group.to(self.device),
            "group_layer": torch.tensor(self.group_layer or [0], dtype=torch.int32).to(self.device),
            "group_end": torch.tensor(self.group_end or [0], dtype=torch.int64).to(self.device),
            # the kernels' tail bound: the end rounded up to VEC elements, still inside the
            # group's last block (block is a multiple of VEC) and over zero gap elements only
            "group_stop": torch.tensor([_round_up(e, VEC) for e in self.group_end] or [0],
                                       dtype=torch.int64).to(self.device),
        }
        self.n_layers = (max(self.group_layer) + 1) if self.group_layer else 0

    def set_layers(self, group_layers: Sequence[int]) -> None:
        if len(group_layers) != self.n_groups:
            raise ValueError("one layer id per param group")
        self.group_layer = [int(x) for x in group_layers]
        self.to_device()

    def views(self, flat: torch.Tensor) -> List[torch.Tensor]:
        """Per-parameter views of ``flat`` (shaped like the parameters)."""
        return [flat[o : o + self.numel_of(i)].view(self.shapes[i]) for i, o in enumerate(self.offsets)]
