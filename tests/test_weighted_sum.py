"""fastnas.ops.weighted_sum: the C++/CUDA operator against the PyTorch reference.

The reference is itself checked against an independent float64 computation. Tests of the operator
skip when the extension is not built (``extension_available()`` false); CUDA variants run only where
the CUDA kernels are compiled and a GPU is present.
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastnas import backend
from fastnas._ext import cuda_compiled, extension_available, load_error
from fastnas.backend import force_reference, reference_forced
from fastnas.kernels._common import acc_dtype
from fastnas.ops.weighted_sum import weighted_sum, weighted_sum_reference

needs_ext = pytest.mark.skipif(not extension_available(), reason=f"fastnas._C is not built: {load_error()}")

DEVICES = ["cpu"]
if extension_available() and cuda_compiled() and torch.cuda.is_available():
    DEVICES.append("cuda")

# Output tolerance against the float64 truth: one rounding of an fp32 accumulation to the dtype.
TOL = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
    torch.float16: {"rtol": 2e-3, "atol": 2e-3},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1.6e-2},
}
DTYPES = list(TOL)


def make_inputs(
    k: int,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    wdtype: torch.dtype | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for _ in range(k)]
    w = torch.randn(k, generator=gen).to(device=device, dtype=wdtype or dtype)
    return xs, w


def truth(xs: list[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """sum_k w_k x_k in float64 on the CPU (independent of the code under test)."""
    out = torch.zeros(xs[0].shape, dtype=torch.float64)
    for k, x in enumerate(xs):
        out += float(w[k]) * x.detach().double().cpu()
    return out


def grads(fn, xs: list[torch.Tensor], w: torch.Tensor, grad_out: torch.Tensor):
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    w = w.detach().clone().requires_grad_(True)
    out = fn(xs, w)
    out.backward(grad_out)
    return out.detach(), [x.grad for x in xs], w.grad


def cpp_op(xs: list[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    return torch.ops.fastnas.weighted_sum(xs, w)


class OpCounter(TorchDispatchMode):
    """Records the names of the operators that reach the dispatcher's Python key."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))

    def fastnas_calls(self) -> int:
        return sum(name.startswith("fastnas.") for name in self.names)


# ----------------------------------------------------------------------------- reference (always run)


@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_matches_float64_truth(k: int, dtype: torch.dtype) -> None:
    xs, w = make_inputs(k, (4, 5, 3), dtype, wdtype=torch.float32, seed=k)
    out = weighted_sum_reference(xs, w)
    assert out.dtype == dtype and out.shape == xs[0].shape
    torch.testing.assert_close(out.double(), truth(xs, w), **TOL[dtype])


def test_reference_gradients_follow_dtype_rules() -> None:
    xs, w = make_inputs(3, (2, 6), torch.bfloat16, wdtype=torch.float32, seed=1)
    g = torch.randn(2, 6).to(torch.bfloat16)
    out, gx, gw = grads(weighted_sum_reference, xs, w, g)
    assert out.dtype == torch.bfloat16 and gw.dtype == torch.float32
    assert all(t.dtype == torch.bfloat16 for t in gx)
    for k in range(3):
        torch.testing.assert_close(gx[k].double(), float(w[k]) * g.double(), **TOL[torch.bfloat16])
        expected = (g.double() * xs[k].double()).sum()
        torch.testing.assert_close(gw[k].double(), expected, rtol=1e-5, atol=1e-5)


def test_acc_dtype() -> None:
    assert acc_dtype(torch.float64) == torch.float64
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert acc_dtype(dtype) == torch.float32


