"""What the compat networks share: the ``model_search.Network`` interface of the DARTS-era research code
over a :class:`fastnas.SearchModel` of one method.

DARTS (Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019), PC-DARTS (Xu et al.,
"PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture Search", ICLR 2020) and P-DARTS
(Chen, Xie, Wu & Tian, "Progressive Differentiable Architecture Search: Bridging the Depth Gap between
Search and Evaluation", ICCV 2019) each ship a ``model_search.Network`` with the same skeleton and the same
calls: ``forward(x)``, ``_loss(x, target)``, ``arch_parameters()``, ``alphas_normal`` / ``alphas_reduce``,
``_criterion`` and (DARTS, PC-DARTS) ``new()`` and ``genotype()``. :class:`CompatNetwork` gives them, the
method's supernet and architecture parameters coming from fastnas. :class:`DartsConstructor` adds DARTS'
constructor, which PC-DARTS keeps (the networks of :mod:`fastnas.compat.darts` and
:mod:`fastnas.compat.pcdarts`); :mod:`fastnas.compat.pdarts` and :mod:`fastnas.compat.ddsas` (DDSAS: Yang
et al., "DDSAS: Dynamic and Differentiable Space-Architecture Search", ACML 2021) add their originals'
constructors.

Names, as the originals give them:

- The architecture parameters are attributes of the network under their published names
  (``alphas_normal``, ``alphas_reduce``, then PC-DARTS' ``betas_normal``, ``betas_reduce``); the same
  tensors are the fastnas method's (``search.algorithm``), so an optimiser over ``arch_parameters()``
  trains the method.
- ``named_parameters()`` / ``parameters()`` yield the supernet's weights as ``stem.*``, ``cells.*``,
  ``classifier.*`` (names below ``cells.N`` are fastnas's, ``edges.E.ops.K``); a network whose original
  registers its alphas as module parameters (P-DARTS) yields them first, as the original does.
- ``state_dict()`` holds the weights and buffers under those names plus every architecture parameter under
  its published name, also when the network sits inside a wrapper (``nn.DataParallel(model).state_dict()``
  gives ``module.stem...``, ``module.alphas_normal``); ``load_state_dict()`` takes the same names, so the
  second-order architect's ``_construct_model_from_theta`` (``state_dict()`` updated with
  ``named_parameters()`` keys, then ``load_state_dict`` into ``new()``) runs unchanged.

A call that only another method's scripts make (PC-DARTS' ``betas_normal`` on a network without edge
normalisation, P-DARTS' ``update_p()`` on a DARTS network) raises :class:`WrongNetworkError`, naming the
compat module that script should import.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, cast

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys
from torch.nn.utils import parametrize

from fastnas.errors import ConfigError
from fastnas.genotype import Genotype
from fastnas.search_model import SearchModel
from fastnas.spaces import DartsSpace

__all__ = [
    "PDARTS_ARGUMENTS",
    "CompatNetwork",
    "DartsConstructor",
    "WrongNetworkError",
    "refuse_pdarts_arguments",
]

_ALPHAS = ("alphas_normal", "alphas_reduce")
_BETAS = ("betas_normal", "betas_reduce")
_SUPERNET = "search.supernet."

PDARTS_ARGUMENTS = ("switches_normal", "switches_reduce", "p")
"""The constructor arguments only P-DARTS' ``Network`` takes."""

_PDARTS_ONLY = ("update_p", "switches_normal", "switches_reduce", "switch_on", "p")
"""Attributes only P-DARTS' ``Network`` has (its skip-connect dropout and switches)."""

_DDSAS_ONLY = (
    "space_parameters", "update_dss", "generate_dss", "generate_random_dss", "shrink_space", "set_space",
    "op_saliency", "set_tau",
)  # fmt: skip
"""Calls only the DDSAS code's ``Network`` answers (its space parameters and sampler)."""


def refuse_pdarts_arguments(options: dict[str, Any], module_name: str) -> None:
    """P-DARTS' own constructor arguments on a network that is not P-DARTS': a clear error."""
    given = [name for name in PDARTS_ARGUMENTS if name in options]
    if given:
        raise ConfigError(
            f"Network(..., {', '.join(given)}=...): P-DARTS' own Network arguments (Chen et al., ICCV 2019) "
            f"are not {module_name}'s; a P-DARTS script imports `from fastnas.compat.pdarts import "
            "Network`, whose alphas are [14, k] over the switched-on ops as P-DARTS' are"
        )


class WrongNetworkError(ConfigError, AttributeError):
    """A script asked a compat network for what only another method's ``Network`` has (PC-DARTS' betas,
    P-DARTS' ``update_p``): it imports the wrong compat module, and the message names the right one. Also
    an ``AttributeError``, so ``hasattr`` and ``getattr(model, name, default)`` still answer."""


