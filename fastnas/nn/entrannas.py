"""The EnTranNAS supernet: Engine-cells, Transit-cells, feature sharing and the bottleneck (Yang, You, Li,
Wang, Qian & Lin, "Towards Improving the Consistency, Efficiency, and Flexibility of Differentiable Neural
Architecture Search", CVPR 2021; sections 2.2, 2.3 and 2.5).

- An **Engine-cell** holds the whole mixed DAG and weights every candidate by the architecture weights
  (Eq. 1/6, first case: ``x_j = sum_{i<j} sum_k p_k^(i,j) o_k(x_i)``).
- A **Transit-cell** has all candidate op modules (any op may be derived at the next iteration) but
  runs only the sub-graph derived at this iteration, as a plain sum like the evaluation cell (Eq. 3/6,
  second case: ``x_j = sum_{(i,k) in S_j} o_k(x_i)``); ops outside ``S_j`` do no work at all.
- **Feature sharing** (Eq. 6): op ``k`` has one module per source state ``i`` (``w_k^(i)``), so
  ``o_k(x_i)`` is computed once and reused by every later node; a cell holds ``(n - 1) x K`` op
  modules instead of ``|E| x K`` (``n - 1 = num_nodes + 1`` sources: the two cell inputs and every
  intermediate node but the last).
- **Bottleneck** (section 2.5): a 1x1 conv reduces each source state from ``C`` to ``C / ratio``
  channels before the candidate ops; a 1x1 conv per intermediate node restores ``C`` channels.
- **Partial channels** (PC-DARTS, ``--partial-k``; a combination neither paper defines): the shared op
  outputs of a source are computed on the first ``1/K`` of its (reduced) channels; every edge then appends
  the source's other channels as its bypass, scaled by the edge's weight-row sum in an Engine-cell (as a
  :class:`~fastnas.nn.MixedEdge` does), and shuffles; the node sums its edges.

Derivation happens at every forward pass: the architecture weights of each cell type are read on the
host once per forward (one synchronisation; the Transit-cells' Python control flow needs the
topology). The rule is the method's: ``"top2"`` = the DARTS rule (EnTranNAS, Eq. 4) or
``"nonzero"`` = ``S_j = {(i, k): w > 0}`` (EnTranNAS-DST, Eq. 10). With ``"nonzero"`` the
Engine-cells also skip the pairs of zero weight: they contribute exactly nothing to the output and to
the gradients (their ``q`` is 0 below the ReLU of Eq. 8), so the Engine computes only ``S_j``, weighted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import torch
from torch import nn

from fastnas.algorithms.derivation import DerivationRule, check_finite, derive_darts_cell
from fastnas.algorithms.entrannas import ENGINE_CELL_KEYWORDS, EnTranNASOptions, TransitRule
from fastnas.errors import ConfigError
from fastnas.kernels._common import model_uses_kernels
from fastnas.kernels.masked_aggregate import masked_aggregate, masked_aggregate_reference
from fastnas.nn.cell import ReferenceExecutor
from fastnas.nn.mixed import PartialChannels, join_partial
from fastnas.nn.skeleton import CellPlan, DartsSkeleton, Stem, cell_types_of, preprocessors
from fastnas.nn.supernet_options import SupernetShape
from fastnas.ops import build_op, get_op_spec
from fastnas.spaces import DartsSpace

Selection = list[list[tuple[int, int]]]
"""Per intermediate node, the ``(source_state, op_index)`` pairs it sums."""

__all__ = [
    "EnTranCell",
    "EnTranNASSupernet",
    "bottleneck_channels",
    "build_entrannas_supernet",
    "resolve_engine_cells",
    "select_pairs",
]


def bottleneck_channels(channels: int, ratio: int) -> int:
    """``channels // ratio``, at least 2 and rounded up to even (FactorizedReduce, the stride-2
    ``skip_connect``, needs an even count; at the paper's sizes C=16, 32, 64 / 4 nothing changes)."""
    reduced = max(2, channels // ratio)
    return reduced + (reduced % 2)


def select_pairs(
    weights: torch.Tensor, space: DartsSpace, rule: TransitRule, derive: DerivationRule = "darts"
) -> Selection:
    """The derived set ``S_j`` of every intermediate node from edge weights ``[num_edges, num_ops]``.

    ``"top2"``: the DARTS rule (top-2 incoming edges by their strongest non-``none`` op, that op on each;
    Eq. 4). ``"nonzero"``: every ``(i, k)`` with a positive weight (Eq. 10), ordered by source, then op.
    ``none`` is never selected (it contributes nothing). ``derive="grouping"`` applies the grouping of
    Paganucci (2020, section 3.5) before the DARTS rule (``"top2"`` only), as the method's genotype does.
    """
    if rule == "top2":
        cell = derive_darts_cell(weights, space, rule=derive)
        return [[(i, space.op_index(op)) for op, i in node] for node in cell.nodes]
    if rule == "nonzero":
        positive = (weights.detach() > 0).cpu()
        zero_ops = [k for k, op in enumerate(space.ops) if get_op_spec(op).kind == "zero"]
        positive[:, zero_ops] = False
        out: Selection = []
        for edge in space.edges:
            if edge.node == len(out):
                out.append([])
            out[edge.node].extend((edge.source, int(k)) for k in positive[edge.index].nonzero().flatten())
        return out
    raise ValueError(f"unknown transit rule {rule!r}; use 'top2' (EnTranNAS) or 'nonzero' (EnTranNAS-DST)")


def _search_op(name: str, channels: int, stride: int, affine: bool, pool_bn: bool) -> nn.Module:
    op = build_op(name, channels, stride, affine=affine)
    if pool_bn and get_op_spec(name).kind == "pool":
        op = nn.Sequential(op, nn.BatchNorm2d(channels, affine=affine))
    return op


def _conv_bn(c_in: int, c_out: int, affine: bool) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine))