@pytest.mark.parametrize("fn", [weighted_sum, weighted_sum_reference])
def test_clear_errors(fn) -> None:
    xs, w = make_inputs(3, (2, 3))
    with pytest.raises(ValueError, match="3 inputs but 2 weights"):
        fn(xs, w[:2])
    with pytest.raises(ValueError, match="must be 1-D"):
        fn(xs, w.reshape(3, 1))
    with pytest.raises(ValueError, match=r"inputs\[1\] has shape \(3, 2\)"):
        fn([xs[0], xs[1].t(), xs[2]], w)
    with pytest.raises(ValueError, match="empty"):
        fn([], w[:0])
    with pytest.raises(TypeError, match=r"inputs\[2\] has dtype torch.float64"):
        fn([xs[0], xs[1], xs[2].double()], w)
    with pytest.raises(TypeError, match="int64"):
        fn([x.long() for x in xs], w)
    with pytest.raises(TypeError, match="sequence of tensors"):
        fn(torch.stack(xs), w)
    with pytest.raises(ValueError, match="move the weights"):
        fn(xs, w.to("meta"))


# ----------------------------------------------------------------------------- the reference switch


def test_force_reference_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    assert not reference_forced()
    with force_reference():
        assert reference_forced()
        with force_reference(False):
            assert not reference_forced()
        assert reference_forced()
    assert not reference_forced()
    monkeypatch.setenv(backend.ENV_VAR, "1")
    assert reference_forced()
    with force_reference(False):
        assert not reference_forced()
    monkeypatch.setenv(backend.ENV_VAR, "0")
    assert not reference_forced()


def test_force_reference_is_local_to_the_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    seen: list[bool] = []
    with force_reference():
        thread = threading.Thread(target=lambda: seen.append(reference_forced()))
        thread.start()
        thread.join()
        assert reference_forced()
    assert seen == [False]


def test_forced_reference_bypasses_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    xs, w = make_inputs(4, (3, 5), seed=2)
    with OpCounter() as forced, force_reference():
        out_forced = weighted_sum(xs, w)
    monkeypatch.setenv(backend.ENV_VAR, "1")
    with OpCounter() as by_env:
        out_env = weighted_sum(xs, w)
    assert forced.fastnas_calls() == 0 and by_env.fastnas_calls() == 0
    assert forced.names, "the reference path should run aten operators"
    torch.testing.assert_close(out_forced, out_env)
    torch.testing.assert_close(out_forced.double(), truth(xs, w), **TOL[torch.float32])


@needs_ext
def test_operator_is_used_when_not_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    xs, w = make_inputs(4, (3, 5), seed=3)
    with OpCounter() as counter:
        weighted_sum(xs, w)
    assert counter.names == ["fastnas.weighted_sum.default"]


# ----------------------------------------------------------------------------- the C++/CUDA operator


