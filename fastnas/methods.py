"""The method registry: every search method by name, with the supernet it searches.

Adding a method: write its algorithm (and its options) in ``fastnas/algorithms/<name>.py``, add one
:class:`Method` line (with its paper) to :data:`METHODS` below, its tests, a README section and a paragraph
in ``docs/methods.md``. A method that needs a new kind of cell also adds that cell under ``fastnas/nn/`` and
names its builder here. The command line, ``config.json`` and sweeps take the method's options from its
options dataclass; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from fastnas.algorithms import (
    DARTS,
    DDSAS,
    EDAS,
    PCDARTS,
    PDARTS,
    EnTranNAS,
    EnTranNASDST,
    MethodOptions,
    SearchAlgorithm,
    SearchDefaults,
)
from fastnas.errors import ConfigError
from fastnas.nn import (
    SupernetBuilder,
    SupernetOptions,
    SupernetShape,
    entrannas_supernet,
    space_supernet,
    supernet_options_class,
)
from fastnas.spaces.base import SearchSpace

__all__ = ["METHODS", "PAPERS", "Method", "build_algorithm", "get_method"]

PAPERS: dict[str, str] = {
    "darts": 'Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019',
    "pdarts": 'Chen, Xie, Wu & Tian, "Progressive Differentiable Architecture Search: Bridging the Depth Gap '
    'between Search and Evaluation", ICCV 2019',
    "pc-darts": 'Xu, Xie, Zhang, Chen, Qi, Tian & Xiong, "PC-DARTS: Partial Channel Connections for '
    'Memory-Efficient Architecture Search", ICLR 2020',
    "edas": 'Hong, Ahn & Kim, "EDAS: Efficient and Differentiable Architecture Search", arXiv 2019',
    "entrannas": 'Yang, You, Li, Wang, Qian & Lin, "Towards Improving the Consistency, Efficiency, and '
    'Flexibility of Differentiable Neural Architecture Search", CVPR 2021',
    "ddsas": 'Yang, Hu, Lu, Sun, Mei, Zeng, Shi, Han & Li, "DDSAS: Dynamic and Differentiable '
    'Space-Architecture Search", ACML 2021',
    "thesis": 'Paganucci, "Efficient ConvNet Architectures: Differentiable Neural Architecture Search", '
    "semester thesis, ETH Zurich, 2020",
    "nb201": 'Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural Architecture Search", '
    "ICLR 2020",
}
"""The papers fastnas implements, in full (authors, title, venue and year), by short key."""

SupernetOf = Callable[[SearchSpace, Any], SupernetBuilder]
"""``supernet_of(space, options) -> builder``: the supernet a method searches on a (prepared) space."""


def _space_supernet(space: SearchSpace, options: MethodOptions) -> SupernetBuilder:
    return space_supernet(space)


def _entrannas(rule: Any) -> SupernetOf:
    return lambda space, options: entrannas_supernet(options, rule)


@dataclass(frozen=True)
class Method:
    """A search method: its algorithm (architecture parameters, options, published defaults) and the
    builder of the supernet it searches."""

    name: str
    algorithm: type[SearchAlgorithm]
    supernet_of: SupernetOf
    summary: str
    paper: str = ""
    """The paper the method comes from: authors, title, venue and year (for ``--help`` and docs)."""

    def supernet(self, space: SearchSpace, options: MethodOptions) -> SupernetBuilder:
        """The builder of the supernet this method searches on ``space`` with ``options``."""
        return self.supernet_of(space, options)

    def build_supernet(self, space: SearchSpace, shape: SupernetShape, options: MethodOptions) -> nn.Module:
        """The method's supernet on ``space`` (prepared by the algorithm), built to ``shape``."""
        return self.supernet(space, options)(space, shape)

    def make_supernet_options(
        self, values: SupernetOptions | Mapping[str, Any] | None = None
    ) -> SupernetOptions:
        """The supernet's options from an options object or a mapping of the values given; the method's
        published supernet defaults (PC-DARTS: ``partial_k=4``) fill what the mapping leaves out."""
        cls = supernet_options_class()
        if isinstance(values, SupernetOptions):
            return values
        merged = {**self.algorithm.supernet_defaults, **(values or {})}
        return cls.from_mapping(merged)

    @property
    def Options(self) -> type[MethodOptions]:
        return self.algorithm.Options

    @property
    def defaults(self) -> SearchDefaults:
        """The published search hyper-parameters."""
        return self.algorithm.defaults

    def make_options(
        self, values: MethodOptions | Mapping[str, Any] | None = None, dataset: str | None = None
    ) -> MethodOptions:
        """The method's options from an options object, a mapping of values, or None (the defaults); with
        ``dataset``, the method's published values for that dataset fill what ``values`` leaves out."""
        if isinstance(values, MethodOptions):
            if not isinstance(values, self.Options):
                raise ConfigError(
                    f"method {self.name} takes {self.Options.__name__}, got {type(values).__name__}"
                )
            return values
        merged = {**(self.Options.dataset_defaults(dataset) if dataset else {}), **(values or {})}
        try:
            return self.Options.from_mapping(merged)
        except ConfigError as exc:
            raise ConfigError(f"method {self.name}: {exc}") from None


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "darts",
            DARTS,
            _space_supernet,
            "DARTS (Liu et al., 2019), first or second order",
            PAPERS["darts"],
        ),
        Method(
            "pdarts",
            PDARTS,
            _space_supernet,
            "P-DARTS (Chen et al., 2019): progressive stages, per-edge candidate sets, skip-connect dropout",
            PAPERS["pdarts"],
        ),
        Method(
            "pc-darts",
            PCDARTS,
            _space_supernet,
            "PC-DARTS (Xu et al., 2020): partial channel connections (--partial-k) and edge normalisation",
            PAPERS["pc-darts"],
        ),
        Method(
            "edas",
            EDAS,
            _space_supernet,
            "EDAS (Hong et al., 2019): one relaxed edge per step, every other edge runs its argmax op only",
            PAPERS["edas"],
        ),
        Method(
            "ddsas",
            DDSAS,
            _space_supernet,
            "DDSAS (Yang et al., ACML 2021): a UCB-sampled subspace of L ops; space parameters beta; "
            "saliency derivation",
            PAPERS["ddsas"],
        ),
        Method(
            "entrannas",
            EnTranNAS,
            _entrannas(EnTranNAS.transit_rule),
            "EnTranNAS (Yang et al., CVPR 2021): Engine- and Transit-cells, feature sharing, bottleneck",
            PAPERS["entrannas"],
        ),
        Method(
            "entrannas-dst",
            EnTranNASDST,
            _entrannas(EnTranNASDST.transit_rule),
            "EnTranNAS-DST (Yang et al., CVPR 2021): EnTranNAS with differentiable sparsification of the "
            "topology",
            PAPERS["entrannas"],
        ),
    )
}
"""Method name -> :class:`Method`."""


def get_method(name: str) -> Method:
    """The method registered as ``name`` (case-insensitive)."""
    try:
        return METHODS[name.lower()]
    except (KeyError, AttributeError):
        raise ConfigError(f"unknown search method {name!r}; available: {', '.join(METHODS)}") from None


def build_algorithm(name: str, space: SearchSpace, **options: Any) -> SearchAlgorithm:
    """Method ``name``'s algorithm on ``space``: ``build_algorithm("darts", space, order=2)``."""
    method = get_method(name)
    return method.algorithm(space, method.make_options(options))
