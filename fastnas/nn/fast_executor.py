"""The fast cell executor: batched edges, fused conv stacks, folded BNs and a fused node sum.

It computes exactly what :class:`~fastnas.nn.executor.ReferenceExecutor` computes (node ``j`` is the sum
over earlier states ``i`` of the mixed edge ``(i, j)``; Eq. 1 of Yang, You, Li, Wang, Qian & Lin, "Towards
Improving the Consistency, Efficiency, and Flexibility of Differentiable Neural Architecture Search",
CVPR 2021), in "push" order:

1. Once state ``i`` is known, all ``E`` edges leaving it apply the same op types to the same input, so
   each op type runs once for all of them: the ReLU-fused depthwise convolution
   (:func:`~fastnas.kernels.depthwise_conv.relu_depthwise_conv`) reads the shared input once and writes
   ``E`` outputs, the pointwise convolution
   (:func:`~fastnas.kernels.pointwise_conv.pointwise_conv_stats`) is one batched launch that also sums
   the statistics of the BN after it, and the SepConv's middle BN normalises from those
   sums (:func:`~fastnas.kernels.pointwise_conv.batch_norm_from_stats`). Parameter-free pooling runs
   once per source, not once per edge; the stride-2 ``skip_connect`` (FactorizedReduce) runs as two
   batched pointwise convolutions.
2. Every edge's final BNs are folded into its weighted sum
   (:func:`~fastnas.nn.fused_edge.edge_from_pre_bn`), so normalised op outputs are never
   written; running statistics are updated as ``nn.BatchNorm2d`` would.
3. A node is the fused sum of its incoming edges
   (:func:`~fastnas.kernels.masked_aggregate.masked_aggregate`).

Partial-channel edges (PC-DARTS, :class:`~fastnas.nn.mixed.PartialChannels`) run batched too: the edges
leaving a state share its first ``C/K`` channels, a view the kernels read with its strides (no copy), and
each edge then appends its bypass and shuffles (:meth:`~fastnas.nn.MixedEdge.with_bypass`).

Every kernel dispatches on its own (Triton for CUDA tensors, the PyTorch reference otherwise, and
everywhere under :func:`fastnas.backend.force_reference`), so on a CPU this executor computes the same
batched math with PyTorch ops. In evaluation mode (running statistics) and for cells holding an op it
cannot split (an op not ending in an affine-free BN), it runs the reference loop.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastnas.backend import force_reference
from fastnas.kernels._common import model_uses_kernels
from fastnas.kernels.depthwise_conv import relu_depthwise_conv
from fastnas.kernels.masked_aggregate import masked_aggregate
from fastnas.kernels.pointwise_conv import batch_norm_from_stats, pointwise_conv_stats
from fastnas.nn.executor import ReferenceExecutor, register_executor
from fastnas.nn.fused_edge import edge_from_pre_bn, foldable_bn, split_final_bn, update_bns_running_stats
from fastnas.ops.darts_ops import (
    DilConv,
    FactorizedReduce,
    Identity,
    SepConv,
    autocast_dtype,
    depthwise_conv_args,
)

if TYPE_CHECKING:
    from fastnas.nn.cell import SearchCell
    from fastnas.nn.mixed import MixedEdge

__all__ = ["FastExecutor", "outgoing_edges"]

_POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def outgoing_edges(num_nodes: int) -> list[list[tuple[int, int]]]:
    """``(edge_index, target_node)`` of every edge leaving each source state, in the edge order of the
    DARTS cell (node ``j`` has an edge from each of the ``j + 2`` earlier states)."""
    out: list[list[tuple[int, int]]] = [[] for _ in range(num_nodes + 1)]
    offset = 0
    for node in range(num_nodes):
        for source in range(node + 2):
            out[source].append((offset + source, node))
        offset += node + 2
    return out


def _op_kind(op: nn.Module) -> str | None:
    """How the executor runs ``op`` across edges; ``None`` when it cannot fold its final BN."""
    if isinstance(op, Identity):
        return "identity"
    if isinstance(op, SepConv):
        first, second = cast(DilConv, op[0]), cast(DilConv, op[1])
        return "sep" if foldable_bn(first[3]) and foldable_bn(second[3]) else None
    if isinstance(op, DilConv):
        return "dil" if foldable_bn(op[3]) else None
    if isinstance(op, FactorizedReduce):
        return "reduce" if foldable_bn(op.bn) else None
    if isinstance(op, nn.Sequential) and len(op) == 2 and isinstance(op[0], _POOLS) and foldable_bn(op[1]):
        return "pool"
    return "module" if split_final_bn(op) is not None else None


def _unbatchable(cell: SearchCell) -> str | None:
    """Why the cell cannot run batched (its edges must share one op list, the whole weight row, and no
    skip dropout), or None."""
    edges = [cast("MixedEdge", module) for module in cell.edges]
    first = edges[0].op_names
    for edge in edges:
        if edge.op_names != first or edge.columns != tuple(range(len(first))):
            return "its edges have different candidate ops (per-edge candidate sets)"
        if edge.skip_dropout > 0:
            return "skip_connect dropout is on"
    return None


_FALLBACKS_SEEN: set[str] = set()


def _say_once(reason: str) -> None:
    """Warn once per process why cells run the reference loop (a fallback is never silent)."""
    if reason not in _FALLBACKS_SEEN:
        _FALLBACKS_SEEN.add(reason)
        warnings.warn(f"fast executor: a cell runs the reference loop because {reason}", stacklevel=4)


def _cell_kinds(cell: SearchCell) -> list[dict[int, str]] | None:
    """Per edge, the kind of every active op; ``None`` if any op cannot run on the fast path."""
    reason = _unbatchable(cell)
    if reason is not None:
        _say_once(reason)
        return None
    kinds: list[dict[int, str]] = []
    for module in cell.edges:
        edge = cast("MixedEdge", module)
        if edge.fold_plan is None:
            return None
        edge_kinds: dict[int, str] = {}
        for k in edge.active:
            kind = _op_kind(edge.ops[k])
            if kind is None:
                return None
            edge_kinds[k] = kind
        kinds.append(edge_kinds)
    return kinds


def _dil_stage(x: Tensor, blocks: Sequence[DilConv]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``ReLU -> depthwise -> pointwise`` of every edge's ``DilConv`` block at once, before its BN:
    returns ``(z [E, N, C, H, W], shifted sum, shifted sum of squares, shift [E, C])``."""
    depthwise = [cast(nn.Conv2d, b[1]) for b in blocks]
    pointwise = [cast(nn.Conv2d, b[2]) for b in blocks]
    first = depthwise[0]
    e, c, k = len(blocks), first.in_channels, first.kernel_size[0]
    dw_weight = torch.stack([m.weight for m in depthwise]).view(e, c, k, k).to(x.dtype)
    h = relu_depthwise_conv(x, dw_weight, *depthwise_conv_args(first))
    pw_weight = torch.stack([m.weight for m in pointwise]).view(e, pointwise[0].out_channels, c).to(x.dtype)
    return pointwise_conv_stats(h, pw_weight)


