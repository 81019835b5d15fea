"""The mixed edge: every candidate op of one edge, combined by architecture weights (the inner sum of Eq. 1
of Yang, You, Li, Wang, Qian & Lin, "Towards Improving the Consistency, Efficiency, and Flexibility of
Differentiable Neural Architecture Search", CVPR 2021; the mixed operation of Liu, Simonyan & Yang,
"DARTS: Differentiable Architecture Search", ICLR 2019)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastnas.kernels._common import model_uses_kernels
from fastnas.nn.fused_edge import edge_from_pre_bn, is_identity, split_final_bn
from fastnas.ops import build_op, get_op_spec
from fastnas.ops.weighted_sum import weighted_sum


def _common_dtype(outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Under autocast an identity skip can differ in dtype from conv outputs: promote them to one."""
    dtypes = {out.dtype for out in outputs}
    if len(dtypes) == 1:
        return outputs
    common = outputs[0].dtype
    for dtype in dtypes:
        common = torch.promote_types(common, dtype)
    return [out.to(common) for out in outputs]


BYPASS_POOLS = ("max", "avg")


@dataclass(frozen=True)
class PartialChannels:
    """PC-DARTS' partial channel connections (Xu, Xie, Zhang, Chen, Qi, Tian & Xiong, "PC-DARTS: Partial
    Channel Connections for Memory-Efficient Architecture Search", ICLR 2020): only the first
    ``1/k`` of an edge's channels enter its mixed op, the rest bypass it; the two parts are concatenated
    and channel-shuffled (``k`` groups). On a stride-2 edge the bypass is downsampled by a 2x2 ``bypass``
    pool: the paper does not say how, its public code uses a max pool (the default; ``"avg"`` is the
    alternative). ``k = 1`` is the plain DARTS edge."""

    k: int = 1
    bypass: str = "max"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"partial channels need k >= 1, got {self.k}")
        if self.bypass not in BYPASS_POOLS:
            raise ValueError(f"bypass pool must be one of {BYPASS_POOLS}, got {self.bypass!r}")


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: channel ``g * (C / groups) + i`` moves to ``i * groups + g``."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def join_partial(
    mixed: torch.Tensor,
    tail: torch.Tensor,
    partial: PartialChannels,
    stride: int,
    scale: torch.Tensor | None,
) -> torch.Tensor:
    """An edge's output under partial channels: its ``mixed`` op channels, then its bypassed ``tail``
    (pooled 2x2 on a stride-2 edge, times ``scale``), channel-shuffled in ``partial.k`` groups."""
    if stride == 2:
        pool = F.max_pool2d if partial.bypass == "max" else F.avg_pool2d
        tail = pool(tail, 2, 2, ceil_mode=True)
    if scale is not None:
        tail = tail * scale.to(tail.dtype)
    return channel_shuffle(torch.cat([mixed, tail.to(mixed.dtype)], 1), partial.k)


