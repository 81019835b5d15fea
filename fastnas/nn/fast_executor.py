"""The fast cell executor: batched edges, fused conv stacks, folded BNs and a fused node sum.

It computes exactly what :class:`~fastnas.nn.executor.ReferenceExecutor` computes (node ``j`` is the sum
over earlier states ``i`` of the mixed edge ``(i, j)``; Eq. 1 of Yang, You, Li, Wang, Qian & Lin, "Towards
Improving the Consistency, Efficiency, and Flexibility of Differentiable Neural Architecture Search",
CVPR 2021), in "push" order, following a :class:`CellPlan` built once per cell and active set:

1. Once state ``i`` is known, the edges leaving it that compute one op type run it once for all of them:
   the ReLU-fused depthwise convolution (:func:`~fastnas.kernels.depthwise_conv.relu_depthwise_conv`)
   reads the shared input once and writes one output per edge, the pointwise convolution
   (:func:`~fastnas.kernels.pointwise_conv.pointwise_conv_stats`) is one batched launch that also sums
   the statistics of the BN after it, and the SepConv's middle BN normalises from those sums
   (:func:`~fastnas.kernels.bn_from_stats.batch_norm_from_stats`). Parameter-free pooling runs once per
   source, not once per edge; the stride-2 ``skip_connect`` (FactorizedReduce) runs as two batched
   pointwise convolutions. The conv weights of the whole cell go through one ``torch.cat`` per call
   (:func:`_packed_weights`); each op type's stacked weights are views of it.
2. Every edge's final BNs are folded into its weighted sum
   (:func:`~fastnas.nn.fused_edge.edge_from_pre_bn`, which reads the batched outputs in place), so
   normalised op outputs are never written. Running statistics are updated as ``nn.BatchNorm2d`` would,
   for the whole cell at its end (:func:`~fastnas.nn.fused_edge.deferred_running_stats`).
3. A node is the fused sum of its incoming edges
   (:func:`~fastnas.kernels.masked_aggregate.masked_aggregate`).

What the plan covers (:func:`cell_plan`): per-edge candidate sets (P-DARTS: each op type batches the edges
that hold it), P-DARTS' skip-connect dropout (the masks drawn on the device before the cell runs, in the
reference loop's edge order, so one seed drops the same elements on both executors), sparse active sets
(EDAS, DDSAS: only active (edge, op) pairs run; an edge with one chosen op runs it alone without a weight,
an edge with only ``none`` adds nothing, as :meth:`~fastnas.nn.MixedEdge.forward_active`), and
partial-channel edges (PC-DARTS, :class:`~fastnas.nn.mixed.PartialChannels`: the edges leaving a state
share its first ``C/K`` channels, a view the kernels read with its strides, and each edge then appends its
bypass and shuffles, :meth:`~fastnas.nn.MixedEdge.with_bypass`).

Every kernel dispatches on its own (Triton for CUDA tensors, the PyTorch reference otherwise, and
everywhere under :func:`fastnas.backend.force_reference`), so on a CPU this executor computes the same
batched math with PyTorch ops. In evaluation mode (running statistics) and for cells holding an op it
cannot split (an op not ending in an affine-free BN) it runs the reference loop, and says why once.
:class:`AutoExecutor` (``--executor auto``, the default) is this executor where the kernels run and the
reference loop elsewhere.
"""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastnas.backend import force_reference
from fastnas.kernels._common import model_uses_kernels
from fastnas.kernels.bn_from_stats import batch_norm_from_stats
from fastnas.kernels.edge_group_sum import edge_group_sum
from fastnas.kernels.masked_aggregate import masked_aggregate
from fastnas.kernels.pointwise_conv import pointwise_conv_stats
from fastnas.nn.conv_stage import conv_stage
from fastnas.nn.executor import ReferenceExecutor, register_executor
from fastnas.nn.fused_edge import (
    deferred_running_stats,
    foldable_bn,
    split_final_bn,
    update_bns_running_stats,
)
from fastnas.nn.partial_join import shuffled_joins
from fastnas.ops.darts_ops import (
    DilConv,
    FactorizedReduce,
    Identity,
    SepConv,
    Zero,
    autocast_dtype,
    depthwise_conv_args,
)

