"""Per-kernel benchmarks: a fused kernel against its PyTorch reference and ``torch.compile`` of it.

Each case times forward + backward at the DARTS search shapes (batch 64 and 256; C=16 at 32x32,
32 at 16x16, 64 at 8x8) and reports the median time and the achieved bandwidth over the fewest bytes the
op must move (every input read once, every output written once, forward and backward together).
Kernels run on CUDA only; on other devices the rows say so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from benchmarks.report import Row
from benchmarks.step import summarize, time_cuda

#: (channels, spatial size) of the three supernet stages at C=16.
DARTS_STAGE_SHAPES: tuple[tuple[int, int], ...] = ((16, 32), (32, 16), (64, 8))
NEEDS_CUDA = "kernel benchmarks need a CUDA device"
IMPLEMENTATIONS = ("reference", "compiled", "fused")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


Step = Callable[[], None]
CaseBuilder = Callable[[str, int, int, int, torch.dtype, torch.device], tuple[Step, int]]
"""``(impl, batch, channels, size, dtype, device) -> (forward + backward step, fewest bytes moved)``."""

#: Edges leaving one source node batched together in the benchmarks (the DARTS cell's s0 and s1).
EDGES = 4
#: Incoming edges of the last DARTS node (the widest node sum).
TERMS = 5


def _pick(impl: str, reference: Callable[..., Any], fused: Callable[..., Any]) -> Callable[..., Any]:
    if impl == "reference":
        return reference
    if impl == "compiled":
        return torch.compile(reference, fullgraph=True)
    return fused


def _randn(
    shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, gen: torch.Generator
) -> torch.Tensor:
    return torch.randn(shape, device=device, dtype=dtype, generator=gen).requires_grad_()


def mixed_bn_sum_bytes(k: int, n: int, c: int, hw: int, element: int) -> int:
    """Fewest bytes of one fused forward + backward: forward reads z (K planes) and x, writes out;
    backward reads g, z and x, writes grad z and grad x."""
    plane = n * c * hw * element
    return (k + 1 + 1) * plane + (1 + k + 1 + k + 1) * plane


def _mixed_bn_sum_case(
    impl: str, n: int, c: int, size: int, dtype: torch.dtype, device: torch.device, k: int = 7
) -> tuple[Step, int]:
    from fastnas.kernels import mixed_bn_sum as mbs

    gen = torch.Generator(device=device).manual_seed(0)
    shape = (n, c, size, size)
    z, x = _randn((k, *shape), device, dtype, gen), _randn(shape, device, dtype, gen)
    w = torch.softmax(torch.randn(k, device=device, generator=gen), 0).requires_grad_()
    ws = torch.rand((), device=device, generator=gen).requires_grad_()
    fn = _pick(impl, mbs.mixed_bn_sum_reference, mbs.mixed_bn_sum)
    grad = torch.randn_like(x)

    def step() -> None:
        out, _, _ = fn(z, w, x, ws)
        torch.autograd.grad(out, (z, w, x, ws), grad)

    return step, mixed_bn_sum_bytes(k, n, c, size * size, z.element_size())


def _depthwise_case(
    impl: str, n: int, c: int, size: int, dtype: torch.dtype, device: torch.device
) -> tuple[Step, int]:
    """ReLU + 3x3 depthwise conv of the ``EDGES`` edges leaving one node (shared input)."""
    from fastnas.kernels import depthwise_conv as dw

    gen = torch.Generator(device=device).manual_seed(0)
    x = _randn((n, c, size, size), device, dtype, gen)
    weight = _randn((EDGES, c, 3, 3), device, dtype, gen)
    fn = _pick(impl, dw.relu_depthwise_conv_reference, dw.relu_depthwise_conv)
    grad = torch.randn((EDGES, n, c, size, size), device=device, dtype=dtype, generator=gen)

    def step() -> None:
        out = fn(x, weight, 1, 1, 1)
        torch.autograd.grad(out, (x, weight), grad)

    plane = n * c * size * size * x.element_size()
    # forward: read x, write E outputs; backward: read g (E planes) and x, write grad x
    return step, (1 + EDGES) * plane + (EDGES + 1 + 1) * plane


def _pointwise_case(
    impl: str, n: int, c: int, size: int, dtype: torch.dtype, device: torch.device
) -> tuple[Step, int]:
    """1x1 conv with BN sums of ``EDGES`` edges, one input each."""
    from fastnas.kernels import pointwise_conv as pw

    gen = torch.Generator(device=device).manual_seed(0)
    x = _randn((EDGES, n, c, size, size), device, dtype, gen)
    weight = _randn((EDGES, c, c), device, dtype, gen)
    fn = _pick(impl, pw.pointwise_conv_stats_reference, pw.pointwise_conv_stats)
    grad = torch.randn_like(x)

    def step() -> None:
        out, total, total_sq, _ = fn(x, weight)
        ones = torch.ones_like(total)
        torch.autograd.grad((out, total, total_sq), (x, weight), (grad, ones, ones))

    plane = EDGES * n * c * size * size * x.element_size()
    # forward: read x, write out; backward: read g, out and x, write grad x
    return step, 2 * plane + 4 * plane


def _masked_aggregate_case(
    impl: str, n: int, c: int, size: int, dtype: torch.dtype, device: torch.device
) -> tuple[Step, int]:
    """Weighted, masked sum of ``TERMS`` node inputs, about half of them active."""
    from fastnas.kernels import masked_aggregate as ma

    gen = torch.Generator(device=device).manual_seed(0)
    terms = [_randn((n, c, size, size), device, dtype, gen) for _ in range(TERMS)]
    weights = torch.rand(TERMS, device=device, generator=gen).requires_grad_()
    mask = torch.arange(TERMS, device=device) % 2 == 0
    fn = _pick(impl, ma.masked_aggregate_reference, ma.masked_aggregate)
    grad = torch.randn_like(terms[0])

    def step() -> None:
        out = fn(terms, weights, mask)
        torch.autograd.grad(out, [*terms, weights], grad)

    active = (TERMS + 1) // 2
    plane = n * c * size * size * terms[0].element_size()
    # forward: read active terms, write out; backward: read g and active terms, write every grad term
    return step, (active + 1) * plane + (1 + active + TERMS) * plane


def _bn_from_stats_case(
    impl: str, n: int, c: int, size: int, dtype: torch.dtype, device: torch.device
) -> tuple[Step, int]:
    """BN from the shifted sums of ``EDGES`` edges' pointwise-conv outputs (SepConv's middle BN)."""
    from fastnas.kernels import bn_from_stats as bfs

    gen = torch.Generator(device=device).manual_seed(0)
    z = _randn((EDGES, n, c, size, size), device, dtype, gen)
    with torch.no_grad():  # the sums pointwise_conv_stats would give
        shift = z[:, 0, :, 0, 0].float()
        d = z.float() - shift[:, None, :, None, None]
        total, total_sq = d.sum(dim=(1, 3, 4)), (d * d).sum(dim=(1, 3, 4))
    total, total_sq = total.requires_grad_(), total_sq.requires_grad_()
    fn = _pick(impl, bfs.batch_norm_from_stats_reference, bfs.batch_norm_from_stats)
    grad = torch.randn_like(z)

    def step() -> None:
        zhat, _, _ = fn(z, total, total_sq, shift)
        torch.autograd.grad(zhat, (z, total, total_sq), grad)

    plane = EDGES * n * c * size * size * z.element_size()
    # forward: read z, write zhat; backward: read g and z, write grad z
    return step, 2 * plane + 3 * plane


def _edge_group_sum_case(
    impl: str, n: int, c: int, size: int, dtype: torch.dtype, device: torch.device
) -> tuple[Step, int]:
    """All ``EDGES`` edges leaving one state in one op (DARTS normal cell): 4 batched conv-op outputs
    [EDGES, N, C, H, W], 2 shared pooling outputs and the identity, 8 weight columns."""
    from fastnas.kernels import edge_group_sum as egs

    gen = torch.Generator(device=device).manual_seed(0)
    shape = (n, c, size, size)
    convs = [_randn((EDGES, *shape), device, dtype, gen) for _ in range(4)]
    pools = [_randn(shape, device, dtype, gen) for _ in range(2)]
    x = _randn(shape, device, dtype, gen)
    terms = [*convs, *pools, x]
    every = list(range(EDGES))
    term_edges = [every] * len(terms)
    term_cols = [[k] * EDGES for k in (4, 5, 6, 7, 1, 2, 3)]
    normalize = [True] * 6 + [False]
    weights = torch.softmax(torch.randn(EDGES, 8, device=device, generator=gen), 1).requires_grad_()
    fn = _pick(impl, egs.edge_group_sum_reference, egs.edge_group_sum)
    grads = [torch.randn(shape, device=device, dtype=dtype, generator=gen) for _ in range(EDGES)]

    def step() -> None:
        outs, _, _ = fn(terms, term_edges, term_cols, normalize, weights)
        torch.autograd.grad(outs, [*terms, weights], grads)

    plane = n * c * size * size * x.element_size()
    rows = 4 * EDGES + 2 + 1  # term rows
    # forward: read every row twice (statistics, outputs), write E outputs; backward: read g (E planes)
    # and every row (reduction), then g and every row again, write every row's gradient
    return step, (2 * rows + EDGES) * plane + (EDGES + rows + EDGES + rows + rows) * plane


KERNEL_CASES: dict[str, CaseBuilder] = {
    "mixed_bn_sum": _mixed_bn_sum_case,
    "relu_depthwise_conv": _depthwise_case,
    "pointwise_conv_stats": _pointwise_case,
    "masked_aggregate": _masked_aggregate_case,
    "batch_norm_from_stats": _bn_from_stats_case,
    "edge_group_sum": _edge_group_sum_case,
}


def kernel_rows(
    kernels: list[str],
    batch_sizes: list[int],
    precisions: list[str],
    device: torch.device,
    warmup: int,
    repeats: int,
) -> Iterator[Row]:
    """One row per (kernel, batch, stage shape, dtype, implementation): median forward + backward time
    and the achieved bandwidth over the fewest bytes the op must move."""
    for kernel in kernels:
        build = KERNEL_CASES[kernel]
        for batch in batch_sizes:
            for channels, size in DARTS_STAGE_SHAPES:
                for precision in precisions:
                    for impl in IMPLEMENTATIONS:
                        case: Row = {
                            "kernel": kernel,
                            "impl": impl,
                            "batch_size": batch,
                            "C": channels,
                            "size": size,
                            "precision": precision,
                        }
                        if device.type != "cuda":
                            yield {**case, "status": "skipped", "note": NEEDS_CUDA}
                            continue
                        try:
                            step, moved = build(impl, batch, channels, size, DTYPES[precision], device)
                            for _ in range(warmup):
                                step()
                            stats = summarize(time_cuda(step, repeats))
                        except Exception as exc:  # one failing case must not hide the others
                            yield {**case, "status": "error", "note": f"{type(exc).__name__}: {exc}"[:120]}
                            continue
                        yield {
                            **case,
                            **stats,
                            "gb_per_s": moved / (stats["median_ms"] * 1e-3) / 1e9,
                            "status": "ok",
                            "note": "",
                        }
