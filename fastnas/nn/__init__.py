"""Networks: the DARTS macro skeleton, mixed edges, search cells, cell executors, the supernets and the
evaluation networks. Imports spaces, ops, kernels and the derivation rules of :mod:`fastnas.algorithms`."""

from fastnas.nn.cell import SearchCell
from fastnas.nn.darts_supernet import Supernet
from fastnas.nn.entrannas import EnTranCell, EnTranNASSupernet, build_entrannas_supernet
from fastnas.nn.eval_network import (
    AuxiliaryHeadCIFAR,
    AuxiliaryHeadImageNet,
    EvalCell,
    NetworkCIFAR,
    NetworkImageNet,
    build_eval_network,
    count_parameters_without_auxiliary,
    drop_path,
)
from fastnas.nn.executor import (
    CellExecutor,
    ReferenceExecutor,
    build_executor,
    executor_names,
    register_executor,
)
from fastnas.nn.fast_executor import FastExecutor
from fastnas.nn.mixed import MixedEdge, PartialChannels
from fastnas.nn.nb201 import NB201Network, NB201Supernet
from fastnas.nn.skeleton import CellPlan, DartsSkeleton, preprocessors, reduction_layers
from fastnas.nn.supernet_builders import (
    SupernetBuilder,
    build_space_supernet,
    entrannas_supernet,
    space_supernet,
)
from fastnas.nn.supernet_options import (
    SupernetOptions,
    SupernetShape,
    register_supernet_options,
    supernet_options_class,
)

__all__ = [
    "AuxiliaryHeadCIFAR",
    "AuxiliaryHeadImageNet",
    "CellExecutor",
    "CellPlan",
    "DartsSkeleton",
    "EnTranCell",
    "EnTranNASSupernet",
    "EvalCell",
    "FastExecutor",
    "MixedEdge",
    "NB201Network",
    "NB201Supernet",
    "NetworkCIFAR",
    "NetworkImageNet",
    "PartialChannels",
    "ReferenceExecutor",
    "SearchCell",
    "Supernet",
    "SupernetBuilder",
    "SupernetOptions",
    "SupernetShape",
    "build_entrannas_supernet",
    "build_eval_network",
    "build_executor",
    "build_space_supernet",
    "count_parameters_without_auxiliary",
    "drop_path",
    "entrannas_supernet",
    "executor_names",
    "preprocessors",
    "reduction_layers",
    "register_executor",
    "register_supernet_options",
    "space_supernet",
    "supernet_options_class",
]
