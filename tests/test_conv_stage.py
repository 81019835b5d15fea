"""fastnas.nn.conv_stage: ReLU -> depthwise -> pointwise with the BN sums, keeping only its input and
output for backward, against the composition of the two reference functions (values and every gradient),
and what it recomputes in a backward pass that wants only some gradients."""

from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICE, close_scaled, needs_kernels, record_kernel_launches

from fastnas.kernels import depthwise_conv as dc
from fastnas.kernels.depthwise_conv import relu_depthwise_conv_reference
from fastnas.kernels.pointwise_conv import pointwise_conv_stats_reference
from fastnas.nn import conv_stage as cs


def _inputs(shared: bool, dtype: torch.dtype = torch.float32, c_out: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    rows, c = 3, 16
    x = torch.randn((2, c, 5, 6) if shared else (rows, 2, c, 5, 6), generator=gen)
    dw = torch.randn(rows, c, 3, 3, generator=gen)
    pw = torch.randn(rows, c_out, c, generator=gen) / 4
    grads = (torch.randn(rows, 2, c_out, 5, 6, generator=gen), torch.randn(rows, c_out, generator=gen))
    cast = [t.to(DEVICE, dtype) for t in (x, dw, pw)]
    return cast, (grads[0].to(DEVICE, dtype), grads[1].to(DEVICE))


def _run(fn, leaves, grads, inputs=None):
    """Values and the gradients of ``fn`` (each leaf enters through an op, as in the executor)."""
    leaves = [t.clone().requires_grad_(True) for t in leaves]
    z, total, total_sq, _ = fn(*(t * 1.0 for t in leaves))
    loss = (z.float() * grads[0].float()).sum() + (total * grads[1]).sum() + (total_sq * grads[1] * 0.1).sum()
    loss.backward(inputs=None if inputs is None else [leaves[i] for i in inputs])
    return [z.detach(), total.detach(), total_sq.detach(), *(t.grad for t in leaves)]


def _reference(x, dw, pw):
    return pointwise_conv_stats_reference(relu_depthwise_conv_reference(x, dw, 1, 1, 1), pw)


@needs_kernels
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("c_out", [16, 8])
def test_stage_matches_the_two_reference_functions_fp32(shared: bool, c_out: int) -> None:
    leaves, grads = _inputs(shared, c_out=c_out)
    got = _run(lambda x, dw, pw: cs.conv_stage(x, dw, pw, 1, 1, 1), leaves, grads)
    want = _run(_reference, leaves, grads)
    # fp32, sums in another order: relative to the largest entry of each result
    for a, b in zip(got, want, strict=True):
        close_scaled(a, b, 1e-5)


@needs_kernels
def test_stage_matches_the_reference_bf16() -> None:
    """bf16 inputs against the reference in fp32 on the same values (one bf16 rounding of h and z)."""
    leaves, grads = _inputs(True, dtype=torch.bfloat16, seed=2)
    got = _run(lambda x, dw, pw: cs.conv_stage(x, dw, pw, 1, 1, 1), leaves, grads)
    want = _run(_reference, [t.float() for t in leaves], (grads[0].float(), grads[1]))
    for a, b in zip(got, want, strict=True):
        close_scaled(a.float(), b, 3e-2)


@needs_kernels
def test_backward_recomputes_the_depthwise_output_only_for_the_pointwise_weight(monkeypatch) -> None:
    """Only ``x`` and ``z`` are kept: a pass wanting the pointwise weight's gradient runs the depthwise
    forward once more; a pass wanting the input only (DARTS' architecture step) does not, nor the weight
    kernels; the gradients asked for equal the full backward's."""
    leaves, grads = _inputs(True, seed=3)
    full = _run(lambda x, dw, pw: cs.conv_stage(x, dw, pw, 1, 1, 1), leaves, grads)
    forwards: list[int] = []
    launch = dc._launch_forward
    monkeypatch.setattr(dc, "_launch_forward", lambda *a: forwards.append(1) or launch(*a))
    weight_kernels = record_kernel_launches(monkeypatch, dc, "_backward_weight_kernel")
    for wanted, recomputes, dw_kernel in (([0], 0, 0), ([2], 1, 0), ([1], 0, 1)):
        forwards.clear()
        weight_kernels.clear()
        got = _run(lambda x, dw, pw: cs.conv_stage(x, dw, pw, 1, 1, 1), leaves, grads, inputs=wanted)
        assert len(forwards) == 1 + recomputes, wanted
        assert len(weight_kernels) == dw_kernel, wanted
        for i in range(3):
            if i in wanted:
                torch.testing.assert_close(got[3 + i], full[3 + i], rtol=0, atol=0)
            else:
                assert got[3 + i] is None


def test_without_kernels_it_is_the_plain_composition(monkeypatch) -> None:
    """Where the kernels do not run (here forced off), autograd through the two functions."""
    monkeypatch.setattr(cs._common, "use_kernels", lambda t: False)
    leaves, grads = _inputs(False, dtype=torch.float64, seed=4)
    got = _run(lambda x, dw, pw: cs.conv_stage(x, dw, pw, 1, 1, 1), leaves, grads)
    want = _run(_reference, leaves, grads)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
