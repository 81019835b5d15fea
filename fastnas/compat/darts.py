"""``model_search.Network`` of the DARTS code, backed by fastnas (issue 16).

A DARTS-era ``train_search.py`` / ``architect.py`` keeps working when its import changes to::

    from fastnas.compat.darts import Network
    model = Network(args.init_channels, CIFAR_CLASSES, args.layers, criterion)

What the DARTS scripts call is here: ``forward(x)``, ``_loss(x, target)``, ``arch_parameters()`` /
``_arch_parameters`` (``[alphas_normal, alphas_reduce]``), ``new()`` (a fresh network with the same
alphas, as the second-order architect builds its virtual model), ``genotype()`` and ``_criterion``.
As in DARTS, ``parameters()`` / ``named_parameters()`` yield the weights only (the alphas are not
trained by the weight optimiser), and ``state_dict()`` / ``load_state_dict()`` hold the weights under
the names ``named_parameters()`` gives (``stem.*``, ``cells.*``, ``classifier.*``) plus the two alphas
(``alphas_normal``, ``alphas_reduce``), so the architect's ``_construct_model_from_theta``
(``state_dict()`` updated with ``named_parameters()`` keys, then ``load_state_dict``) works unchanged.
Parameter names below ``cells.N`` are fastnas's (``edges.E.ops.K``), not DARTS's ``_ops.E._ops.K``.

PC-DARTS' ``Network`` takes the same constructor and interface (it adds ``betas_normal`` /
``betas_reduce`` for edge normalisation): ``Network(..., method="pc-darts")`` gives it, with ``betas_*``
among the arch parameters; ``method="pdarts"`` gives one P-DARTS stage's supernet. Not covered (a clear
error): P-DARTS' ``switches_normal`` / ``switches_reduce`` / ``p`` arguments (its alphas are ``[14, k]``
over the switched-on ops; fastnas masks dropped ops in ``[14, 8]``) and EnTranNAS-style scripts; those
methods run through ``fastnas search``. The method, the executor, partial channels and the
method's options are keyword arguments (``Network(16, 10, 8, criterion, executor="fast")``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, cast

import torch
from torch import nn

from fastnas.errors import ConfigError
from fastnas.genotype import Genotype
from fastnas.search_model import SearchModel
from fastnas.spaces import DartsSpace

__all__ = ["Network"]

_ALPHAS = ("alphas_normal", "alphas_reduce")
_BETAS = ("betas_normal", "betas_reduce")


class Network(nn.Module):
    """The DARTS search network with fastnas underneath (see the module docstring)."""

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        criterion: nn.Module | None = None,
        steps: int = 4,
        multiplier: int = 4,
        stem_multiplier: int = 3,
        *,
        method: str = "darts",
        executor: str = "reference",
        in_channels: int = 3,
        partial_k: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        pdarts_only = sorted({"switches_normal", "switches_reduce", "p"} & set(options))
        if pdarts_only:
            raise ConfigError(
                f"Network(..., {', '.join(pdarts_only)}=...): P-DARTS' own Network arguments are not "
                "covered by fastnas.compat.darts (its [14, k] alphas over switched-on ops differ from "
                "fastnas's masked [14, 8]); run P-DARTS with `fastnas search --method pdarts`"
            )
        if multiplier != steps:
            raise ValueError(
                f"multiplier {multiplier} != steps {steps}: fastnas cells concatenate all their nodes "
                "(the DARTS setting, multiplier = steps)"
            )
        if stem_multiplier != 3:
            raise ValueError(f"stem_multiplier {stem_multiplier}: fastnas builds the DARTS stem (3)")
        self._C, self._num_classes, self._layers = C, num_classes, layers
        self._steps, self._multiplier = steps, multiplier
        self._criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
        self._build = {
            "method": method,
            "executor": executor,
            "in_channels": in_channels,
            "partial_k": partial_k,
            **options,
        }
        space = DartsSpace(num_nodes=steps, multiplier=multiplier)
        self.search = SearchModel.build(
            space=space, C=C, layers=layers, num_classes=num_classes, **self._build
        )

    # ------------------------------------------------------------------ the DARTS interface
    @property
    def alphas_normal(self) -> nn.Parameter:
        return self._alpha("normal")

    @property
    def alphas_reduce(self) -> nn.Parameter:
        return self._alpha("reduce")

    def _alpha(self, cell_type: str) -> nn.Parameter:
        alphas = cast(nn.ParameterDict, getattr(self.search.algorithm, "alphas"))  # noqa: B009
        return cast(nn.Parameter, alphas[cell_type])

    @property
    def _arch_parameters(self) -> list[nn.Parameter]:
        return self.arch_parameters()

    def arch_parameters(self) -> list[nn.Parameter]:
        """``[alphas_normal, alphas_reduce]`` (PC-DARTS: then ``betas_normal, betas_reduce``)."""
        return [p for _, p in self._named_arch()]

    def _named_arch(self) -> list[tuple[str, nn.Parameter]]:
        named = [(name, self._alpha(name.split("_")[1])) for name in _ALPHAS]
        edge_norm = getattr(self.search.algorithm, "edge_norm", None)
        if edge_norm is not None:
            betas = cast(nn.ParameterDict, edge_norm.betas)
            named += [(name, cast(nn.Parameter, betas[name.split("_")[1]])) for name in _BETAS]
        return named

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.search(input))

    def _loss(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self._criterion(self(input), target))

    def new(self) -> Network:
        """A new network (fresh weights, like DARTS's) with a copy of this one's architecture, on the
        same device and in the same dtype."""
        first = next(self.search.supernet.parameters())
        model_new = Network(
            self._C, self._num_classes, self._layers, self._criterion, self._steps, self._multiplier,
            **self._build,
        ).to(device=first.device, dtype=first.dtype)  # fmt: skip
        with torch.no_grad():
            for x, y in zip(model_new.arch_parameters(), self.arch_parameters(), strict=True):
                x.copy_(y)
        return model_new

    def genotype(self) -> Genotype:
        return cast(Genotype, self.search.genotype())

    # ------------------------------------------------------------------ weights only, as in DARTS
    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        """The supernet's weights (not the alphas), named ``stem.*``, ``cells.*``, ``classifier.*``."""
        yield from self.search.supernet.named_parameters(prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The weights and buffers under :meth:`named_parameters`' names, plus the alphas."""
        state = dict(self.search.supernet.state_dict())
        state.update({name: p.detach() for name, p in self._named_arch()})
        return state

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        arch = {name for name, _ in self._named_arch()}
        weights = {k: v for k, v in state_dict.items() if k not in arch}
        result = self.search.supernet.load_state_dict(weights, strict=strict, assign=assign)
        with torch.no_grad():
            for name, p in self._named_arch():
                if name in state_dict:
                    p.copy_(state_dict[name])
                elif strict:
                    raise KeyError(f"state_dict lacks {name!r}")
        return result
