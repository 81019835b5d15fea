"""Sparse execution: a cell under an active set calls only its active ops."""

from __future__ import annotations

import warnings
from collections import Counter

import pytest
import torch
from torch import nn

from fastnas import DartsSpace
from fastnas.nn import MixedEdge, Supernet
from fastnas.nn.fused_edge import is_identity
from fastnas.nn.nb201 import NB201Supernet
from fastnas.spaces import NB201Space

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks: one thread is faster

SPACE = DartsSpace()
NONE = SPACE.op_index("none")


def random_active(seed: int, shape: tuple[int, int], none_column: int = NONE) -> torch.Tensor:
    """A host bool mask with every kind of edge: mixtures, one op alone, ``none`` + one op, only ``none``."""
    g = torch.Generator().manual_seed(seed)
    edges, ops = shape
    mask = torch.rand(shape, generator=g) < 0.4
    mask[:, none_column] = False
    for e in range(edges):
        kind = e % 4
        if kind == 0:  # exactly one computing op
            mask[e] = False
            mask[e, 1 + int(torch.randint(ops - 1, (1,), generator=g))] = True
        elif kind == 1:  # only 'none'
            mask[e] = False
            mask[e, none_column] = True
        elif kind == 2:  # 'none' beside one computing op
            mask[e] = False
            mask[e, none_column] = True
            mask[e, 1 + int(torch.randint(ops - 1, (1,), generator=g))] = True
        elif mask[e].sum() < 2:  # a mixture of at least two computing ops
            mask[e, 1:3] = True
    return mask


def count_calls(net: nn.Module) -> Counter[tuple[int, int]]:
    """Calls per (edge id, weight column); identity skips are counted through the skip path."""
    calls: Counter[tuple[int, int]] = Counter()
    for edge in (m for m in net.modules() if isinstance(m, MixedEdge)):
        for k, op in enumerate(edge.ops):
            key = (id(edge), edge.columns[k])
            if is_identity(op):
                skip = edge._skip_dropped

                def counted(x: torch.Tensor, key: tuple[int, int] = key, skip=skip) -> torch.Tensor:  # type: ignore[no-untyped-def]
                    calls[key] += 1
                    return skip(x)

                edge._skip_dropped = counted  # type: ignore[method-assign]
            else:
                op.register_forward_hook(lambda *_args, key=key: calls.__setitem__(key, calls[key] + 1))
    return calls


