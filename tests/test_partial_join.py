"""fastnas.nn.partial_join: PC-DARTS' bypass and channel shuffle written in place for all the edges
leaving one state, against :func:`fastnas.nn.mixed.join_partial` edge by edge (values and gradients,
float64 exactly)."""

from __future__ import annotations

import pytest
import torch

from fastnas.nn.mixed import PartialChannels, join_partial
from fastnas.nn.partial_join import shuffled_joins


@pytest.mark.parametrize("k,stride,bypass", [(4, 1, "max"), (2, 2, "max"), (4, 2, "avg")])
def test_joins_equal_join_partial_edge_by_edge(k: int, stride: int, bypass: str) -> None:
    gen = torch.Generator().manual_seed(k + stride)
    edges, n, c, h = 3, 2, 8, 6
    x = torch.randn(n, c, h, h, generator=gen, dtype=torch.float64)
    size = h // stride
    mixed = [torch.randn(n, c // k, size, size, generator=gen, dtype=torch.float64) for _ in range(edges)]
    scales = torch.rand(edges, generator=gen, dtype=torch.float64) + 0.5
    grads = [torch.randn(n, c, size, size, generator=gen, dtype=torch.float64) for _ in range(edges)]

    def run(fast: bool):
        xs = x.clone().requires_grad_(True)
        ms = [m.clone().requires_grad_(True) for m in mixed]
        ss = scales.clone().requires_grad_(True)
        tail = xs[:, c // k :]  # the bypassed channels: a channel slice, as the executor passes it
        if fast:
            outs = shuffled_joins(ms, tail, k, stride, bypass, ss)
        else:
            partial = PartialChannels(k, bypass)
            outs = [join_partial(m, tail, partial, stride, ss[e]) for e, m in enumerate(ms)]
        sum((o * g).sum() for o, g in zip(outs, grads, strict=True)).backward()
        return [o.detach() for o in outs], xs.grad, [m.grad for m in ms], ss.grad

    got, want = run(True), run(False)
    for a, b in zip(got[0], want[0], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # data movement and one multiply: exact
    torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-12)
    for a, b in zip(got[2], want[2], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(got[3], want[3], rtol=1e-12, atol=1e-12)


def test_an_edge_without_gradient_gets_none_and_others_still_agree() -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 8, 4, 4, generator=gen).requires_grad_(True)
    mixed = [torch.randn(2, 2, 4, 4, generator=gen).requires_grad_(True) for _ in range(2)]
    scales = torch.tensor([0.7, 1.3], requires_grad=True)
    outs = shuffled_joins(mixed, x[:, 2:], 4, 1, "max", scales)
    (outs[1] * 2.0).sum().backward()
    assert mixed[0].grad is None
    assert scales.grad is not None and scales.grad[0] == 0 and scales.grad[1] != 0
    want = torch.full_like(mixed[1], 2.0)
    torch.testing.assert_close(mixed[1].grad, want)
