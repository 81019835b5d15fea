"""Mixed edges, search cells, the supernet, executors and the search model."""

from fastnas.nn.cell import SearchCell
from fastnas.nn.executor import CellExecutor, ReferenceExecutor, build_executor, register_executor
from fastnas.nn.mixed import MixedEdge
from fastnas.nn.search_model import SearchModel
from fastnas.nn.supernet import Supernet, reduction_layers

__all__ = [
    "CellExecutor",
    "MixedEdge",
    "ReferenceExecutor",
    "SearchCell",
    "SearchModel",
    "Supernet",
    "build_executor",
    "reduction_layers",
    "register_executor",
]
