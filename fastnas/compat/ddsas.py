"""``model_search.Network`` of the DDSAS code (Yang et al., "DDSAS: Dynamic and Differentiable
Space-Architecture Search", ACML 2021), backed by fastnas's DDSAS.

A DDSAS ``train_search.py`` keeps working when its import changes to::

    from fastnas.compat.ddsas import Network
    model = Network(args.init_channels, CIFAR_CLASSES, args.layers, criterion, args.confidence,
                    args.dss_max_ops, args.saliency_type, not args.no_norm, primitives=...)

The constructor is the public code's (``C, num_classes, layers, criterion, confidence, dss_max_ops,
saliency_type, norm=True, steps=4, multiplier=4, stem_multiplier=3, primitives=None``) and so are the
calls its script makes: ``arch_parameters()`` (``[alphas_normal, alphas_reduce]``), ``space_parameters()``
(``[betas_normal, betas_reduce]``), ``update_dss()`` (saliency, counts and UCB), ``generate_dss()`` (the UCB
subspace), ``generate_random_dss()``, ``set_space(indices, avail)`` and ``shrink_space(num)`` (the space
schedules), ``set_tau(tau)`` (Gumbel-softmax, None = off), ``op_saliency()`` (saliency x availability per
cell type), ``genotype()`` (the DARTS rule on it) and the sampler tables the script logs
(``_opt_steps_normal``, ``_op_saliency_normal``, ``_ucb_normal``, ``_op_mask_normal``, ``_op_avail_normal``
and their ``_reduce`` twins, ``_total_opt_steps``: read-only copies). Each call is the fastnas method's
(:mod:`fastnas.algorithms.ddsas`), so a script and ``fastnas search --method ddsas`` sample alike; the one
difference is ``shrink_space``, which applies the rule as stated (each edge keeps an op other than
``none``; see that module). ``saliency_type`` is ``"simple"`` (the published runs) or ``"all"``;
``primitives`` orders the ops (the expand configurations reorder them). The space schedule is the script's
(it calls ``set_space`` / ``shrink_space`` itself); ``fastnas search --method ddsas --ddsas-space shrink``
runs the published schedules without a script. ``new()`` works (the original's does not: it passes too
few arguments), copying alphas, betas and the sampler state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
from torch import nn

from fastnas.algorithms.ddsas import DDSAS, shrink_available
from fastnas.compat._base import CompatNetwork, refuse_pdarts_arguments
from fastnas.spaces import DartsSpace

__all__ = ["Network"]

_SPACE = ("betas_normal", "betas_reduce")


class Network(CompatNetwork):
    """DDSAS' search network with fastnas underneath (see the module docstring)."""

    module_name = "fastnas.compat.ddsas"

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        criterion: nn.Module | None,
        confidence: float,
        dss_max_ops: int,
        saliency_type: str,
        norm: bool = True,
        steps: int = 4,
        multiplier: int = 4,
        stem_multiplier: int = 3,
        primitives: Sequence[str] | None = None,
        *,
        executor: str | None = None,
        in_channels: int = 3,
        **options: Any,
    ) -> None:
        refuse_pdarts_arguments(options, self.module_name)
        if saliency_type not in ("simple", "all"):
            raise ValueError(f"saliency_type {saliency_type!r}: the DDSAS code takes 'simple' or 'all'")
        space = DartsSpace(num_nodes=steps, multiplier=multiplier)
        if primitives is not None:
            space = DartsSpace(ops=tuple(primitives), num_nodes=steps, multiplier=multiplier)
        method_options = {
            "ucb_c": confidence,
            "subspace_ops": dss_max_ops,
            "weight_form": saliency_type,
            "normalise": norm,
            **options,
        }
        self._ddsas_args = (confidence, dss_max_ops, saliency_type, norm)
        super().__init__(
            C, num_classes, layers, criterion, steps, multiplier, stem_multiplier,
            method="ddsas", space=space, executor=executor, in_channels=in_channels, options=method_options,
            rebuild={"executor": executor, "in_channels": in_channels, **options},
        )  # fmt: skip
        self._primitives = None if primitives is None else tuple(primitives)

    @property
    def ddsas(self) -> DDSAS:
        """The fastnas method underneath (its sampler state)."""
        return cast(DDSAS, self.search.algorithm)

    # ------------------------------------------------------------------ parameters under DDSAS' names
    def _named_arch(self) -> list[tuple[str, nn.Parameter]]:
        """``alphas_normal, alphas_reduce, betas_normal, betas_reduce`` (the betas: the space parameters)."""
        alg = self.ddsas
        named = [(f"alphas_{t}", cast(nn.Parameter, alg.alphas[t])) for t in ("normal", "reduce")]
        return named + [(name, cast(nn.Parameter, alg.betas[name.split("_")[1]])) for name in _SPACE]

    def arch_parameters(self) -> list[nn.Parameter]:
        """``[alphas_normal, alphas_reduce]``."""
        return [p for name, p in self._named_arch() if name.startswith("alphas")]

    def space_parameters(self) -> list[nn.Parameter]:
        """``[betas_normal, betas_reduce]``: the space parameters, ``p = sigmoid(beta)``."""
        return [p for name, p in self._named_arch() if name.startswith("betas")]

    def new(self) -> Network:
        """A new network (fresh weights) with this one's alphas, betas and sampler state."""
        first = next(self.search.supernet.parameters())
        confidence, max_ops, saliency_type, norm = self._ddsas_args
        model_new = type(self)(
            self._C, self._num_classes, self._layers, self._criterion, confidence, max_ops, saliency_type,
            norm, self._steps, self._multiplier, 3, self._primitives, **self._rebuild,
        ).to(device=first.device, dtype=first.dtype)  # fmt: skip
        with torch.no_grad():
            for x, y in zip(model_new._named_arch(), self._named_arch(), strict=True):
                x[1].copy_(y[1])
        model_new.ddsas.set_extra_state(self.ddsas.get_extra_state())
        return model_new

    # ------------------------------------------------------------------ the DDSAS calls
    def update_dss(self) -> None:
        """Saliency and counts of the active pairs, then the UCB table, then ``N + 1``."""
        self.ddsas.update()

    def generate_dss(self) -> None:
        """A new subspace from the UCB table."""
        self.ddsas.resample(-1, -1)
        self.ddsas.drain_records()  # a script keeps no sampling.jsonl

    def generate_random_dss(self) -> None:
        """A new subspace from uniform random scores."""
        self.ddsas.resample(-1, -1, random=True)
        self.ddsas.drain_records()

    def set_tau(self, tau: float | None) -> None:
        """The Gumbel-softmax temperature of the next forwards (None: plain softmax)."""
        self.ddsas.tau = None if tau is None else float(tau)

    def set_space(self, indices: Iterable[int], avail: bool = True) -> None:
        """Make the op columns ``indices`` available (or not) on every edge of both cell types."""
        columns = list(indices)
        alg = self.ddsas
        for t in alg.space.cell_types:
            alg.available[t][:, columns] = bool(avail)
            alg.available[t] &= alg.candidates[t]

    def shrink_space(self, num: int) -> None:
        """Remove the ``num`` least-salient available pairs of each cell type (each edge keeps an op)."""
        alg = self.ddsas
        for t in alg.space.cell_types:
            alg.available[t] = shrink_available(
                alg.saliency_table[t], alg.available[t], alg.none_columns, num
            )

    def op_saliency(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(normal, reduce)`` saliency x availability."""
        saliency = self.ddsas.saliency()
        return saliency["normal"], saliency["reduce"]

    # ------------------------------------------------------------------ the tables the script logs
    def _table(self, name: str, cell_type: str) -> torch.Tensor:
        alg = self.ddsas
        tables = {
            "opt_steps": alg.counts,
            "op_saliency": alg.saliency_table,
            "ucb": alg.ucb,
            "op_mask": alg.subspace,
            "op_avail": alg.available,
        }
        return tables[name][cell_type].clone()

    _opt_steps_normal = property(lambda self: self._table("opt_steps", "normal"))
    _opt_steps_reduce = property(lambda self: self._table("opt_steps", "reduce"))
    _op_saliency_normal = property(lambda self: self._table("op_saliency", "normal"))
    _op_saliency_reduce = property(lambda self: self._table("op_saliency", "reduce"))
    _ucb_normal = property(lambda self: self._table("ucb", "normal"))
    _ucb_reduce = property(lambda self: self._table("ucb", "reduce"))
    _op_mask_normal = property(lambda self: self._table("op_mask", "normal"))
    _op_mask_reduce = property(lambda self: self._table("op_mask", "reduce"))
    _op_avail_normal = property(lambda self: self._table("op_avail", "normal"))
    _op_avail_reduce = property(lambda self: self._table("op_avail", "reduce"))
    _total_opt_steps = property(lambda self: torch.tensor(float(self.ddsas.total)))