@needs_ext
def test_module_reports_cuda_build() -> None:
    import fastnas._C

    assert isinstance(fastnas._C.with_cuda(), bool)
    assert fastnas._C.with_cuda() == cuda_compiled()


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", range(1, 10))
def test_forward_backward_match_reference(device: str, dtype: torch.dtype, k: int) -> None:
    shape = [(7,), (3, 5, 7), (2, 3, 5, 5), (1, 1, 33)][k % 4]
    xs, w = make_inputs(k, shape, dtype, device=device, seed=10 + k)
    g = torch.randn(shape).to(device=device, dtype=dtype)
    out, gx, gw = grads(cpp_op, xs, w, g)
    ref_out, ref_gx, ref_gw = grads(weighted_sum_reference, xs, w, g)
    assert out.dtype == dtype and out.shape == xs[0].shape and out.device == xs[0].device
    torch.testing.assert_close(out.double().cpu(), truth(xs, w), **TOL[dtype])
    torch.testing.assert_close(out, ref_out, **TOL[dtype])
    for k_ in range(k):
        assert gx[k_].dtype == dtype
        torch.testing.assert_close(gx[k_], ref_gx[k_], **TOL[dtype])
    assert gw.dtype == dtype
    # grad_weights is a sum over all elements, accumulated in fp32: compare to the float64 truth.
    expected_gw = torch.stack([(g.double() * x.double()).sum() for x in xs]).cpu()
    scale = max(1.0, float(g.double().abs().sum()))
    torch.testing.assert_close(gw.double().cpu(), expected_gw, rtol=TOL[dtype]["rtol"], atol=1e-5 * scale)
    torch.testing.assert_close(gw.double(), ref_gw.double(), rtol=TOL[dtype]["rtol"], atol=1e-5 * scale)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device: str) -> None:
    xs, w = make_inputs(3, (2, 3, 4), torch.float64, device=device, seed=4)
    args = [x.requires_grad_(True) for x in xs] + [w.requires_grad_(True)]

    def fn(*a: torch.Tensor) -> torch.Tensor:
        return torch.ops.fastnas.weighted_sum(list(a[:-1]), a[-1])

    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device: str) -> None:
    gen = torch.Generator().manual_seed(5)
    base = [torch.randn(6, 8, 5, generator=gen).to(device) for _ in range(3)]
    xs = [base[0].transpose(0, 2), base[1][::2].repeat(2, 1, 1).transpose(0, 2), base[2].permute(2, 1, 0)]
    assert not any(x.is_contiguous() for x in xs)
    w = torch.randn(3, generator=gen).to(device)
    g = torch.randn(5, 8, 6, generator=gen).to(device).transpose(0, 1).contiguous().transpose(0, 1)
    out, gx, gw = grads(cpp_op, xs, w, g)
    ref_out, ref_gx, ref_gw = grads(weighted_sum_reference, xs, w, g)
    torch.testing.assert_close(out.double().cpu(), truth(xs, w), **TOL[torch.float32])
    torch.testing.assert_close(out, ref_out)
    for a, b in zip(gx, ref_gx, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-5, atol=1e-4)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_is_kept(device: str) -> None:
    xs, w = make_inputs(4, (2, 6, 5, 3), device=device, seed=6)
    xs_cl = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    out = cpp_op(xs_cl, w)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.double().cpu(), truth(xs, w), **TOL[torch.float32])
    mixed = cpp_op([xs[0], *xs_cl[1:]], w)  # one plain-contiguous input: the result is contiguous
    assert mixed.is_contiguous()
    torch.testing.assert_close(mixed, out)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("dtype", "wdtype"),
    [
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32),
        (torch.float32, torch.float64),
        (torch.float64, torch.float32),
        (torch.float32, torch.bfloat16),
    ],
)
def test_weights_of_another_dtype(device: str, dtype: torch.dtype, wdtype: torch.dtype) -> None:
    xs, w = make_inputs(5, (4, 9), dtype, wdtype=wdtype, device=device, seed=7)
    g = torch.randn(4, 9).to(device=device, dtype=dtype)
    out, gx, gw = grads(cpp_op, xs, w, g)
    ref_out, ref_gx, ref_gw = grads(weighted_sum_reference, xs, w, g)
    assert out.dtype == dtype and gw.dtype == wdtype and all(t.dtype == dtype for t in gx)
    torch.testing.assert_close(out.double().cpu(), truth(xs, w), **TOL[dtype])
    torch.testing.assert_close(out, ref_out, **TOL[dtype])
    for a, b in zip(gx, ref_gx, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])
    tol = TOL[wdtype] if wdtype in (torch.float16, torch.bfloat16) else {"rtol": 1e-5, "atol": 1e-4}
    torch.testing.assert_close(gw, ref_gw, **tol)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_autocast_bf16_inputs_fp32_weights(device: str) -> None:
    xs, w = make_inputs(4, (3, 8), device=device, seed=8)
    w.requires_grad_(True)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        xs_bf16 = [torch.nn.functional.linear(x, torch.eye(8, device=device)) for x in xs]
        assert xs_bf16[0].dtype == torch.bfloat16
        out = weighted_sum(xs_bf16, w)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert w.grad is not None and w.grad.dtype == torch.float32
    expected = torch.stack([x.double().sum() for x in xs_bf16]).cpu()
    torch.testing.assert_close(w.grad.double().cpu(), expected, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(out, weighted_sum_reference(xs_bf16, w), **TOL[torch.bfloat16])


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_many_inputs_and_large_tensors(device: str) -> None:
    # 40 inputs (> the 32 pointers of one CUDA launch) and 70,000 elements (several CPU chunks).
    xs, w = make_inputs(40, (70_000,), device=device, seed=9)
    g = torch.randn(70_000).to(device)
    out, gx, gw = grads(cpp_op, xs, w, g)
    torch.testing.assert_close(out.double().cpu(), truth(xs, w), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gx[39], w[39] * g)
    expected_gw = torch.stack([(g.double() * x.double()).sum() for x in xs]).cpu()
    torch.testing.assert_close(gw.double().cpu(), expected_gw, rtol=1e-5, atol=1e-2)


@needs_ext
def test_cpu_grad_weights_do_not_depend_on_thread_count() -> None:
    xs, w = make_inputs(3, (100_000,), seed=11)
    g = torch.randn(100_000)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.fastnas.weighted_sum_backward(g, xs, w)
        torch.set_num_threads(max(2, before))
        many = torch.ops.fastnas.weighted_sum_backward(g, xs, w)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[1], many[1])


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_scalar_tensors(device: str) -> None:
    xs, w = make_inputs(3, (0, 4), device=device)
    assert cpp_op(xs, w).shape == (0, 4)
    gi, gw = torch.ops.fastnas.weighted_sum_backward(torch.zeros(0, 4, device=device), xs, w)
    assert [t.shape for t in gi] == [(0, 4)] * 3 and torch.equal(gw.cpu(), torch.zeros(3))
    xs, w = make_inputs(2, (), device=device, seed=12)
    torch.testing.assert_close(cpp_op(xs, w).double().cpu(), truth(xs, w), **TOL[torch.float32])


