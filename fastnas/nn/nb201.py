"""NAS-Bench-201 networks: the search supernet and the stand-alone network of one cell.

Macro skeleton (Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural Architecture
Search", ICLR 2020): stem Conv3x3 -> C + BN; N cells at C; residual reduction
block; N cells at 2C; residual reduction block; N cells at 4C; BN-ReLU; global average pooling;
linear classifier. The reduction block is a ResNet basic block (two ReLU-Conv-BN 3x3, the first with
stride 2; shortcut AvgPool(2, 2) then a bias-free 1x1 conv, no BN). In the supernet only the cells'
BNs are ``affine=False``; pooling is *not* followed by a BN (unlike the DARTS supernet).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

import torch
from torch import nn

from fastnas.errors import ConfigError
from fastnas.nb201.arch import NB201_EDGES, NB201_NUM_NODES, NB201Arch
from fastnas.nn.cell import ReferenceExecutor
from fastnas.nn.executor import check_executor
from fastnas.nn.mixed import MixedEdge, PartialChannels
from fastnas.ops import ReLUConvBN, build_op
from fastnas.spaces.nb201 import NB201Space


class NB201MixedEdge(MixedEdge):
    """All candidate ops of one NB201 supernet edge: stride 1, BN ``affine=False``, no BN after pooling."""

    def __init__(self, channels: int, ops: tuple[str, ...], partial: PartialChannels | None = None):
        super().__init__(channels, 1, ops, pool_bn=False, partial=partial)


def _sum_into_nodes(
    x: torch.Tensor, edge_outputs: Callable[[int, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Node ``j`` = sum over ``i < j`` of edge ``(i -> j)`` applied to node ``i``; returns node 3."""
    nodes = [x]
    for target in range(1, NB201_NUM_NODES):
        total = None
        for k, (source, t) in enumerate(NB201_EDGES):
            if t == target:
                y = edge_outputs(k, nodes[source])
                total = y if total is None else total + y
        assert total is not None  # every node has an incoming edge
        nodes.append(total)
    return nodes[-1]