if TYPE_CHECKING:
    from fastnas.nn.cell import SearchCell
    from fastnas.nn.mixed import MixedEdge

__all__ = ["AutoExecutor", "CellPlan", "FastExecutor", "cell_plan", "outgoing_edges"]

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
    if isinstance(op, Zero):
        return "zero"
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


@dataclass(frozen=True)
class EdgePlan:
    """What one edge computes this step: its BN-terminated ops and identity (indices into ``edge.ops``),
    ``alone`` when exactly one op is chosen (a sparse step: its output is used without a weight, as
    :meth:`~fastnas.nn.MixedEdge.forward_active`), ``zero`` when nothing but ``none`` is."""

    edge: int
    node: int
    bn_ops: tuple[int, ...]
    identity: int | None
    alone: bool = False
    zero: bool = False


@dataclass(frozen=True)
class OpGroup:
    """One op type (by name) run once for all the edges leaving a state that compute it: ``members`` are
    ``(slot, op index)`` pairs, ``slot`` the edge's position among the edges leaving that state. Conv op
    types of one family (SepConv, DilConv) with one stride and dilation run as one group (``name`` joins
    theirs): the smaller depthwise kernels are zero-padded to the largest, ``conv[0]``, about the same
    centre (a centred ``k x k`` kernel with padding ``d (k - 1) / 2`` is the ``K x K`` one with a ring of
    zeros), so one launch of each stage covers them all."""

    name: str
    kind: str
    members: tuple[tuple[int, int], ...]
    conv: tuple[int, int, int, int] | None = None  # sep/dil: (kernel, stride, padding, dilation) of the run


@dataclass(frozen=True)
class SourcePlan:
    edges: tuple[EdgePlan, ...]
    groups: tuple[OpGroup, ...]


@dataclass(frozen=True)
class CellPlan:
    """The batched schedule of one cell for one active set (``None``: every op), in push order."""

    sources: tuple[SourcePlan, ...]
    identity_edges: tuple[int, ...]  # edges whose identity skip computes, in edge order
    # per (what, device, dtype): the weight-padding gather index and its zero, made once
    device_cache: dict[tuple[object, ...], Tensor] = field(default_factory=dict, compare=False, repr=False)

    def dropout_edges(self, cell: SearchCell) -> tuple[int, ...]:
        """The identity edges whose skip is dropped now (P-DARTS' rate changes with the epoch)."""
        return tuple(e for e in self.identity_edges if cast("MixedEdge", cell.edges[e]).skip_dropout > 0)


def _edge_plan(edge: MixedEdge, e: int, node: int, flags: list[bool] | None) -> EdgePlan | str:
    """The edge's plan, or why it cannot run batched."""
    chosen = [k for k, column in enumerate(edge.columns) if flags is None or flags[column]]
    computing = [k for k in chosen if k in edge.active]
    bn_ops: list[int] = []
    identity: int | None = None
    for k in computing:
        kind = _op_kind(edge.ops[k])
        if kind is None:
            return f"the op {edge.op_names[k]!r} does not end in a foldable BN"
        if kind == "identity" and identity is None:
            identity = k
        elif kind == "identity":
            return "an edge holds two identity ops"
        else:
            bn_ops.append(k)
    if flags is not None and not computing and edge._zero is None:
        raise ValueError("an active set left this edge without any op to run")
    return EdgePlan(
        e, node, tuple(bn_ops), identity, alone=flags is not None and len(chosen) == 1, zero=not computing
    )