def _sep_conv(x: Tensor, ops: Sequence[SepConv]) -> Tensor:
    """Every edge's ``SepConv`` before its final BN: two ``DilConv`` stages, the middle BN normalised from
    the statistics the first pointwise convolution summed (its running statistics updated)."""
    firsts = [cast(DilConv, op[0]) for op in ops]
    z, total, total_sq, shift = _dil_stage(x, firsts)
    middle_bns = [cast(nn.BatchNorm2d, block[3]) for block in firsts]
    y, mean, var = batch_norm_from_stats(z, total, total_sq, shift, middle_bns[0].eps)
    update_bns_running_stats(middle_bns, mean, var, z.shape[1] * z.shape[3] * z.shape[4])
    return _dil_stage(y, [cast(DilConv, op[1]) for op in ops])[0]


def _factorized_reduce(x: Tensor, ops: Sequence[FactorizedReduce]) -> Tensor:
    """Every edge's stride-2 ``skip_connect`` before its BN: ReLU once, then the two 1x1 stride-2
    convolutions of all edges as two batched pointwise convolutions."""
    r = F.relu(x)
    e, c = len(ops), x.shape[1]
    halves = []
    for conv_name, view in (("conv_1", r[:, :, ::2, ::2]), ("conv_2", r[:, :, 1::2, 1::2])):
        weight = torch.stack([getattr(op, conv_name).weight for op in ops]).view(e, -1, c).to(x.dtype)
        halves.append(pointwise_conv_stats(view.contiguous(), weight)[0])
    return torch.cat(halves, dim=2)


