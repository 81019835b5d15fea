"""Cell executors: how a search cell computes its intermediate nodes.

A cell owns its modules; an executor decides how to run them. The reference executor is the plain
loop of the papers (node j = sum over earlier states i of the mixed edge (i, j); Eq. 1 of Yang, You, Li,
Wang, Qian & Lin, "Towards Improving the Consistency, Efficiency, and Flexibility of Differentiable
Neural Architecture Search", CVPR 2021);
a fused executor (batched edges, fused weighted sum) plugs in through the same interface and must
give the same numbers.

``active`` (EDAS, DDSAS): a host-side bool mask ``[num_edges, num_ops]`` of the (edge, op) pairs that run
this step; inactive ops are never called (see :meth:`fastnas.nn.MixedEdge.forward`). None = every op.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from fastnas.errors import ConfigError

if TYPE_CHECKING:
    from fastnas.nn.cell import SearchCell


class CellExecutor(Protocol):
    """Computes all states of ``cell`` from the preprocessed inputs and the edge weights [E, K]."""

    name: str

    def __call__(
        self,
        cell: SearchCell,
        s0: torch.Tensor,
        s1: torch.Tensor,
        weights: torch.Tensor,
        active: torch.Tensor | None = None,
    ) -> list[torch.Tensor]: ...


class ReferenceExecutor:
    """The DARTS loop: node by node, a mixed op on every incoming edge, summed."""

    name = "reference"

    def __call__(
        self,
        cell: SearchCell,
        s0: torch.Tensor,
        s1: torch.Tensor,
        weights: torch.Tensor,
        active: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        states = [s0, s1]
        offset = 0
        for _node in range(cell.num_nodes):
            node_sum = None
            for source, state in enumerate(states):
                e = offset + source
                y = cell.edges[e](state, weights[e], None if active is None else active[e])
                node_sum = y if node_sum is None else node_sum + y
            offset += len(states)
            assert node_sum is not None  # every node reads the two cell inputs
            states.append(node_sum)
        return states


_EXECUTORS: dict[str, type] = {"reference": ReferenceExecutor}


def build_executor(name: str) -> CellExecutor:
    """Executor by name: ``reference`` (the DARTS loop) or ``fast`` (batched edges and fused kernels,
    :mod:`fastnas.nn.fast_executor`)."""
    try:
        return _EXECUTORS[name]()
    except KeyError:
        raise ConfigError(f"unknown cell executor {name!r}; available: {', '.join(_EXECUTORS)}") from None


def register_executor(name: str, cls: type) -> None:
    """Make a new executor selectable by name."""
    _EXECUTORS[name] = cls