class MixedEdge(nn.Module):
    """All candidate ops of one supernet edge.

    As in DARTS, every BN is ``affine=False`` and pooling ops are followed by BN(affine=False)
    (``pool_bn=False`` leaves that BN out, as NAS-Bench-201 does).
    ``forward(x, w)`` returns ``sum_k w_k * op_k(x)``; the ``none`` op contributes exactly zero to the
    output and to the gradient of ``w``, so it is not computed.

    In training mode on tensors the fused kernels support (CUDA; see :mod:`fastnas.kernels._common`),
    the final BN of every op is folded into the sum (:func:`fastnas.nn.fused_edge.edge_from_pre_bn`),
    so the normalised op outputs are never written; edges with an op that does
    not end in a foldable BN (NAS-Bench-201's pooling without BN) keep the plain sum.

    ``columns`` (per-edge candidate sets, P-DARTS): the position of each of ``ops`` in the edge-weight row
    the edge receives (the space's column order); by default ``ops`` are the whole row. ``skip_dropout``
    (P-DARTS' search-space regularisation) drops elements of the identity ``skip_connect`` output with that
    probability in training mode. ``partial`` (:class:`PartialChannels`): the ops see ``channels / k``
    channels; the bypass is scaled by the sum of the edge's weight row, which is 1 for a softmax row and the
    edge's weight under PC-DARTS' edge normalisation (whose code scales the whole edge output by it).
    """

    _active_index: torch.Tensor  # buffers, registered in __init__ (bn_index only on a foldable edge)
    bn_index: torch.Tensor

    def __init__(
        self,
        channels: int,
        stride: int,
        ops: tuple[str, ...],
        pool_bn: bool = True,
        columns: Sequence[int] | None = None,
        partial: PartialChannels | None = None,
    ):
        super().__init__()
        self.partial = partial or PartialChannels()
        if channels % self.partial.k:
            raise ValueError(
                f"partial channels k={self.partial.k} must divide the edge's {channels} channels"
            )
        self.stride = stride
        channels //= self.partial.k
        self.op_names = tuple(ops)
        self.columns = tuple(range(len(ops))) if columns is None else tuple(int(c) for c in columns)
        if len(self.columns) != len(self.op_names) or len(set(self.columns)) != len(self.columns):
            raise ValueError(
                f"columns {list(self.columns)} must give one distinct position per op {list(ops)}"
            )
        self.skip_dropout = 0.0
        self.ops = nn.ModuleList()
        active: list[int] = []
        for k, name in enumerate(ops):
            spec = get_op_spec(name)
            op = build_op(name, channels, stride, affine=False)
            if spec.kind == "pool" and pool_bn:
                op = nn.Sequential(op, nn.BatchNorm2d(channels, affine=False))
            self.ops.append(op)
            if spec.kind != "zero":
                active.append(k)
        if not active:
            raise ValueError(f"an edge needs at least one op other than 'none', got {list(self.op_names)}")
        self.active = tuple(active)
        zeros = [k for k, name in enumerate(ops) if get_op_spec(name).kind == "zero"]
        self._zero = zeros[0] if zeros else None
        self.register_buffer(
            "_active_index",
            torch.tensor([self.columns[k] for k in active], dtype=torch.long),
            persistent=False,
        )
        self.fold_plan: tuple[list[int], int | None] | None = None
        self._foldable = self._plan_fold()

    def _plan_fold(self) -> bool:
        """Split every active op into (pre-BN part, final BN) or the identity; False if one cannot be."""
        bn_ops: list[int] = []
        identity: int | None = None
        for k in self.active:
            op = self.ops[k]
            if is_identity(op) and identity is None:
                identity = k
                continue
            if split_final_bn(op) is None:
                return False
            bn_ops.append(k)
        if not bn_ops:
            return False
        self.fold_plan = (bn_ops, identity)  # indices into self.ops
        bn_columns = [self.columns[k] for k in bn_ops]
        self.register_buffer("bn_index", torch.tensor(bn_columns, dtype=torch.long), persistent=False)
        return True

    def _skip_dropped(self, x: torch.Tensor) -> torch.Tensor:
        """The identity skip's output: ``x``, with P-DARTS' dropout in training mode."""
        if self.skip_dropout > 0 and self.training:
            return F.dropout(x, self.skip_dropout, training=True)
        return x

    def forward(
        self, x: torch.Tensor, weights: torch.Tensor, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``sum_k w_k * op_k(x)``; with ``active`` (a host bool row over the weight columns) only the
        active ops are called: one active op runs alone (its weight is 1 by construction), and an edge
        whose active ops are all ``none`` gives zeros."""
        if self.partial.k == 1:
            return self._mixture(x, weights, active)
        head, tail = self.split_channels(x)
        return self.with_bypass(self._mixture(head, weights, active), tail, weights.sum())

    def _mixture(self, x: torch.Tensor, weights: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
        if active is not None:
            return self.forward_active(x, weights, active)
        if self.training and self._foldable and model_uses_kernels(x):
            return self.forward_folded(x, weights)
        return self.forward_reference(x, weights)

    def split_channels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Partial channels: the first ``1/k`` of the channels and the rest (views, not copies)."""
        head = x.shape[1] // self.partial.k
        first, rest = x.split([head, x.shape[1] - head], 1)
        return first, rest

    def with_bypass(
        self, mixed: torch.Tensor, tail: torch.Tensor, scale: torch.Tensor | None
    ) -> torch.Tensor:
        """Partial channels: the bypassed channels (pooled on a stride-2 edge, times ``scale``) after the
        mixed ones, then the channel shuffle."""
        return join_partial(mixed, tail, self.partial, self.stride, scale)

    def forward_active(self, x: torch.Tensor, weights: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """The sparse edge: inactive ops are never called (not computed and multiplied by 0)."""
        flags = active.tolist()  # a CPU tensor: no device synchronisation
        chosen = [k for k, column in enumerate(self.columns) if flags[column]]
        computing = [k for k in chosen if k in self.active]
        if not computing:
            if self._zero is None:
                raise ValueError("an active set left this edge without any op to run")
            return self.ops[self._zero](x)
        if len(chosen) == 1:  # the edge's weight row is one-hot on this op: no mixture
            op = self.ops[computing[0]]
            return self._skip_dropped(x) if is_identity(op) else op(x)
        outputs = [self._skip_dropped(x) if is_identity(self.ops[k]) else self.ops[k](x) for k in computing]
        # stacked views of the weight row: no host index tensor is copied to the device per edge
        chosen_weights = torch.stack([weights[self.columns[k]] for k in computing])
        return weighted_sum(_common_dtype(outputs), chosen_weights)

    def forward_folded(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The edge with every final BN folded into the weighted sum (batch statistics, training mode)."""
        if self.fold_plan is None:
            raise RuntimeError("this edge has an op without a foldable final BN; use forward_reference")
        bn_ops, identity = self.fold_plan
        parts = [split_final_bn(self.ops[k]) for k in bn_ops]
        zs = [pre_bn(x) for pre_bn, _ in parts]  # type: ignore[misc]
        common = zs[0].dtype
        for z in zs[1:]:
            common = torch.promote_types(common, z.dtype)
        zs = [z.to(common) for z in zs]
        bns = [bn for _, bn in parts]  # type: ignore[misc]
        op_weights = weights.index_select(0, self.bn_index)
        if identity is None:
            return edge_from_pre_bn(zs, bns, op_weights)
        return edge_from_pre_bn(zs, bns, op_weights, self._skip_dropped(x), weights[self.columns[identity]])

    def forward_reference(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_k w_k * op_k(x)`` with every op run as a module (the DARTS loop)."""
        outputs = [self._skip_dropped(x) if is_identity(self.ops[k]) else self.ops[k](x) for k in self.active]
        return weighted_sum(_common_dtype(outputs), weights.index_select(0, self._active_index))

    def forward_op(self, x: torch.Tensor, column: int) -> torch.Tensor:
        """Output of the candidate op in weight column ``column`` alone (methods that run one op per edge)."""
        op = self.ops[self.columns.index(column)]
        if self.partial.k == 1:
            return op(x)
        head, tail = self.split_channels(x)
        return self.with_bypass(op(head), tail, None)