class FastExecutor:
    """Batched-edge, fused-kernel cell executor; same outputs and gradients as the reference loop."""

    name = "fast"

    def __init__(self) -> None:
        self._reference = ReferenceExecutor()

    def __call__(
        self, cell: SearchCell, s0: Tensor, s1: Tensor, weights: Tensor, active: Tensor | None = None
    ) -> list[Tensor]:
        if active is not None:  # sparse steps: the reference loop skips inactive ops before any launch
            _say_once("a sparse active set (EDAS, DDSAS) is given: inactive ops are skipped, not masked")
            return self._reference(cell, s0, s1, weights, active)
        kinds = _cell_kinds(cell) if cell.training else None
        if kinds is None:
            return self._reference(cell, s0, s1, weights)
        dtype = autocast_dtype(s1)
        # CPU tensors outside tests run every op's PyTorch reference (see model_uses_kernels)
        dispatch = contextlib.nullcontext() if model_uses_kernels(s1) else force_reference()
        with dispatch, torch.autocast(s1.device.type, enabled=False):
            return self._run(cell, s0.to(dtype), s1.to(dtype), weights, kinds)

    def _run(
        self, cell: SearchCell, s0: Tensor, s1: Tensor, weights: Tensor, kinds: list[dict[int, str]]
    ) -> list[Tensor]:
        states = [s0, s1]
        incoming: list[list[Tensor]] = [[] for _ in range(cell.num_nodes)]
        for source, leaving in enumerate(outgoing_edges(cell.num_nodes)):
            x = states[source]
            edges = [e for e, _ in leaving]
            first = cast("MixedEdge", cell.edges[edges[0]])
            # partial channels (PC-DARTS): every edge leaving x reads the same first C/K channels, a view
            head, tail = first.split_channels(x) if first.partial.k > 1 else (x, None)
            pre_bn = self._pre_bn_outputs(cell, head, edges, kinds[edges[0]])
            for slot, (e, node) in enumerate(leaving):
                out = self._edge(cell, e, head, weights[e], kinds[e], pre_bn, slot)
                if tail is not None:
                    out = cast("MixedEdge", cell.edges[e]).with_bypass(out, tail, weights[e].sum())
                incoming[node].append(out)
            # node `source - 1` has received its last edge (the one from state `source`)
            if source >= 1:
                states.append(masked_aggregate(incoming[source - 1]))
        return states

    @staticmethod
    def _pre_bn_outputs(
        cell: SearchCell, x: Tensor, edges: list[int], kinds: dict[int, str]
    ) -> dict[int, list[Tensor]]:
        """Per op index, the pre-BN output of every edge in ``edges`` (all leave the same state ``x``)."""
        out: dict[int, list[Tensor]] = {}
        for k, kind in kinds.items():
            ops = [cast("MixedEdge", cell.edges[e]).ops[k] for e in edges]
            if kind == "identity":
                continue
            if kind == "sep":
                out[k] = list(_sep_conv(x, cast("list[SepConv]", ops)).unbind(0))
            elif kind == "dil":
                out[k] = list(_dil_stage(x, cast("list[DilConv]", ops))[0].unbind(0))
            elif kind == "reduce":
                out[k] = list(_factorized_reduce(x, cast("list[FactorizedReduce]", ops)).unbind(0))
            elif kind == "pool":
                pooled = cast(nn.Sequential, ops[0])[0](x)  # parameter-free: once for every edge
                out[k] = [pooled] * len(edges)
            else:
                out[k] = [split_final_bn(op)[0](x) for op in ops]  # type: ignore[index]
        return out

    @staticmethod
    def _edge(
        cell: SearchCell,
        e: int,
        x: Tensor,
        w: Tensor,
        kinds: dict[int, str],
        pre_bn: dict[int, list[Tensor]],
        slot: int,
    ) -> Tensor:
        edge = cast("MixedEdge", cell.edges[e])
        assert edge.fold_plan is not None  # _cell_kinds only lets foldable edges through
        bn_ops, identity = edge.fold_plan
        zs = [pre_bn[k][slot].to(x.dtype) for k in bn_ops]
        op_weights = w.index_select(0, edge.bn_index)
        bns = [split_final_bn(edge.ops[k])[1] for k in bn_ops]  # type: ignore[index]
        if identity is None:
            return edge_from_pre_bn(zs, bns, op_weights)
        return edge_from_pre_bn(zs, bns, op_weights, x, w[identity])


register_executor("fast", lambda options: FastExecutor())