class CompatNetwork(nn.Module):
    """A DARTS-era ``Network`` over ``self.search``, a :class:`fastnas.SearchModel` of ``method`` (see the
    module docstring). Subclasses give the original's constructor and pass the keyword arguments that
    rebuild them to :meth:`new` as ``rebuild``."""

    #: the import a script of this network uses (error messages)
    module_name: ClassVar[str] = "fastnas.compat"
    #: the method a network that builds only one names in its errors ("PC-DARTS"; see :meth:`_refuse_method`)
    method_title: ClassVar[str] = ""
    #: whether ``named_parameters()`` / ``parameters()`` yield the architecture parameters too (P-DARTS'
    #: alphas are module parameters; DARTS' and PC-DARTS' are not)
    arch_in_parameters: ClassVar[bool] = False

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        criterion: nn.Module | None,
        steps: int,
        multiplier: int,
        stem_multiplier: int,
        *,
        method: str,
        space: DartsSpace | None = None,
        executor: str | None = None,
        in_channels: int = 3,
        partial_k: int | None = None,
        options: dict[str, Any] | None = None,
        rebuild: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
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
        self._method = method
        self._rebuild = dict(rebuild or {})
        space = space if space is not None else DartsSpace(num_nodes=steps, multiplier=multiplier)
        self.search = SearchModel.build(
            method=method,
            space=space,
            C=C,
            layers=layers,
            num_classes=num_classes,
            executor=executor,
            in_channels=in_channels,
            partial_k=partial_k,
            **(options or {}),
        )
        self._expose_arch()
        self.register_state_dict_post_hook(_public_state)
        self.register_load_state_dict_pre_hook(_internal_state)
        self.register_load_state_dict_post_hook(_after_load)

    def _refuse_method(self, options: dict[str, Any]) -> None:
        """``method=`` on a network that builds one method (:attr:`method_title`): a TypeError naming
        :mod:`fastnas.compat.darts`' network, which takes it."""
        if "method" in options:
            raise TypeError(
                f"{self.module_name}.Network builds {self.method_title}; for method {options['method']!r} "
                "use fastnas.compat.darts.Network(..., method=...)"
            )

    # ------------------------------------------------------------------ the architecture parameters
    def _named_arch(self) -> list[tuple[str, nn.Parameter]]:
        """``(published name, parameter)``: the alphas, then the betas of edge normalisation (PC-DARTS)."""
        algorithm = self.search.algorithm
        alphas = cast(nn.ParameterDict, getattr(algorithm, "alphas"))  # noqa: B009
        named = []
        for name in _ALPHAS:
            cell_type = name.split("_")[1]
            if parametrize.is_parametrized(alphas, cell_type):  # a view of the method's alphas (P-DARTS)
                param = getattr(alphas.parametrizations, cell_type).original
            else:
                param = alphas[cell_type]
            named.append((name, cast(nn.Parameter, param)))
        edge_norm = getattr(algorithm, "edge_norm", None)
        if edge_norm is not None:
            betas = cast(nn.ParameterDict, edge_norm.betas)
            named += [(name, cast(nn.Parameter, betas[name.split("_")[1]])) for name in _BETAS]
        return named

    def _expose_arch(self) -> None:
        """Make the method's architecture parameters attributes of this network under their published names
        (``model.alphas_normal``); called again whenever the method's tensors change."""
        for name, param in self._named_arch():
            # the same tensor as the method's: not register_parameter, which refuses a second owner's name
            self._parameters[name] = param

    def _arch_aliases(self) -> dict[str, list[str]]:
        """Published name -> the other names ``nn.Module`` gives the same parameter (inside ``search``)."""
        public = {id(p): name for name, p in self._named_arch()}
        aliases: dict[str, list[str]] = {name: [] for name in public.values()}
        for name, p in super().named_parameters(remove_duplicate=False):
            owner = public.get(id(p))
            if owner is not None and name != owner:
                aliases[owner].append(name)
        return aliases

    @property
    def _arch_parameters(self) -> list[nn.Parameter]:
        return self.arch_parameters()

    def arch_parameters(self) -> list[nn.Parameter]:
        """``[alphas_normal, alphas_reduce]`` (with edge normalisation, then ``betas_normal, betas_reduce``,
        PC-DARTS' order)."""
        return [p for _, p in self._named_arch()]

    # ------------------------------------------------------------------ the DARTS calls
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.search(input))

    def _loss(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self._criterion(self(input), target))

    def new(self) -> CompatNetwork:
        """A new network (fresh weights, like the originals') with a copy of this one's architecture
        parameters, on the same device and in the same dtype."""
        first = next(self.search.supernet.parameters())
        model_new = type(self)(
            self._C, self._num_classes, self._layers, self._criterion, self._steps, self._multiplier,
            **self._rebuild,
        ).to(device=first.device, dtype=first.dtype)  # fmt: skip
        with torch.no_grad():
            for x, y in zip(model_new.arch_parameters(), self.arch_parameters(), strict=True):
                x.copy_(y)
        return model_new

    def genotype(self) -> Genotype:
        """The method's derivation on the current architecture parameters."""
        return cast(Genotype, self.search.genotype())

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            hint = self._wrong_network_hint(name)
            if hint is None:
                raise
            raise WrongNetworkError(hint) from None

    def _wrong_network_hint(self, name: str) -> str | None:
        """Why ``name`` is missing when another method's scripts use it (None: it is just missing)."""
        here = f"this {self.module_name}.Network (method {self._method!r})"
        if name in _BETAS:
            return (
                f"{name}: {here} has no edge-normalisation betas; a PC-DARTS script (Xu et al., ICLR 2020) "
                "imports `from fastnas.compat.pcdarts import Network`, which builds PC-DARTS' supernet "
                "(partial channels K=4, channel shuffle, betas_normal / betas_reduce)"
            )
        if name in _DDSAS_ONLY:
            return (
                f"{name}: DDSAS' Network has it, {here} does not; a DDSAS script (Yang et al., ACML 2021) "
                "imports `from fastnas.compat.ddsas import Network`, which takes confidence, dss_max_ops and "
                "saliency_type"
            )
        if name in _PDARTS_ONLY:
            return (
                f"{name}: P-DARTS' Network has it, {here} does not; a P-DARTS script (Chen et al., ICCV "
                "2019) imports `from fastnas.compat.pdarts import Network`, which takes switches_normal, "
                "switches_reduce and p"
            )
        return None

    # ------------------------------------------------------------------ weights, as the originals list them
    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        """The supernet's weights, named ``stem.*``, ``cells.*``, ``classifier.*`` (after the architecture
        parameters where the original registers them as module parameters: P-DARTS)."""
        if self.arch_in_parameters:
            dot = f"{prefix}." if prefix else ""
            for name, p in self._named_arch():
                yield dot + name, p
        yield from self.search.supernet.named_parameters(prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p


class DartsConstructor(CompatNetwork):
    """A network with the constructor of DARTS' ``model_search.Network``, which PC-DARTS' keeps: ``C,
    num_classes, layers, criterion=None, steps=4, multiplier=4, stem_multiplier=3``, then the keywords
    ``executor``, ``in_channels``, ``partial_k`` and the method's options. It builds :attr:`fixed_method`,
    or (None) the method of the keyword ``method`` (default ``"darts"``); P-DARTS' own arguments are
    refused (:func:`refuse_pdarts_arguments`)."""

    #: the fastnas method this network always builds (``method=`` is then refused); None: ``method=`` picks
    fixed_method: ClassVar[str | None] = None

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
        executor: str | None = None,
        in_channels: int = 3,
        partial_k: int | None = None,
        **options: Any,
    ) -> None:
        method: str
        chosen: dict[str, Any] = {}  # what new() passes again: the method when it was chosen
        if self.fixed_method is None:
            method = options.pop("method", "darts")
            chosen["method"] = method
        else:
            self._refuse_method(options)
            method = self.fixed_method
        refuse_pdarts_arguments(options, self.module_name)
        keywords: dict[str, Any] = {"executor": executor, "in_channels": in_channels, "partial_k": partial_k}
        super().__init__(
            C, num_classes, layers, criterion, steps, multiplier, stem_multiplier,
            method=method, **keywords, options=options, rebuild={**chosen, **keywords, **options},
        )  # fmt: skip


