"""Helpers shared by the tests of the Triton kernels in ``fastnas.kernels`` (one ``tests/test_<module>.py``
per kernel module).

Import it as ``import kernel_testing`` or ``from kernel_testing import ...``: pytest puts the folder of the
test files on ``sys.path``. conftest.py sets ``TRITON_INTERPRET=1`` on a machine without a GPU before any
kernel module is imported, so the kernels run in the Triton interpreter on CPU tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import Tensor

from fastnas.backend import force_reference
from fastnas.kernels._common import HAS_TRITON, TRITON_IMPORT_ERROR, triton_supports

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# --------------------------------------------------------------------------------------------------
# Skip condition
# --------------------------------------------------------------------------------------------------

if not HAS_TRITON:
    SKIP_REASON = f"triton is not importable ({TRITON_IMPORT_ERROR}); only the reference path is tested"
else:
    SKIP_REASON = "no GPU and TRITON_INTERPRET is not 1: the Triton kernels cannot run on CPU tensors"
KERNELS_RUN = triton_supports(torch.device(DEVICE), torch.float32)
needs_kernels = pytest.mark.skipif(not KERNELS_RUN, reason=SKIP_REASON)
"""Marks a test that runs the Triton kernels (on a GPU, or in the interpreter on the CPU)."""

# --------------------------------------------------------------------------------------------------
# Tolerances (keyword arguments of torch.testing.assert_close)
# --------------------------------------------------------------------------------------------------

F32 = {"rtol": 1e-5, "atol": 1e-5}
"""fp32 kernel against the fp32 reference: the same math, sums in another order."""
F32_SUMS = {"rtol": 1e-4, "atol": 1e-4}
"""fp32 results of long reductions in another order (weight gradients, convolution taps)."""
BF16 = {"rtol": 2e-2, "atol": 2e-2}
"""bf16 kernel against the reference: both compute in fp32 from the same bf16 inputs and round once; a few
ulp (2^-8 relative) cover the summation order and the interpreter's truncating fp32 -> bf16 cast."""
BF16_VS_FLOAT64 = {"rtol": 3e-2, "atol": 3e-2}
"""bf16 kernel output against the float64 formula: a few bf16 ulp."""
F64 = {"rtol": 1e-12, "atol": 1e-12}
"""float64 PyTorch math of an operator against autograd through the float64 reference."""

# --------------------------------------------------------------------------------------------------
# Comparisons
# --------------------------------------------------------------------------------------------------


def close(a: Tensor, b: Tensor, **tol: Any) -> None:
    """``torch.testing.assert_close`` of ``a`` and ``b`` as float32 CPU tensors (so a bf16 kernel result
    compares with an fp32 or float64 reference)."""
    torch.testing.assert_close(a.float().cpu(), b.float().cpu(), **tol)


def close_all(
    got: Sequence[Tensor | None],
    want: Sequence[Tensor | None],
    names: Sequence[str] | None = None,
    *,
    exact: bool = False,
    **tol: Any,
) -> None:
    """:func:`close` of every pair of two sequences of equal length (outputs, gradients); where ``want``
    holds ``None``, ``got`` must hold ``None`` too. ``names`` label the failures. ``exact``: compare in the
    tensors' own dtype and device (float64 checks, where a cast to float32 would hide the error)."""
    got, want = list(got), list(want)
    assert len(got) == len(want), f"{len(got)} results, {len(want)} expected"
    if names is not None:
        assert len(names) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        label = {} if names is None else {"msg": names[i]}
        if b is None:
            assert a is None, names[i] if names is not None else i
            continue
        assert a is not None, names[i] if names is not None else i
        if exact:
            torch.testing.assert_close(a, b, **tol, **label)
        else:
            close(a, b, **tol, **label)


def close_scaled(a: Tensor, b: Tensor, rel: float) -> None:
    """``|a - b| <= rel * max|b|`` (plus ``rel`` elementwise): bf16 results that differ by an ulp of their
    scale, where elements near 0 would fail a purely relative check."""
    b = b.float().cpu()
    torch.testing.assert_close(a.float().cpu(), b, rtol=rel, atol=rel * float(b.abs().max()))


# --------------------------------------------------------------------------------------------------
# Inputs and layouts
# --------------------------------------------------------------------------------------------------


def fresh_leaves(*tensors: Tensor | None, requires_grad: bool = True) -> list[Tensor | None]:
    """Detached copies of ``tensors`` as new autograd leaves (``None`` stays ``None``), so every run of
    a forward and backward starts from the same values with empty ``.grad``."""
    return [None if t is None else t.detach().clone().requires_grad_(requires_grad) for t in tensors]