def cell_plan(cell: SearchCell, active: Tensor | None = None) -> CellPlan | str:
    """The batched schedule of ``cell`` under the host bool mask ``active`` [E, K] (None: every op), or
    the reason it cannot run batched (an op without a foldable final BN)."""
    identity_edges: list[int] = []
    sources: list[SourcePlan] = []
    rows = None if active is None else active.tolist()  # a host tensor: no device synchronisation
    for leaving in outgoing_edges(cell.num_nodes):
        plans: list[EdgePlan] = []
        members: dict[str, list[tuple[int, int]]] = {}
        kinds: dict[str, str] = {}
        for slot, (e, node) in enumerate(leaving):
            edge = cast("MixedEdge", cell.edges[e])
            plan = _edge_plan(edge, e, node, None if rows is None else rows[e])
            if isinstance(plan, str):
                return plan
            plans.append(plan)
            for k in plan.bn_ops:
                name = edge.op_names[k]
                members.setdefault(name, []).append((slot, k))
                kinds[name] = cast(str, _op_kind(edge.ops[k]))
            if plan.identity is not None:
                identity_edges.append(e)
        groups = _merge_conv_groups(cell, plans, [OpGroup(n, kinds[n], tuple(m)) for n, m in members.items()])
        sources.append(SourcePlan(tuple(plans), groups))
    return CellPlan(tuple(sources), tuple(sorted(identity_edges)))


def _depthwise(op: nn.Module, block: int) -> nn.Conv2d:
    """The depthwise conv of a ``DilConv`` (``block`` 0) or of a ``SepConv``'s block ``block``."""
    dil = cast(DilConv, op[block]) if isinstance(op, SepConv) else cast(DilConv, op)
    return cast(nn.Conv2d, dil[1])


