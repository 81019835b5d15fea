"""NAS-Bench-201: arch strings and the results table (Dong & Yang, "NAS-Bench-201: Extending the Scope of
Reproducible Neural Architecture Search", ICLR 2020).

Pure Python (no torch import); the space lives in :mod:`fastnas.spaces.nb201`, its ops in
:mod:`fastnas.ops.nb201_ops` and its networks in :mod:`fastnas.nn.nb201`.
"""

from fastnas.nb201.arch import NB201_EDGES, NB201_OPS, ArchEdge, NB201Arch, NB201ArchError
from fastnas.nb201.table import METRICS, NB201LookupError, NB201Result, NB201Table

__all__ = [
    "METRICS",
    "NB201_EDGES",
    "NB201_OPS",
    "ArchEdge",
    "NB201Arch",
    "NB201ArchError",
    "NB201LookupError",
    "NB201Result",
    "NB201Table",
]