def channels_last(t: Tensor) -> Tensor:
    """The same values with C innermost in every [N, C, H, W] slice (4-D, or 5-D with edges first)."""
    if t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def per_edge_strides(shape: Sequence[int], channels_last: bool) -> tuple[int, ...]:
    """Strides of a fresh [E, N, C, H, W] tensor: channels-last per edge (memory [E, N, H, W, C]) or
    contiguous."""
    e, n, c, h, w = shape
    if channels_last:
        return torch.empty(e, n, h, w, c).permute(0, 1, 4, 2, 3).stride()
    return torch.empty(e, n, c, h, w).stride()


def per_edge_is_channels_last(t: Tensor) -> bool:
    """Whether the 5-D ``t`` is stored as [E, N, H, W, C] (channels innermost in each edge's slice)."""
    return t.permute(0, 1, 3, 4, 2).is_contiguous()


# --------------------------------------------------------------------------------------------------
# Launcher instrumentation: NaN-poisoned buffers, launch counts
# --------------------------------------------------------------------------------------------------


def poison_empty(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> None:
    """Make every buffer that ``module``'s launchers allocate with ``module._empty`` start as NaN, so an
    element no kernel writes fails the test. The layout (shape, strides) stays that of ``_empty``."""
    empty = module._empty

    def nan_empty(*args: Any, **kwargs: Any) -> Tensor:
        return empty(*args, **kwargs).fill_(float("nan"))

    monkeypatch.setattr(module, "_empty", nan_empty)


def poisoned_fixture(module: ModuleType):
    """A fixture ``poisoned`` that applies :func:`poison_empty` to ``module`` for one test; assign it in
    the test module: ``poisoned = poisoned_fixture(mbs)``."""

    @pytest.fixture(name="poisoned")
    def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
        poison_empty(monkeypatch, module)

    return poisoned


def count_launches(monkeypatch: pytest.MonkeyPatch, module: ModuleType, *which: str) -> dict[str, int]:
    """Wrap ``module._launch_<name>`` for each name in ``which`` (default ``forward`` and ``backward``)
    so that it still runs and counts its calls; returns the (live) dict of counts."""
    which = which or ("forward", "backward")
    calls = dict.fromkeys(which, 0)

    def counted(name: str) -> Callable[..., Any]:
        launch = getattr(module, f"_launch_{name}")

        def wrapper(*args: Any) -> Any:
            calls[name] += 1
            return launch(*args)

        return wrapper

    for name in which:
        monkeypatch.setattr(module, f"_launch_{name}", counted(name))
    return calls


def record_kernel_launches(monkeypatch: pytest.MonkeyPatch, module: ModuleType, *names: str) -> list[str]:
    """Wrap the Triton kernels ``module.<name>`` so that each ``kernel[grid](...)`` still launches and
    appends the kernel's name to the returned (live) list."""
    launched: list[str] = []

    class Recording:
        def __init__(self, kernel: Any, name: str) -> None:
            self.kernel, self.name = kernel, name

        def __getitem__(self, grid: Any) -> Any:
            launched.append(self.name)
            return self.kernel[grid]

    for name in names:
        monkeypatch.setattr(module, name, Recording(getattr(module, name), name))
    return launched


def check_reference_switch(
    monkeypatch: pytest.MonkeyPatch, module: ModuleType, call: Callable[[], Any], *which: str
) -> tuple[Any, Any]:
    """``call()`` under :func:`fastnas.backend.force_reference` and under ``FASTNAS_FORCE_REFERENCE=1``
    runs none of the counted launchers (``which`` as in :func:`count_launches`); without either it runs
    each of them once. Returns the results of the forced and of the kernel run, for comparison."""
    calls = count_launches(monkeypatch, module, *which)
    none = dict.fromkeys(calls, 0)
    with force_reference():
        forced = call()
    assert calls == none
    monkeypatch.setenv("FASTNAS_FORCE_REFERENCE", "1")
    call()
    assert calls == none
    monkeypatch.delenv("FASTNAS_FORCE_REFERENCE")
    fused = call()
    assert calls == dict.fromkeys(calls, 1)
    return forced, fused


def compile_and_reference(
    step: Callable[..., Any],
    call: Callable[[Callable[..., Any]], Any],
    calls: dict[str, int],
    backend: Any = "aot_eager",
) -> tuple[Callable[..., Any], Any, Any]:
    """``torch.compile(step, fullgraph=True)``; ``call(compiled)`` must run every launcher counted in
    ``calls`` (from :func:`count_launches`). Returns ``(compiled, call(compiled), call(step))``, the last
    under :func:`fastnas.backend.force_reference`."""
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    got = call(compiled)
    assert all(n >= 1 for n in calls.values()), f"the compiled graph did not run the Triton operator: {calls}"
    with force_reference():
        ref = call(step)
    return compiled, got, ref
