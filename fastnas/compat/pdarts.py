"""``model_search.Network`` of the P-DARTS code (Chen, Xie, Wu & Tian, "Progressive Differentiable
Architecture Search: Bridging the Depth Gap between Search and Evaluation", ICCV 2019), backed by
fastnas's P-DARTS.

P-DARTS' ``train_search.py`` runs its stages itself: per stage it builds a new, deeper ``Network`` over
the ops still switched on, trains it, reads ``softmax(arch_parameters())`` to switch off the weakest ops of
every edge, and builds the next stage. With its import changed to::

    from fastnas.compat.pdarts import Network
    model = Network(args.init_channels + int(add_width[sp]), CIFAR_CLASSES,
                    args.layers + int(add_layers[sp]), criterion, switches_normal=switches_normal,
                    switches_reduce=switches_reduce, p=float(drop_rate[sp]))

it runs line by line:

- ``switches_normal`` / ``switches_reduce``: 14 lists (one per edge) of 8 bools (one per op, in DARTS'
  op order), which ops the edge keeps; every edge keeps the same number ``k`` (missing or empty: all 8).
  The supernet holds only the switched-on ops of each edge (fastnas's per-edge candidate sets,
  :meth:`fastnas.spaces.DartsSpace.with_candidates`).
- ``arch_parameters()`` is ``[alphas_normal, alphas_reduce]``, each ``[14, k]``: column ``j`` of row ``e``
  is the ``j``-th switched-on op of edge ``e``, as in P-DARTS. They are a view of fastnas's P-DARTS alphas
  (:mod:`fastnas.algorithms.pdarts`, ``[14, 8]`` with the switched-off ops masked): the ``[14, 8]`` matrix
  is the ``[14, k]`` one scattered into the switched-on columns, so a script's own ``softmax`` over the
  ``[14, k]`` alphas equals fastnas's masked softmax on those columns (the others weigh exactly 0), and
  gradients, Adam steps and gradient clipping on the ``[14, k]`` tensors are those of fastnas's search.
- As in P-DARTS the alphas are module parameters: ``named_parameters()`` yields ``alphas_normal`` and
  ``alphas_reduce`` (before the weights ``stem.*``, ``cells.*``, ``classifier.*``), also through
  ``nn.DataParallel`` (``module.alphas_normal``), so the script's ``k.endswith('alphas_normal')`` filter
  separates them from the weights. ``state_dict()`` holds both under those names.
- ``p``: the dropout rate on every identity ``skip_connect`` output in training mode (P-DARTS' search
  space regularisation); the script sets ``model.p = ...`` and calls ``model.update_p()`` every epoch. As
  in P-DARTS, a network built with ``p = 0`` has no skip-connect dropout at all, and ``update_p()`` leaves
  it so (the original adds its dropout modules only for ``p > 0``).
- ``_loss``, ``forward``, ``_criterion``, ``switches_normal``, ``switches_reduce`` and ``switch_on`` (``k``)
  are P-DARTS'. Not in P-DARTS' network but here: ``new()``, and ``genotype()``, fastnas's P-DARTS
  derivation (the DARTS rule over the switched-on ops with ``none`` excluded, then at most ``max_skip``
  skip-connects in the normal cell).

Keyword arguments: ``executor``, ``in_channels``, ``partial_k`` and the method's options (``max_skip``,
``edge_norm`` ...). One difference, deliberate: P-DARTS' forward takes the softmax of a ``[14, 1]`` alpha
over the 14 edges (``dim=0``); here a single op per edge weighs 1, the softmax over the edge's ops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from fastnas.compat._base import CompatNetwork
from fastnas.errors import ConfigError
from fastnas.nn.darts_supernet import Supernet
from fastnas.spaces import DartsSpace

__all__ = ["Network", "SwitchedOn", "switched_on"]


def switched_on(switches: Sequence[Sequence[Any]] | None, space: DartsSpace, name: str) -> list[list[int]]:
    """Per edge, the indices of the ops ``switches`` keeps on (None or empty: every op)."""
    if switches is None or len(switches) == 0:
        return [list(range(space.num_ops)) for _ in range(space.num_edges)]
    rows = [list(row) for row in switches]
    if len(rows) != space.num_edges or any(len(row) != space.num_ops for row in rows):
        raise ConfigError(
            f"{name} must be {space.num_edges} lists (one per edge) of {space.num_ops} bools (one per op of "
            f"{list(space.ops)}), got {len(rows)} lists of lengths {sorted({len(r) for r in rows})}"
        )
    return [[k for k, on in enumerate(row) if bool(on)] for row in rows]


class SwitchedOn(nn.Module):
    """The parametrisation that maps P-DARTS' alphas ``[num_edges, k]`` (column ``j``: the edge's ``j``-th
    switched-on op) onto fastnas's ``[num_edges, num_ops]`` (switched-off columns 0, masked by the method)."""

    columns: torch.Tensor  # a buffer, registered in __init__

    def __init__(self, columns: list[list[int]], num_ops: int) -> None:
        super().__init__()
        self.num_ops = num_ops
        self.register_buffer("columns", torch.tensor(columns, dtype=torch.long), persistent=False)

    def forward(self, alphas: torch.Tensor) -> torch.Tensor:
        return alphas.new_zeros(alphas.shape[0], self.num_ops).scatter(1, self.columns, alphas)

    def right_inverse(self, full: torch.Tensor) -> torch.Tensor:
        return full.gather(1, self.columns)