def dense_weights(weights: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """The dense weights that give the sparse result: 0 off the active set, 1 on a lone active op."""
    dense = torch.where(active, weights, torch.zeros_like(weights))
    alone = active.sum(1) == 1
    return torch.where(alone[:, None] & active, torch.ones_like(dense), dense)


def darts_net(seed: int = 0) -> tuple[Supernet, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    net = Supernet(C=4, layers=5, num_classes=10)
    shape = (SPACE.num_edges, SPACE.num_ops)
    weights = {t: torch.rand(shape).softmax(-1).requires_grad_() for t in SPACE.cell_types}
    active = {t: random_active(seed + i, shape) for i, t in enumerate(SPACE.cell_types)}
    return net, weights, active


def assert_only_active_ops_ran(net: Supernet, active: dict[str, torch.Tensor], calls: Counter) -> None:  # type: ignore[type-arg]
    """Every computing op ran once iff active; ``none`` ran only on an edge where it is all that is active."""
    for cell, cell_type in zip(net.cells, net.cell_types, strict=True):
        mask = active[cell_type]
        for e, edge in enumerate(cell.edges):
            only_none = int(mask[e].sum()) == 1 and bool(mask[e, NONE])
            for column in edge.columns:
                expected = int(bool(mask[e, column]) and (column != NONE or only_none))
                assert calls[(id(edge), column)] == expected, (cell_type, e, SPACE.ops[column])


def test_inactive_ops_are_never_called_and_active_ones_once() -> None:
    net, weights, active = darts_net()
    calls = count_calls(net)
    net(torch.randn(2, 3, 16, 16), weights, active)
    assert_only_active_ops_ran(net, active, calls)


def test_dense_network_calls_every_op() -> None:
    """The counting itself can fail: without an active set every computing op runs."""
    net, weights, _ = darts_net()
    calls = count_calls(net)
    net(torch.randn(2, 3, 16, 16), weights)
    computing = [c for c in range(SPACE.num_ops) if c != NONE]
    assert all(calls[(id(e), c)] == 1 for cell in net.cells for e in cell.edges for c in computing)


def test_one_active_op_runs_alone_without_the_mixture() -> None:
    edge = MixedEdge(4, 1, SPACE.ops)
    x = torch.randn(2, 4, 8, 8)
    weights = torch.rand(SPACE.num_ops).softmax(0)
    for column in range(1, SPACE.num_ops):
        mask = torch.zeros(SPACE.num_ops, dtype=torch.bool)
        mask[column] = True
        out = edge(x, weights, mask)
        assert torch.equal(out, edge.forward_op(x, column))  # not scaled by the weight
        assert out.grad_fn is None or weights.grad_fn is None
    only_none = torch.zeros(SPACE.num_ops, dtype=torch.bool)
    only_none[NONE] = True
    assert torch.count_nonzero(edge(x, weights, only_none)) == 0
    with pytest.raises(ValueError, match="without any op"):
        MixedEdge(4, 1, ("skip_connect", "sep_conv_3x3"))(x, weights[:2], torch.zeros(2, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparse_equals_dense_with_zero_weights_off_the_active_set(dtype: torch.dtype) -> None:
    """Outputs and gradients (network weights and arch weights) of the sparse forward equal the dense
    forward whose inactive weights are exactly 0."""
    net, weights, active = darts_net(seed=3)
    net.train()
    x = torch.randn(2, 3, 16, 16)
    dense = {t: dense_weights(w, active[t]) for t, w in weights.items()}

    def run(**kwargs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        net.zero_grad()
        for w in weights.values():
            w.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = net(x, **kwargs)
        out.float().square().sum().backward()
        params = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in net.parameters()]
        grads = [w.grad.clone() if w.grad is not None else torch.zeros_like(w) for w in weights.values()]
        return out.detach().float(), params, grads

    sparse_out, sparse_params, sparse_grads = run(weights=weights, active=active)
    dense_out, dense_params, dense_grads = run(weights=dense)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 5e-2, "atol": 5e-2}
    torch.testing.assert_close(sparse_out, dense_out, **tol)
    assert sparse_out.abs().sum() > 0
    for a, b in zip(sparse_params, dense_params, strict=True):
        torch.testing.assert_close(a, b, **tol)
    # arch-weight gradients agree on mixture edges (lone ops carry weight 1 and no gradient by design)
    for (t, mask), a, b in zip(active.items(), sparse_grads, dense_grads, strict=True):
        mixture = (mask.sum(1) > 1)[:, None] & mask
        torch.testing.assert_close(a[mixture], b.to(a.dtype)[mixture], **tol)
        assert bool((a[~mask] == 0).all()), t


def test_the_fast_executor_batches_only_the_active_ops() -> None:
    """The fast executor runs the sparse step itself (no fallback to the reference loop): the same output,
    and its schedule holds exactly the active (edge, op) pairs that compute, each op type once per state."""
    from fastnas.nn.fast_executor import cell_plan

    net, weights, active = darts_net(seed=5)
    x = torch.randn(2, 3, 16, 16)
    expected = net(x, weights, active)
    net.set_executor("fast")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = net(x, weights, active)
    torch.testing.assert_close(got, expected)
    assert not [w for w in caught if "reference loop" in str(w.message)]
    for cell, cell_type in zip(net.cells, net.cell_types, strict=True):
        plan = cell_plan(cell, active[cell_type])
        assert not isinstance(plan, str)
        ran = set()
        for source in plan.sources:
            for group in source.groups:
                for slot, k in group.members:
                    edge = source.edges[slot].edge
                    ran.add((edge, cell.edges[edge].columns[k]))
            ran |= {
                (p.edge, cell.edges[p.edge].columns[p.identity])
                for p in source.edges
                if p.identity is not None
            }
        mask = active[cell_type]
        want = {
            (e, column)
            for e, edge in enumerate(cell.edges)
            for column in edge.columns
            if mask[e, column] and column != NONE
        }
        assert ran == want, cell_type


def test_the_nb201_supernet_runs_under_an_active_set() -> None:
    space = NB201Space()
    torch.manual_seed(0)
    net = NB201Supernet(space, C=4, N=1, num_classes=10)
    shape = (space.num_edges, space.num_ops)
    weights = {"cell": torch.rand(shape).softmax(-1)}
    active = {"cell": random_active(1, shape, none_column=space.op_index("none"))}
    calls = count_calls(net)
    x = torch.randn(2, 3, 16, 16)
    sparse = net(x, weights, active)
    assert sum(calls.values()) < sum(1 for m in net.modules() if isinstance(m, MixedEdge)) * (
        space.num_ops - 1
    )
    torch.testing.assert_close(sparse, net(x, {"cell": dense_weights(weights["cell"], active["cell"])}))
