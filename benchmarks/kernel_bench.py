"""Per-kernel benchmarks: a fused kernel against its PyTorch reference and ``torch.compile`` of it.

Each case times forward + backward at the DARTS search shapes of issue 5 (batch 64 and 256; C=16 at 32x32,
32 at 16x16, 64 at 8x8) and reports the median time and the achieved bandwidth over the fewest bytes the
op must move (every input read once, every output written once, forward and backward together).
Kernels run on CUDA only; on other devices the rows say so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from benchmarks.step import summarize, time_cuda

Row = dict[str, Any]

#: (channels, spatial size) of the three supernet stages at C=16.
DARTS_STAGE_SHAPES: tuple[tuple[int, int], ...] = ((16, 32), (32, 16), (64, 8))
IMPLEMENTATIONS = ("reference", "compiled", "fused")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def mixed_bn_sum_bytes(k: int, n: int, c: int, hw: int, element: int) -> int:
    """Fewest bytes of one fused forward + backward: forward reads z (K planes) and x, writes out;
    backward reads g, z and x, writes grad z and grad x."""
    plane = n * c * hw * element
    return (k + 1 + 1) * plane + (1 + k + 1 + k + 1) * plane


def _mixed_bn_sum_step(impl: str, z: torch.Tensor, w: torch.Tensor, x: torch.Tensor, ws: torch.Tensor):
    from fastnas.kernels import mixed_bn_sum as mbs

    reference = mbs.mixed_bn_sum_reference
    fn: Callable[..., Any]
    if impl == "reference":
        fn = reference
    elif impl == "compiled":
        fn = torch.compile(reference, fullgraph=True)
    else:
        fn = mbs.mixed_bn_sum
    grad = torch.randn_like(x)

    def step() -> None:
        out, _, _ = fn(z, w, x, ws)
        torch.autograd.grad(out, (z, w, x, ws), grad)

    return step


def mixed_bn_sum_rows(
    batch_sizes: list[int], precisions: list[str], device: torch.device, warmup: int, repeats: int, k: int = 7
) -> Iterator[Row]:
    """One row per (batch, stage shape, dtype, implementation)."""
    for batch in batch_sizes:
        for channels, size in DARTS_STAGE_SHAPES:
            for precision in precisions:
                for impl in IMPLEMENTATIONS:
                    case: Row = {
                        "kernel": "mixed_bn_sum",
                        "impl": impl,
                        "batch_size": batch,
                        "C": channels,
                        "size": size,
                        "precision": precision,
                        "K": k,
                    }
                    if device.type != "cuda":
                        yield {**case, "status": "skipped", "note": "kernel benchmarks need a CUDA device"}
                        continue
                    dtype = DTYPES[precision]
                    gen = torch.Generator(device=device).manual_seed(0)
                    shape = (batch, channels, size, size)
                    z = torch.randn((k, *shape), device=device, dtype=dtype, generator=gen).requires_grad_()
                    x = torch.randn(shape, device=device, dtype=dtype, generator=gen).requires_grad_()
                    w = torch.softmax(torch.randn(k, device=device, generator=gen), 0).requires_grad_()
                    ws = torch.rand((), device=device, generator=gen).requires_grad_()
                    step = _mixed_bn_sum_step(impl, z, w, x, ws)
                    for _ in range(warmup):
                        step()
                    stats = summarize(time_cuda(step, repeats))
                    moved = mixed_bn_sum_bytes(k, batch, channels, size * size, z.element_size())
                    yield {
                        **case,
                        **stats,
                        "gb_per_s": moved / (stats["median_ms"] * 1e-3) / 1e9,
                        "status": "ok",
                        "note": "",
                    }