@needs_ext
def test_operator_errors() -> None:
    xs, w = make_inputs(3, (2, 3))
    with pytest.raises(RuntimeError, match="3 inputs but 2 weights"):
        cpp_op(xs, w[:2])
    with pytest.raises(RuntimeError, match="must be 1-D"):
        cpp_op(xs, w[None])
    with pytest.raises(RuntimeError, match="all inputs must have the same shape"):
        cpp_op([xs[0], xs[1].t(), xs[2]], w)
    with pytest.raises(RuntimeError, match="empty"):
        cpp_op([], w[:0])
    with pytest.raises(RuntimeError, match="cast all inputs to one dtype"):
        cpp_op([xs[0], xs[1].half(), xs[2]], w)
    with pytest.raises(RuntimeError, match="grad_out has shape"):
        torch.ops.fastnas.weighted_sum_backward(torch.zeros(3), xs, w)


@needs_ext
def test_opcheck() -> None:
    xs, w = make_inputs(4, (3, 5, 2), seed=13)
    xs = [x.requires_grad_(True) for x in xs]
    w.requires_grad_(True)
    torch.library.opcheck(torch.ops.fastnas.weighted_sum.default, (xs, w))
    g = torch.randn(3, 5, 2)
    torch.library.opcheck(torch.ops.fastnas.weighted_sum_backward.default, (g, xs, w))
    xs_cl, w_bf = make_inputs(2, (2, 4, 3, 3), torch.bfloat16, wdtype=torch.float32, seed=14)
    xs_cl = [x.contiguous(memory_format=torch.channels_last) for x in xs_cl]
    torch.library.opcheck(torch.ops.fastnas.weighted_sum.default, (xs_cl, w_bf))


@needs_ext
def test_traceable_by_torch_compile() -> None:
    xs, w = make_inputs(3, (4, 6), seed=15)
    w.requires_grad_(True)

    def step(inputs: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        return weighted_sum(inputs, weights.softmax(0)).square().sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    loss = compiled(xs, w)
    (grad_w,) = torch.autograd.grad(loss, w)
    ref_w = w.detach().clone().requires_grad_(True)
    ref_loss = weighted_sum_reference(xs, ref_w.softmax(0)).square().sum()
    (ref_grad_w,) = torch.autograd.grad(ref_loss, ref_w)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad_w, ref_grad_w)