class Network(CompatNetwork):
    """P-DARTS' search network of one stage, with fastnas underneath (see the module docstring)."""

    module_name = "fastnas.compat.pdarts"
    method_title = "P-DARTS"
    arch_in_parameters = True

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        criterion: nn.Module | None = None,
        steps: int = 4,
        multiplier: int = 4,
        stem_multiplier: int = 3,
        switches_normal: Sequence[Sequence[Any]] | None = None,
        switches_reduce: Sequence[Sequence[Any]] | None = None,
        p: float = 0.0,
        *,
        executor: str | None = None,
        in_channels: int = 3,
        partial_k: int | None = None,
        **options: Any,
    ) -> None:
        self._refuse_method(options)
        every_op = DartsSpace(num_nodes=steps, multiplier=min(multiplier, steps))
        on = {
            "normal": switched_on(switches_normal, every_op, "switches_normal"),
            "reduce": switched_on(switches_reduce, every_op, "switches_reduce"),
        }
        counts = sorted({len(row) for rows in on.values() for row in rows})
        if len(counts) != 1:
            raise ConfigError(
                f"P-DARTS' alphas are [{every_op.num_edges}, k]: every edge of switches_normal and "
                f"switches_reduce must switch on the same number k of ops, got {counts}"
            )
        if not 0.0 <= float(p) < 1.0:
            raise ConfigError(f"p, the skip-connect dropout rate, must be in [0, 1), got {p}")
        k = counts[0]
        restricted = k < every_op.num_ops
        keywords: dict[str, Any] = {"executor": executor, "in_channels": in_channels, "partial_k": partial_k}
        ops = range(every_op.num_ops)
        keep = {f"switches_{t}": [[j in row for j in ops] for row in rows] for t, rows in on.items()}
        super().__init__(
            C, num_classes, layers, criterion, steps, multiplier, stem_multiplier,
            method="pdarts", space=every_op.with_candidates(on) if restricted else every_op,
            **keywords, options=options, rebuild={**keep, "p": float(p), **keywords, **options},
        )  # fmt: skip
        if restricted:
            alphas = cast(nn.ParameterDict, getattr(self.search.algorithm, "alphas"))  # noqa: B009
            for cell_type, rows in on.items():
                parametrize.register_parametrization(alphas, cell_type, SwitchedOn(rows, every_op.num_ops))
            self._expose_arch()
        self.switches_normal = keep["switches_normal"]
        self.switches_reduce = keep["switches_reduce"]
        self.switch_on = k
        self.p = float(p)
        self._skip_dropout_built = self.p > 0  # P-DARTS builds its dropout modules only for p > 0
        self.update_p()

    def update_p(self) -> None:
        """Set the skip-connect dropout rate to ``self.p`` (P-DARTS' ``model.p = ...; model.update_p()``);
        nothing on a network built with ``p = 0``, as in P-DARTS."""
        if self._skip_dropout_built:
            cast(Supernet, self.search.supernet).set_skip_dropout(float(self.p))
