"""Search methods, one small module each: architecture parameters, edge weights, extra losses,
schedules, derivation rules and options. A leaf package: it imports spaces, ops and genotypes, never
the networks (:mod:`fastnas.nn`) or the training loop (:mod:`fastnas.train`). Methods are registered,
together with the supernet each one searches, in :mod:`fastnas.methods`."""

from __future__ import annotations

from fastnas.algorithms.base import Architecture, SearchAlgorithm, SearchDefaults, StagePlan
from fastnas.algorithms.darts import DARTS, DARTSOptions
from fastnas.algorithms.ddsas import DDSAS, DDSASOptions
from fastnas.algorithms.derivation import derive_darts, derive_darts_cell, derive_nb201, derive_space_rule
from fastnas.algorithms.edas import EDAS, EDASOptions
from fastnas.algorithms.entrannas import EnTranNAS, EnTranNASDST, EnTranNASDSTOptions, EnTranNASOptions
from fastnas.algorithms.options import MethodOptions, OptionSpec, option
from fastnas.algorithms.pcdarts import PCDARTS, PCDARTSOptions
from fastnas.algorithms.pdarts import PDARTS, PDARTSOptions

__all__ = [
    "DARTS",
    "DDSAS",
    "EDAS",
    "PCDARTS",
    "PDARTS",
    "Architecture",
    "DARTSOptions",
    "DDSASOptions",
    "EDASOptions",
    "EnTranNAS",
    "EnTranNASDST",
    "EnTranNASDSTOptions",
    "EnTranNASOptions",
    "MethodOptions",
    "OptionSpec",
    "PCDARTSOptions",
    "PDARTSOptions",
    "SearchAlgorithm",
    "SearchDefaults",
    "StagePlan",
    "derive_darts",
    "derive_darts_cell",
    "derive_nb201",
    "derive_space_rule",
    "option",
]