# ---------------------------------------------------------------------- state_dict names (module hooks)
def _public_state(module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """After ``state_dict``: the supernet's entries lose their ``search.supernet.`` prefix and the method's
    copies of the architecture parameters go (each is there under its published name)."""
    network = cast(CompatNetwork, module)
    aliases = {prefix + a for names in network._arch_aliases().values() for a in names}
    inner = prefix + _SUPERNET
    ours = [(k, state.pop(k)) for k in [k for k in state if k.startswith(prefix)]]
    for key, value in ours:  # re-inserted in their order: this module's entries are the last ones
        if key in aliases:
            continue
        state[prefix + key[len(inner) :] if key.startswith(inner) else key] = value


def _internal_state(
    module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any, *args: Any
) -> None:
    """Before ``load_state_dict``: the published names back to the modules that hold the tensors."""
    network = cast(CompatNetwork, module)
    aliases = network._arch_aliases()
    supernet = network.search.supernet
    top = {*supernet._modules, *supernet._parameters, *supernet._buffers}
    for key in [k for k in state if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        if rest in aliases:
            for alias in aliases[rest]:
                state[prefix + alias] = state[key]
        elif rest.split(".", 1)[0] in top:
            state[prefix + _SUPERNET + rest] = state.pop(key)


def _after_load(module: nn.Module, incompatible: _IncompatibleKeys) -> None:
    """After ``load_state_dict``: missing or unexpected keys under their published names, and the
    architecture attributes tied to the method's tensors again (``assign=True`` replaces tensors)."""
    network = cast(CompatNetwork, module)
    suffixes = {a: name for name, names in network._arch_aliases().items() for a in names}
    for keys in (incompatible.missing_keys, incompatible.unexpected_keys):
        renamed: list[str] = []
        for key in keys:
            for alias, name in suffixes.items():
                if key.endswith(alias):
                    key = key[: len(key) - len(alias)] + name
                    break
            key = key.replace(_SUPERNET, "", 1)
            if key not in renamed:
                renamed.append(key)
        keys[:] = renamed
    network._expose_arch()