class EnTranCell(nn.Module):
    """One EnTranNAS cell; ``engine=True`` makes it an Engine-cell, else a Transit-cell.

    Inputs, preprocessing, strides and the output concat follow the DARTS search cell. ``ops[u][k]`` is
    op ``k`` of unit ``u``: a source state (feature sharing) or an edge (no sharing). Ops of kind
    ``zero`` (``none``) are never run. ``affine`` / ``pool_bn`` default to the search conventions
    (BN without affine parameters, a BN after pooling); the evaluation-cell conventions
    (``affine=True, pool_bn=False``) make a Transit-cell directly comparable with
    :class:`~fastnas.nn.eval_network.EvalCell`.

    Bottleneck (section 2.5; the paper says only "a 1x1 convolution"): reduce = Conv1x1 + BN per source
    state, restore = Conv1x1 + BN per intermediate node. The BNs keep the node scale of the DARTS cell
    (whose nodes are sums of BN outputs); this is a choice where the paper is silent.
    """

    def __init__(
        self,
        space: DartsSpace,
        plan: CellPlan,
        *,
        engine: bool,
        feature_sharing: bool = True,
        bottleneck: int = 4,
        affine: bool = False,
        pool_bn: bool = True,
        partial: PartialChannels | None = None,
    ):
        super().__init__()
        if bottleneck < 0:
            raise ValueError(f"bottleneck ratio must be >= 1 (0 = off), got {bottleneck}")
        self.space = space
        self.engine = engine
        self.reduction = plan.reduction
        self.feature_sharing = feature_sharing
        self.num_nodes = space.num_nodes
        self.concat = space.concat
        self.multiplier = space.multiplier
        self.bottleneck = bottleneck if bottleneck > 1 else 0
        self.preprocess0, self.preprocess1 = preprocessors(plan, affine)
        channels = plan.channels
        num_sources = self.num_nodes + 1  # the last intermediate node feeds no op in the cell
        c_op = bottleneck_channels(channels, self.bottleneck) if self.bottleneck else channels
        self.op_channels = c_op
        self.partial = partial or PartialChannels()
        k = self.partial.k
        if k > 1 and (c_op % k or (c_op // k) % 2):
            raise ConfigError(
                f"--partial-k {k}: the ops of a {channels}-channel EnTranNAS cell see {c_op} channels"
                f"{' after the bottleneck' if self.bottleneck else ''}, which must split into {k} parts "
                "of an even size (the stride-2 skip_connect needs one); choose a smaller K, a larger --C, "
                "or --bottleneck 0"
            )
        self.head_channels = c_op // k  # what the candidate ops see (all of c_op without partial channels)
        if self.bottleneck:
            self.reduce = nn.ModuleList(_conv_bn(channels, c_op, affine) for _ in range(num_sources))
            self.restore = nn.ModuleList(_conv_bn(c_op, channels, affine) for _ in range(self.num_nodes))
        # Units: source states (sharing) or edges; the stride depends only on the source.
        sources = list(range(num_sources)) if feature_sharing else [e.source for e in space.edges]
        self.ops = nn.ModuleList(
            nn.ModuleList(
                _search_op(op, self.head_channels, plan.edge_stride(source), affine, pool_bn)
                for op in space.ops
            )
            for source in sources
        )
        self._strides = [plan.edge_stride(source) for source in range(num_sources)]
        self._edge_index = {(e.node, e.source): e.index for e in space.edges}
        self._weight_index: dict[tuple, torch.Tensor] = {}
        self._all_pairs: Selection = [
            [
                (i, k)
                for i in range(node + 2)
                for k, op in enumerate(space.ops)
                if get_op_spec(op).kind != "zero"
            ]
            for node in range(self.num_nodes)
        ]

    def num_weighted_ops(self) -> int:
        """Op modules with parameters (section 2.3: ``(n-1) x K-bar`` shared, ``|E| x K-bar`` not)."""
        return sum(
            1 for unit in self.ops for op in cast(nn.ModuleList, unit) if any(True for _ in op.parameters())
        )

    def forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        weights: torch.Tensor | None = None,
        selection: Selection | None = None,
    ) -> torch.Tensor:
        """Engine-cell: ``weights [E, K]`` weight the pairs of ``selection`` (default: every pair).
        Transit-cell: ``selection`` (required) is summed unweighted; ``weights`` is ignored."""
        if not self.engine:
            if selection is None:
                raise ValueError("a Transit-cell needs the derived selection S_j of every node")
            weights = None
        elif weights is None:
            raise ValueError("an Engine-cell needs the architecture weights")
        pairs = selection if selection is not None else self._all_pairs
        if len(pairs) != self.num_nodes:
            raise ValueError(f"selection must have one entry per node ({self.num_nodes}), got {len(pairs)}")
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        inputs: dict[int, torch.Tensor] = {}
        shared: dict[tuple[int, int], torch.Tensor] = {}
        for node, node_pairs in enumerate(pairs):
            if not node_pairs:
                raise ValueError(f"node {node} has no input in the selection (every node needs one)")
            terms = []
            for source, k in node_pairs:
                if source >= node + 2:
                    raise ValueError(f"node {node} cannot read state {source}")
                edge = self._edge_index[(node, source)]
                terms.append(self._feature(states, inputs, shared, source, edge, k))
            if self.partial.k > 1:
                total = self._partial_node(node, node_pairs, terms, weights, inputs)
            else:
                total = self._aggregate(node, node_pairs, terms, weights)
            if self.bottleneck:
                total = self.restore[node](total)
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)

    def _partial_node(
        self,
        node: int,
        node_pairs: list[tuple[int, int]],
        terms: list[torch.Tensor],
        weights: torch.Tensor | None,
        inputs: dict[int, torch.Tensor],
    ) -> torch.Tensor:
        """Partial channels (PC-DARTS): per incoming edge, its op terms on the first ``C/K`` channels,
        then the bypassed rest scaled by the edge's weight-row sum (1 in a Transit-cell), shuffled; the
        node sums its edges."""
        total: torch.Tensor | None = None
        for source in dict.fromkeys(i for i, _ in node_pairs):
            picked = [n for n, (i, _) in enumerate(node_pairs) if i == source]
            pairs = [node_pairs[n] for n in picked]
            mixed = self._aggregate(node, pairs, [terms[n] for n in picked], weights)
            scale = None if weights is None else weights[self._edge_index[(node, source)]].sum()
            tail = inputs[source][:, self.head_channels :]
            out = join_partial(mixed, tail, self.partial, self._strides[source], scale)
            total = out if total is None else total + out
        assert total is not None  # every node has an input (checked by the caller)
        return total

    def _aggregate(
        self,
        node: int,
        node_pairs: list[tuple[int, int]],
        terms: list[torch.Tensor],
        weights: torch.Tensor | None,
    ) -> torch.Tensor:
        """``x_j = sum_{(i, k)} w_ijk * o_k(x_i)`` (Eq. 6; unweighted in a Transit-cell) in one fused
        launch per 8 terms (:func:`~fastnas.kernels.masked_aggregate.masked_aggregate`)."""
        dtype = terms[0].dtype
        for t in terms[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        terms = [t.to(dtype) for t in terms]
        aggregate = masked_aggregate if model_uses_kernels(terms[0]) else masked_aggregate_reference
        if weights is None:
            return aggregate(terms)
        key = (node, tuple(node_pairs), weights.shape[1], weights.device)
        index = self._weight_index.get(key)
        if index is None:  # the flat positions of w_ijk in `weights`, kept on the device
            if len(self._weight_index) > 256:  # DST selections change; keep the cache bounded
                self._weight_index.clear()
            flat = [self._edge_index[(node, i)] * weights.shape[1] + k for i, k in node_pairs]
            index = self._weight_index[key] = torch.tensor(flat, device=weights.device)
        return aggregate(terms, weights.flatten().index_select(0, index))

    def _feature(
        self,
        states: list[torch.Tensor],
        inputs: dict[int, torch.Tensor],
        shared: dict[tuple[int, int], torch.Tensor],
        source: int,
        edge: int,
        k: int,
    ) -> torch.Tensor:
        """``o_k(x_source)``: computed once per (source, op) with sharing, once per (edge, op) without."""
        if source not in inputs:
            x = states[source]
            inputs[source] = self.reduce[source](x) if self.bottleneck else x
        x = inputs[source] if self.partial.k == 1 else inputs[source][:, : self.head_channels]
        if not self.feature_sharing:
            return cast(nn.ModuleList, self.ops[edge])[k](x)
        key = (source, k)
        if key not in shared:
            shared[key] = cast(nn.ModuleList, self.ops[source])[k](x)
        return shared[key]


def resolve_engine_cells(spec: str | Sequence[int], cell_types: Sequence[str]) -> tuple[int, ...]:
    """Indices of the Engine-cells.

    ``"first"`` (default, section 2.5 / Figure 4): the first cell of every cell type (first normal,
    first reduction). ``"last"``: the last cell of every type. ``"all"``: every cell (the DARTS
    supernet, Table 1 row 1). ``"half"``: the first half of the cells, plus the first cell of any type
    not yet covered (Table 1 "one half"; the paper does not say which half). Or explicit indices
    (a sequence, or text like ``"0,2"``).
    """
    n = len(cell_types)
    if isinstance(spec, str):
        if spec == "all":
            return tuple(range(n))
        if spec in ("first", "last"):
            order = range(n) if spec == "first" else range(n - 1, -1, -1)
            chosen: dict[str, int] = {}
            for i in order:
                chosen.setdefault(cell_types[i], i)
            return tuple(sorted(chosen.values()))
        if spec == "half":
            picked = set(range((n + 1) // 2))
            for t in dict.fromkeys(cell_types):
                if not any(cell_types[i] == t for i in picked):
                    picked.add(cell_types.index(t))
            return tuple(sorted(picked))
        try:
            spec = [int(s) for s in spec.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(
                f"engine cells must be {', '.join(ENGINE_CELL_KEYWORDS)} or indices like '0,2', got {spec!r}"
            ) from None
    indices = tuple(sorted(set(int(i) for i in spec)))
    if not indices or indices[0] < 0 or indices[-1] >= n:
        raise ConfigError(
            f"engine cell indices must be in [0, {n - 1}] (the supernet has {n} cells), got {list(spec)}"
        )
    missing = [t for t in dict.fromkeys(cell_types) if not any(cell_types[i] == t for i in indices)]
    if missing:
        raise ConfigError(
            f"cell types {missing} have no Engine-cell: their architecture parameters would get no gradient; "
            f"the cell types by index are {list(cell_types)}"
        )
    return indices


class EnTranNASSupernet(DartsSkeleton):
    """The EnTranNAS search network (Figure 4): the DARTS macro skeleton
    (:class:`~fastnas.nn.skeleton.DartsSkeleton`) with Engine- and Transit-cells.

    ``forward(x, weights)`` takes the method's edge weights ``{cell_type: [num_edges, num_ops]}``;
    Engine-cells use them, Transit-cells run the sub-graph :func:`select_pairs` derives from them with
    ``transit_rule``. The default Engine-cells (``"first"``) leave the final cell a Transit-cell, which
    then has the target-net's architecture (section 2.2); ``"all"`` gives the DARTS supernet (Table 1).
    Setting ``feature_sharing=False, bottleneck=0`` and ``engine_cells="all"`` with ``"top2"`` is the
    DARTS supernet's computation (the Table 3 baseline is the ``darts`` method itself).
    """

    def __init__(
        self,
        space: DartsSpace | None = None,
        C: int = 16,
        layers: int = 8,
        num_classes: int = 10,
        in_channels: int = 3,
        stem_multiplier: int = 3,
        engine_cells: str | Sequence[int] = "first",
        feature_sharing: bool = True,
        bottleneck: int = 4,
        transit_rule: TransitRule = "top2",
        stem: Stem = "cifar",
        derive: DerivationRule = "darts",
        partial: PartialChannels | None = None,
    ):
        space = space or DartsSpace()
        if not isinstance(space, DartsSpace):
            raise ConfigError("the EnTranNAS supernet needs a DARTS cell space (darts or darts-extended)")
        if space.restricted:
            raise ConfigError(
                "the EnTranNAS supernet shares op modules across edges: per-edge candidate sets do not apply"
            )
        if transit_rule not in ("top2", "nonzero"):
            raise ValueError(f"unknown transit rule {transit_rule!r}; use 'top2' or 'nonzero'")
        if layers < 3:
            raise ConfigError(f"a DARTS network needs at least 3 layers (two are reductions), got {layers}")
        engines = resolve_engine_cells(engine_cells, cell_types_of(layers, space.num_normal_types))
        super().__init__(
            C,
            layers,
            num_classes,
            in_channels,
            lambda plan: EnTranCell(
                space,
                plan,
                engine=plan.index in engines,
                feature_sharing=feature_sharing,
                bottleneck=bottleneck,
                partial=partial,
            ),
            num_normal_types=space.num_normal_types,
            stem=stem,
            stem_multiplier=stem_multiplier,
        )
        self.space = space
        self.engine_cells = engines
        self.transit_rule: TransitRule = transit_rule
        self.derive_rule: DerivationRule = derive
        self.feature_sharing, self.bottleneck = feature_sharing, bottleneck

    def selections(self, weights: Mapping[str, torch.Tensor]) -> dict[str, Selection]:
        """The derived set of every cell type at this iteration (one host read per cell type).

        Non-finite weights are reported as such (:class:`~fastnas.errors.NonFiniteError`), not as a node
        without inputs."""
        out = {}
        for t in dict.fromkeys(self.cell_types):
            host = weights[t].detach().cpu()
            check_finite(host, t)
            out[t] = select_pairs(host, self.space, self.transit_rule, self.derive_rule)
        return out

    def forward(self, x: torch.Tensor, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        selections = self.selections(weights)

        def run_cell(cell: nn.Module, cell_type: str, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
            if cell.engine:
                # DST ("nonzero"): the Engine runs only S_j, weighted (zero weights add nothing).
                sel = selections[cell_type] if self.transit_rule == "nonzero" else None
                return cell(s0, s1, weights[cell_type], sel)
            return cell(s0, s1, None, selections[cell_type])

        return self.forward_cells(x, run_cell)


EXECUTORS: tuple[str, ...] = (ReferenceExecutor.name,)
"""EnTranNAS cells run their own sparse loop (shared features, Transit sub-graphs): one executor."""


def build_entrannas_supernet(
    space: DartsSpace,
    shape: SupernetShape,
    options: EnTranNASOptions,
    transit_rule: TransitRule,
) -> EnTranNASSupernet:
    """The Engine/Transit supernet of an EnTranNAS method from its options (the Table 3 switches); its
    cells run their own loop (:data:`EXECUTORS`)."""
    return EnTranNASSupernet(
        space,
        C=shape.C,
        layers=shape.layers,
        num_classes=shape.num_classes,
        in_channels=shape.in_channels,
        engine_cells=options.engine_cells,
        feature_sharing=options.feature_sharing,
        bottleneck=options.bottleneck,
        transit_rule=transit_rule,
        stem=shape.stem,
        derive=options.derive,
        partial=shape.options.partial,
    )
