"""Mixed edges, search cells, the supernet, executors, the search model and the evaluation networks."""

from fastnas.nn.cell import SearchCell
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
from fastnas.nn.executor import CellExecutor, ReferenceExecutor, build_executor, register_executor
from fastnas.nn.fast_executor import FastExecutor
from fastnas.nn.mixed import MixedEdge
from fastnas.nn.search_model import SearchModel
from fastnas.nn.supernet import Supernet, reduction_layers

__all__ = [
    "AuxiliaryHeadCIFAR",
    "AuxiliaryHeadImageNet",
    "CellExecutor",
    "EvalCell",
    "FastExecutor",
    "MixedEdge",
    "NetworkCIFAR",
    "NetworkImageNet",
    "ReferenceExecutor",
    "SearchCell",
    "SearchModel",
    "Supernet",
    "build_eval_network",
    "build_executor",
    "count_parameters_without_auxiliary",
    "drop_path",
    "reduction_layers",
    "register_executor",
]