class NB201SearchCell(nn.Module):
    """A search cell: a :class:`NB201MixedEdge` on each of the 6 edges; ``forward(x, w[6, K])``."""

    def __init__(self, space: NB201Space, channels: int, partial: PartialChannels | None = None):
        super().__init__()
        self.edges = nn.ModuleList(NB201MixedEdge(channels, space.ops, partial) for _ in space.edges)

    def forward(
        self, x: torch.Tensor, weights: torch.Tensor, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        return _sum_into_nodes(
            x, lambda k, h: self.edges[k](h, weights[k], None if active is None else active[k])
        )


class NB201Cell(nn.Module):
    """The cell of one architecture: one op per edge (``none`` edges output zeros)."""

    def __init__(self, arch: NB201Arch, channels: int, affine: bool = True):
        super().__init__()
        self.edges = nn.ModuleList(build_op(op, channels, 1, affine=affine) for op in arch.ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _sum_into_nodes(x, lambda k, h: self.edges[k](h))


class ResNetBasicBlock(nn.Module):
    """NAS-Bench-201's residual block between stages.

    ``ReLUConvBN(3x3, stride) -> ReLUConvBN(3x3)`` plus a shortcut: AvgPool(2, 2) + 1x1 conv (no BN)
    at stride 2, a ReLU-Conv1x1-BN when only the width changes, the identity otherwise.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 2, affine: bool = True):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride, 1, affine=affine)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, 1, affine=affine)
        if stride == 2:
            self.shortcut: nn.Module = nn.Sequential(
                nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
                nn.Conv2d(c_in, c_out, 1, stride=1, padding=0, bias=False),
            )
        elif c_in != c_out:
            self.shortcut = ReLUConvBN(c_in, c_out, 1, 1, 0, affine=affine)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class _NB201Skeleton(nn.Module):
    """Stem, three stages of ``N`` cells at C, 2C, 4C with reduction blocks between, BN-ReLU, GAP, linear."""

    def __init__(
        self, C: int, N: int, num_classes: int, in_channels: int, make_cell: Callable[[int], nn.Module]
    ):
        super().__init__()
        if C < 1 or N < 1:
            raise ConfigError(f"C and N must be >= 1, got C={C}, N={N}")
        self.C, self.N, self.num_classes = C, N, num_classes
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        widths = (C, 2 * C, 4 * C)
        self.cells = nn.ModuleList(make_cell(width) for width in widths for _ in range(N))
        self.reductions = nn.ModuleList(
            ResNetBasicBlock(c_in, c_out, 2) for c_in, c_out in itertools.pairwise(widths)
        )
        self.lastact = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[-1], num_classes)

    def _run(
        self, x: torch.Tensor, run_cell: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        h = self.stem(x)
        for stage in range(3):
            for cell in self.cells[stage * self.N : (stage + 1) * self.N]:
                h = run_cell(cell, h)
            if stage < 2:
                h = self.reductions[stage](h)
        h = self.global_pooling(self.lastact(h))
        return self.classifier(h.flatten(1))


class NB201Supernet(_NB201Skeleton):
    """The NAS-Bench-201 search supernet; ``forward(x, {"cell": Tensor[6, num_ops]})`` returns logits.

    Every cell shares the weights of the one cell type ``"cell"``. The architecture weights are not
    module parameters: the search algorithm owns them (as for :class:`fastnas.nn.Supernet`).
    """

    def __init__(
        self,
        space: NB201Space | None = None,
        C: int = 16,
        N: int = 5,
        num_classes: int = 10,
        in_channels: int = 3,
        executor: str | None = None,
        partial: PartialChannels | None = None,
    ):
        space = space or NB201Space()
        super().__init__(C, N, num_classes, in_channels, lambda width: NB201SearchCell(space, width, partial))
        self.space = space
        self.cell_types: list[str] = ["cell"] * len(self.cells)
        self.executor_name = self.EXECUTORS[0]
        if executor is not None:
            self.set_executor(executor)

    EXECUTORS: tuple[str, ...] = (ReferenceExecutor.name,)
    """The executors of NB201 cells: the reference loop only."""

    def set_executor(self, name: str) -> None:
        check_executor(name, self.EXECUTORS, "NAS-Bench-201")
        self.executor_name = name

    def forward(
        self,
        x: torch.Tensor,
        weights: Mapping[str, torch.Tensor],
        active: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        try:
            w = weights["cell"]
        except KeyError:
            raise KeyError(f"NB201 supernet weights need the key 'cell', got {sorted(weights)}") from None
        expected = (self.space.num_edges, self.space.num_ops)
        if tuple(w.shape) != expected:
            raise ValueError(f"NB201 weights['cell'] must have shape {expected}, got {tuple(w.shape)}")
        mask = None if active is None else active["cell"]
        return self._run(x, lambda cell, h: cell(h, w, mask))


class NB201Network(_NB201Skeleton):
    """The stand-alone network of one NB201 cell (affine BNs); ``forward(x)`` returns logits."""

    def __init__(
        self,
        arch: NB201Arch | str,
        C: int = 16,
        N: int = 5,
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        arch = NB201Arch.parse(arch) if isinstance(arch, str) else arch
        if not isinstance(arch, NB201Arch):
            raise TypeError(f"NB201Network takes an NB201Arch or an arch string, got {type(arch).__name__}")
        super().__init__(C, N, num_classes, in_channels, lambda width: NB201Cell(arch, width))
        self.arch = arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, lambda cell, h: cell(h))


__all__ = [
    "NB201Cell",
    "NB201MixedEdge",
    "NB201Network",
    "NB201SearchCell",
    "NB201Supernet",
    "ResNetBasicBlock",
]