def _centred_geometry(convs: Sequence[nn.Conv2d]) -> tuple[int, int, int] | None:
    """``(kernel, stride, dilation)`` when every conv is square, odd and centred (padding ``d (k - 1) / 2``),
    one stride and dilation among them, else None."""
    geometry = set()
    for conv in convs:
        k, stride, dilation, padding = conv.kernel_size[0], conv.stride[0], conv.dilation[0], conv.padding
        if (
            isinstance(padding, str)
            or k % 2 == 0
            or conv.kernel_size[1] != k
            or padding != (dilation * (k - 1) // 2,) * 2
        ):
            return None
        geometry.add((stride, dilation, conv.stride[1], conv.dilation[1]))
    if len(geometry) != 1:
        return None
    stride, dilation, *_ = geometry.pop()
    return max(conv.kernel_size[0] for conv in convs), stride, dilation


def _merge_conv_groups(cell: SearchCell, plans: list[EdgePlan], groups: list[OpGroup]) -> tuple[OpGroup, ...]:
    """Join the ``sep`` groups, and the ``dil`` groups, that share one stride and dilation (see
    :class:`OpGroup`); other groups, and conv groups that cannot join (an uncentred kernel), stay."""
    out: list[OpGroup] = []
    families: dict[tuple[str, int, int], list[OpGroup]] = {}
    for group in groups:
        if group.kind not in ("sep", "dil"):
            out.append(group)
            continue
        ops = [cast("MixedEdge", cell.edges[plans[slot].edge]).ops[k] for slot, k in group.members]
        blocks = (0, 1) if group.kind == "sep" else (0,)
        geometry = [_centred_geometry([_depthwise(op, b) for op in ops]) for b in blocks]
        if any(g is None for g in geometry):  # runs alone, as its own modules say
            first = _depthwise(ops[0], 0)
            conv = (first.kernel_size[0], *depthwise_conv_args(first))
            out.append(OpGroup(group.name, group.kind, group.members, conv))
            continue
        _, stride, dilation = cast(tuple[int, int, int], geometry[0])
        families.setdefault((group.kind, stride, dilation), []).append(group)
    for (kind, stride, dilation), family in families.items():
        ops = [
            cast("MixedEdge", cell.edges[plans[slot].edge]).ops[k] for g in family for slot, k in g.members
        ]
        kernel = max(_depthwise(op, 0).kernel_size[0] for op in ops)
        members = tuple(m for g in family for m in g.members)
        name = "+".join(g.name for g in family)
        out.append(OpGroup(name, kind, members, (kernel, stride, dilation * (kernel - 1) // 2, dilation)))
    return tuple(out)


_FALLBACKS_SEEN: set[str] = set()


def _say_once(reason: str) -> None:
    """Warn once per process why cells run the reference loop (a fallback is never silent)."""
    if reason not in _FALLBACKS_SEEN:
        _FALLBACKS_SEEN.add(reason)
        warnings.warn(f"fast executor: a cell runs the reference loop because {reason}", stacklevel=4)


# weight tensors of one op group, in the order the batched stages read them
_GROUP_WEIGHTS: dict[str, tuple[str, ...]] = {
    "sep": ("0.1.weight", "0.2.weight", "1.1.weight", "1.2.weight"),
    "dil": ("1.weight", "2.weight"),
    "reduce": ("conv_1.weight", "conv_2.weight"),
}


def _parameter(module: nn.Module, path: str) -> Tensor:
    *parents, leaf = path.split(".")
    for name in parents:
        module = module.get_submodule(name)
    return cast(Tensor, getattr(module, leaf))


def _weight_requests(cell: SearchCell, plan: CellPlan) -> list[tuple[list[Tensor], int]]:
    """Per stacked weight tensor of the cell (in plan order: each op group with weights, each path of
    :data:`_GROUP_WEIGHTS`), the parameters of its rows and the kernel size its depthwise rows are
    zero-padded to (0: used as they are)."""
    requests: list[tuple[list[Tensor], int]] = []
    for source in plan.sources:
        for group in source.groups:
            ops = [cast("MixedEdge", cell.edges[source.edges[slot].edge]).ops[k] for slot, k in group.members]
            for path in _GROUP_WEIGHTS.get(group.kind, ()):
                params = [_parameter(op, path) for op in ops]
                depthwise = params[0].dim() == 4 and params[0].shape[1] == 1 and params[0].shape[-1] > 1
                requests.append((params, group.conv[0] if group.conv and depthwise else 0))
    return requests


def _padding_index(requests: list[tuple[list[Tensor], int]]) -> Tensor | None:
    """Where each element of the padded layout comes from in ``cat(flattened parameters, [0])`` (the last
    position is the zero), or None when nothing is padded."""
    if not any(pad and p.shape[-1] != pad for params, pad in requests for p in params):
        return None
    total = sum(p.numel() for params, _ in requests for p in params)
    pieces: list[Tensor] = []
    offset = 0
    for params, pad in requests:
        for p in params:
            flat = torch.arange(offset, offset + p.numel())
            offset += p.numel()
            k = p.shape[-1]
            if not pad or k == pad:
                pieces.append(flat)
                continue
            margin = (pad - k) // 2
            padded = torch.full((p.shape[0], pad, pad), total)
            padded[:, margin : margin + k, margin : margin + k] = flat.view(p.shape[0], k, k)
            pieces.append(padded.reshape(-1))
    return torch.cat(pieces)


def _packed_weights(
    cell: SearchCell, plan: CellPlan, dtype: torch.dtype, device_cache: dict[tuple[object, ...], Tensor]
) -> list[list[Tensor]]:
    """Per op group with weights (in plan order), its stacked weights [E', *shape] as in
    :data:`_GROUP_WEIGHTS`, depthwise kernels zero-padded to the group's kernel: every conv weight of the
    cell goes through one ``torch.cat`` (then one gather where kernels are padded, and one cast); the
    stacks are views of it, so the per-edge parameters get their gradients as views of one buffer (no
    per-call ``torch.stack``). ``device_cache`` keeps the gather index and the zero per device."""
    requests = _weight_requests(cell, plan)
    if not requests:
        return []
    flat = [p.reshape(-1) for params, _ in requests for p in params]
    first = flat[0]
    key = ("index", first.device, first.dtype)
    if key not in device_cache:
        index = _padding_index(requests)
        device_cache[key] = first.new_zeros(0) if index is None else index.to(first.device)
        device_cache[("zero", first.device, first.dtype)] = first.new_zeros(1)
    index = device_cache[key]
    if index.numel():
        packed = torch.cat([*flat, device_cache[("zero", first.device, first.dtype)]]).index_select(0, index)
    else:
        packed = torch.cat(flat)
    packed = packed.to(dtype)
    shapes = [
        (len(params), *params[0].shape[:-2], pad, pad) if pad else (len(params), *params[0].shape)
        for params, pad in requests
    ]
    # one split (its backward is one cat), not slices (each slice's backward writes a full-size zero grad)
    pieces = packed.split([math.prod(shape) for shape in shapes])
    views = [piece.view(shape) for piece, shape in zip(pieces, shapes, strict=True)]
    out: list[list[Tensor]] = []
    it = iter(views)
    for source in plan.sources:
        for group in source.groups:
            if group.kind in _GROUP_WEIGHTS:
                out.append([next(it) for _ in _GROUP_WEIGHTS[group.kind]])
    return out


def _dil_stage(
    x: Tensor, conv: tuple[int, int, int, int], dw_weight: Tensor, pw_weight: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``ReLU -> depthwise -> pointwise`` of every row's ``DilConv`` block at once, before its BN, from
    the stacked weights (``dw_weight`` [R, C, 1, k, k], ``pw_weight`` [R, C_out, C, 1, 1]) and the
    depthwise geometry ``conv`` = (kernel, stride, padding, dilation): returns ``(z [R, N, C, H, W],
    shifted sum, shifted sum of squares, shift [R, C])``."""
    rows, c, k = dw_weight.shape[0], dw_weight.shape[1], conv[0]
    # the depthwise output is recomputed in backward, not kept (conv_stage)
    return conv_stage(
        x, dw_weight.view(rows, c, k, k), pw_weight.view(rows, pw_weight.shape[1], c), *conv[1:]
    )


def _sep_conv(
    x: Tensor, ops: Sequence[SepConv], conv: tuple[int, int, int, int], weights: Sequence[Tensor]
) -> Tensor:
    """Every row's ``SepConv`` before its final BN: two ``DilConv`` stages (the second with stride 1), the
    middle BN normalised from the statistics the first pointwise convolution summed (its running
    statistics updated)."""
    z, total, total_sq, shift = _dil_stage(x, conv, weights[0], weights[1])
    middle_bns = [cast(nn.BatchNorm2d, cast(DilConv, op[0])[3]) for op in ops]
    y, mean, var = batch_norm_from_stats(z, total, total_sq, shift, middle_bns[0].eps)
    update_bns_running_stats(middle_bns, mean, var, z.shape[1] * z.shape[3] * z.shape[4])
    kernel, _, padding, dilation = conv
    return _dil_stage(y, (kernel, 1, padding, dilation), weights[2], weights[3])[0]


def _factorized_reduce(x: Tensor, weights: Sequence[Tensor]) -> Tensor:
    """Every edge's stride-2 ``skip_connect`` before its BN: ReLU once, then the two 1x1 stride-2
    convolutions of all edges as two batched pointwise convolutions."""
    r = F.relu(x)
    halves = []
    for weight, view in zip(weights, (r[:, :, ::2, ::2], r[:, :, 1::2, 1::2]), strict=True):
        e, c_out, c_in = weight.shape[:3]
        halves.append(pointwise_conv_stats(view.contiguous(), weight.view(e, c_out, c_in))[0])
    return torch.cat(halves, dim=2)


class FastExecutor:
    """Batched-edge, fused-kernel cell executor; same outputs and gradients as the reference loop."""

    name = "fast"

    def __init__(self) -> None:
        self._reference = ReferenceExecutor()
        self._plans: weakref.WeakKeyDictionary[SearchCell, dict[bytes | None, CellPlan | str]] = (
            weakref.WeakKeyDictionary()
        )

    def plan(self, cell: SearchCell, active: Tensor | None) -> CellPlan | str:
        """The cell's schedule for this active set, built once per (cell, active set) and kept (at most
        :data:`_MAX_PLANS` per cell; EDAS draws a new set every step)."""
        if torch.compiler.is_compiling():  # traced: no state kept across calls (it would be guarded on)
            return cell_plan(cell, active)
        plans = self._plans.setdefault(cell, {})
        key = None if active is None else bytes(active.to(torch.bool).numpy())
        found = plans.get(key)
        if found is None:
            if len(plans) >= _MAX_PLANS:
                plans.clear()
            found = plans[key] = cell_plan(cell, active)
        return found

    def __call__(
        self, cell: SearchCell, s0: Tensor, s1: Tensor, weights: Tensor, active: Tensor | None = None
    ) -> list[Tensor]:
        if not cell.training:  # running statistics: the reference loop (inference, not the search step)
            return self._reference(cell, s0, s1, weights, active)
        plan = self.plan(cell, active)
        if isinstance(plan, str):
            _say_once(plan)
            return self._reference(cell, s0, s1, weights, active)
        dtype = autocast_dtype(s1)
        # CPU tensors outside tests run every op's PyTorch reference (see model_uses_kernels)
        dispatch = contextlib.nullcontext() if model_uses_kernels(s1) else force_reference()
        with dispatch, torch.autocast(s1.device.type, enabled=False), deferred_running_stats():
            return self._run(cell, s0.to(dtype), s1.to(dtype), weights, plan)

    def _run(self, cell: SearchCell, s0: Tensor, s1: Tensor, weights: Tensor, plan: CellPlan) -> list[Tensor]:
        states = [s0, s1]
        noise = _skip_noise(cell, s1, plan.dropout_edges(cell))
        packed = iter(_packed_weights(cell, plan, s1.dtype, plan.device_cache))
        incoming: list[list[Tensor]] = [[] for _ in range(cell.num_nodes)]
        nothing: list[Tensor | None] = [None] * cell.num_nodes  # a node's zeros if no edge adds to it
        # the weight rows of the edges leaving each state: one gather, then views (backward: one cat)
        by_source = _weights_by_source(weights, plan)
        for source, source_plan in enumerate(plan.sources):
            x = states[source]
            first = cast("MixedEdge", cell.edges[source_plan.edges[0].edge])
            # partial channels (PC-DARTS): every edge leaving x reads the same first C/K channels, a view
            head, tail = first.split_channels(x) if first.partial.k > 1 else (x, None)
            batches = self._pre_bn_batches(cell, head, source_plan, packed)
            outs = _mix(cell, source_plan, head, batches, by_source[source], noise)
            if tail is not None:  # partial channels: every edge adds its bypass (a none-only edge too)
                mixed = [
                    outs[slot] if slot in outs else self._zero_op(cell, p)(head)
                    for slot, p in enumerate(source_plan.edges)
                ]
                scales = by_source[source][:, : weights.shape[1]].sum(1)
                outs = dict(
                    enumerate(
                        shuffled_joins(
                            mixed, tail, first.partial.k, first.stride, first.partial.bypass, scales
                        )
                    )
                )
            for slot, edge_plan in enumerate(source_plan.edges):
                out = outs.get(slot)
                if out is not None:
                    incoming[edge_plan.node].append(out)
                elif nothing[edge_plan.node] is None:
                    nothing[edge_plan.node] = self._zero_op(cell, edge_plan)(head)
            # node `source - 1` has received its last edge (the one from state `source`)
            if source >= 1:
                terms = incoming[source - 1]
                if not terms:
                    states.append(cast(Tensor, nothing[source - 1]))
                else:
                    states.append(terms[0] if len(terms) == 1 else masked_aggregate(terms))
        return states

    @staticmethod
    def _zero_op(cell: SearchCell, plan: EdgePlan) -> nn.Module:
        """The edge's ``none`` op (an edge that adds nothing holds one: :func:`_edge_plan`)."""
        edge = cast("MixedEdge", cell.edges[plan.edge])
        return edge.ops[cast(int, edge._zero)]

    @staticmethod
    def _pre_bn_batches(
        cell: SearchCell, x: Tensor, plan: SourcePlan, packed: Iterator[list[Tensor]]
    ) -> list[PreBN]:
        """The pre-BN outputs the edges leaving state ``x`` compute, one :class:`PreBN` per op group (per
        op for ops run as modules)."""
        out: list[PreBN] = []
        for group in plan.groups:
            ops = [cast("MixedEdge", cell.edges[plan.edges[slot].edge]).ops[k] for slot, k in group.members]
            kind = group.kind
            if kind == "pool":  # parameter-free: once for every edge
                out.append(PreBN(cast(nn.Sequential, ops[0])[0](x), group.members, shared=True))
            elif kind == "sep":
                conv = cast(tuple[int, int, int, int], group.conv)
                out.append(PreBN(_sep_conv(x, cast("list[SepConv]", ops), conv, next(packed)), group.members))
            elif kind == "dil":
                conv = cast(tuple[int, int, int, int], group.conv)
                out.append(PreBN(_dil_stage(x, conv, *next(packed))[0], group.members))
            elif kind == "reduce":
                out.append(PreBN(_factorized_reduce(x, next(packed)), group.members))
            else:
                for member, op in zip(group.members, ops, strict=True):
                    pre_bn = split_final_bn(op)[0]  # type: ignore[index]
                    out.append(PreBN(pre_bn(x).to(x.dtype), (member,), shared=True))
        return out


@dataclass(frozen=True)
class PreBN:
    """Pre-BN op outputs of the edges leaving one state: ``tensor`` [R, N, C, H, W] with row ``r`` the
    output of ``members[r]`` = (slot, op index), or, ``shared``, one [N, C, H, W] output of every member
    (a parameter-free pool)."""

    tensor: Tensor
    members: tuple[tuple[int, int], ...]
    shared: bool = False


def _final_bn(op: nn.Module) -> nn.BatchNorm2d:
    """The final BN of an op the plan runs (every one ends in a foldable BN: :func:`_edge_plan`)."""
    split = split_final_bn(op)
    assert split is not None
    return split[1]


def _weights_by_source(weights: Tensor, plan: CellPlan) -> list[Tensor]:
    """Per state, the rows [E_i, K] of ``weights`` of the edges leaving it (push order), and a last column
    of ones where an edge runs one op alone."""
    order = [p.edge for source in plan.sources for p in source.edges]
    key = ("order", weights.device)
    if key not in plan.device_cache:
        plan.device_cache[key] = torch.tensor(order, device=weights.device)
    if any(p.alone for source in plan.sources for p in source.edges):
        # a last column of ones: an op run alone enters unweighted (as MixedEdge.forward_active gives it)
        ones_key = ("ones", weights.device, weights.dtype, weights.shape[0])
        if ones_key not in plan.device_cache:
            plan.device_cache[ones_key] = weights.new_ones(weights.shape[0], 1)
        weights = torch.cat([weights, plan.device_cache[ones_key]], 1)
    rows = weights.index_select(0, plan.device_cache[key])
    return list(rows.split([len(source.edges) for source in plan.sources]))


def _mix(
    cell: SearchCell,
    plan: SourcePlan,
    x: Tensor,
    batches: list[PreBN],
    weights: Tensor,
    noise: dict[int, Tensor],
) -> dict[int, Tensor]:
    """The output of every edge leaving state ``x`` that adds something (by slot), all in one
    :func:`~fastnas.kernels.edge_group_sum.edge_group_sum`: each op's final BN folded into the weighted
    sum (batch statistics, running statistics updated), the identity skip (P-DARTS' dropout applied)
    added weighted. ``weights`` [E, K]: the edges' rows."""
    slots = [slot for slot, p in enumerate(plan.edges) if not p.zero]
    if not slots:
        return {}
    position = {slot: i for i, slot in enumerate(slots)}
    alone_col = weights.shape[1] - 1  # the ones column (_weights_by_source), used by lone ops only

    def column(slot: int, k: int) -> int:
        return (
            alone_col
            if plan.edges[slot].alone
            else cast("MixedEdge", cell.edges[plan.edges[slot].edge]).columns[k]
        )

    terms: list[Tensor] = []
    term_edges: list[list[int]] = []
    term_cols: list[list[int]] = []
    normalize: list[bool] = []
    term_bns: list[list[nn.BatchNorm2d]] = []
    for batch in batches:
        terms.append(batch.tensor)
        term_edges.append([position[slot] for slot, _ in batch.members])
        term_cols.append([column(slot, k) for slot, k in batch.members])
        normalize.append(True)
        edges = [cast("MixedEdge", cell.edges[plan.edges[slot].edge]) for slot, _ in batch.members]
        term_bns.append([_final_bn(edge.ops[k]) for edge, (_, k) in zip(edges, batch.members, strict=True)])
    skips = [(slot, p) for slot, p in enumerate(plan.edges) if p.identity is not None]
    if skips:
        if any(p.edge in noise for _, p in skips):  # P-DARTS: each edge its own mask, drawn before the cell
            masks = [noise[p.edge] if p.edge in noise else torch.ones_like(x) for _, p in skips]
            terms.append(x * torch.stack(masks))
        else:
            terms.append(x)
        term_edges.append([position[slot] for slot, _ in skips])
        term_cols.append([column(slot, cast(int, p.identity)) for slot, p in skips])
        normalize.append(False)
        term_bns.append([])
    # a sparse step takes the rows of the edges that add something
    rows = weights if len(slots) == len(plan.edges) else torch.stack([weights[slot] for slot in slots])
    eps = {bn.eps for bns in term_bns for bn in bns}
    if len(eps) > 1:
        raise ValueError(f"fast executor: the folded BNs of one cell must share one eps, got {sorted(eps)}")
    outs, means, variances = edge_group_sum(
        terms, term_edges, term_cols, normalize, rows, eps.pop() if eps else 1e-5
    )
    for term, bns, mean, var in zip(terms, term_bns, means, variances, strict=False):
        if bns:
            count = term.shape[-4] * term.shape[-2] * term.shape[-1]
            update_bns_running_stats(bns, mean.expand(len(bns), -1), var.expand(len(bns), -1), count)
    return {slot: outs[position[slot]] for slot in slots}


_MAX_PLANS = 256


def _skip_noise(cell: SearchCell, s1: Tensor, edges: tuple[int, ...]) -> dict[int, Tensor]:
    """P-DARTS' skip-connect dropout noise of each edge in ``edges`` (``F.dropout`` of ones: the mask
    scaled by ``1 / (1 - p)``, drawn on the device), drawn in edge order as the reference loop draws it, so
    that the same seed drops the same elements on both paths."""
    if not edges:
        return {}
    first = cast("MixedEdge", cell.edges[edges[0]])
    n, c, h, w = s1.shape
    if cell.reduction:  # identity skips leave intermediate nodes, which have the reduced size
        h, w = (h + 1) // 2, (w + 1) // 2
    ones = s1.new_ones((n, c // first.partial.k, h, w))
    return {e: F.dropout(ones, cast("MixedEdge", cell.edges[e]).skip_dropout, training=True) for e in edges}


class AutoExecutor:
    """``--executor auto`` (the default): the fast executor where its kernels run (CUDA tensors, see
    :func:`~fastnas.kernels._common.model_uses_kernels`), the reference loop elsewhere (a CPU, where the
    batched PyTorch math has no advantage). Supernets that run only the reference loop (NAS-Bench-201,
    EnTranNAS) accept it and run their loop."""

    name = "auto"

    def __init__(self) -> None:
        self.fast = FastExecutor()
        self.reference = ReferenceExecutor()

    def __call__(
        self, cell: SearchCell, s0: Tensor, s1: Tensor, weights: Tensor, active: Tensor | None = None
    ) -> list[Tensor]:
        executor = self.fast if model_uses_kernels(s1) else self.reference
        return executor(cell, s0, s1, weights, active)


register_executor("fast", lambda options: FastExecutor())
register_executor(AutoExecutor.name, lambda options: AutoExecutor())
