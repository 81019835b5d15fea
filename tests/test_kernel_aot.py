"""Ahead-of-time compilation of the Triton kernels for sm_80 and sm_90 without a GPU.

The configurations are traced from the fast executor's search step (DARTS supernet, C=16, 8 cells,
32x32, batch 64, fp32 and bf16 autocast) and from every case of ``benchmarks/kernel_bench.py``
(``benchmarks.kernel_resources.scenarios(scope="test")``). Compiling all of them (a few hundred
compilations; the depthwise kernels take seconds each) does not fit a test, so this file compiles a
representative subset (:func:`benchmarks.kernel_resources.representatives`: for every kernel, pointer
dtypes and constexpr flag combination, the launch configuration with the largest tiles, with all its JIT
specialisations) for both targets and fails when one does not compile or uses local memory / a stack
frame (register spills). The full set, with every benchmark scenario, is the ``kernel_resources``
benchmark section.

The compile tests skip only when ``cuobjdump`` (shipped with Triton) is missing; the CUDA C++ test when
``nvcc`` is.
"""

from __future__ import annotations

import importlib
import sys
from argparse import Namespace

import pytest
import torch
from conftest import REPO_ROOT

from benchmarks import aot

if str(REPO_ROOT) not in sys.path:  # `benchmarks` is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import kernel_resources as kr

HAS_CUOBJDUMP = aot.cuobjdump_path() is not None
needs_cuobjdump = pytest.mark.skipif(
    not HAS_CUOBJDUMP, reason="cuobjdump not found (triton/backends/nvidia/bin or PATH): cannot read cubins"
)
ARCHS = aot.DEFAULT_ARCHS


@pytest.fixture(scope="module")
def plan() -> kr.LaunchPlan:
    return kr.launch_plan(kr.scenarios(Namespace(), scope="test"))


@pytest.fixture(scope="module")
def compiled(plan: kr.LaunchPlan) -> list[aot.CompileResult]:
    if not HAS_CUOBJDUMP:
        pytest.skip("cuobjdump not found (triton/backends/nvidia/bin or PATH): cannot read cubins")
    return aot.compile_configs(kr.representatives(plan.configs, every_specialization=True), ARCHS)


def _describe(r: aot.CompileResult) -> str:
    config = r.config
    head = f"{config.name} [{config.label()}] sm_{r.arch}"
    if not r.ok:
        return f"{head}: does not compile: {r.error}"
    return f"{head}: {r.registers} registers, local {r.local} B, stack {r.stack} B"


def test_every_kernel_is_traced(plan: kr.LaunchPlan) -> None:
    """Every launched kernel of every kernel module shows up in the traced scenarios, in fp32 and bf16,
    and every scenario ran (a broken benchmark case would hide its launches)."""
    kernels = {
        f"{name.rsplit('.', 1)[-1]}.{kernel}"
        for name in aot.kernel_modules()
        for kernel in aot.launched_kernels(importlib.import_module(name))
    }
    assert len(kernels) >= 10
    traced = {c.name for c in plan.configs}
    assert kernels - traced == set(), f"kernels no scenario launches: {sorted(kernels - traced)}"
    for dtype in ("fp32", "bf16"):
        with_dtype = {c.name for c in plan.configs if c.dtypes().split("+")[0] == dtype}
        # _backward_finalize_kernel reads only fp32 partial sums, whatever the activations' dtype
        missing = kernels - with_dtype - {"mixed_bn_sum._backward_finalize_kernel"}
        assert missing == set(), f"kernels never launched with {dtype} data: {sorted(missing)}"
    assert plan.failed == {}, plan.failed


def test_representatives_cover_every_kernel(plan: kr.LaunchPlan) -> None:
    subset = kr.representatives(plan.configs)
    assert {c.name for c in subset} == {c.name for c in plan.configs}
    assert len(subset) < len(plan.launch_configurations())


@needs_cuobjdump
def test_kernels_compile_for_sm80_sm90(compiled: list[aot.CompileResult]) -> None:
    failed = [_describe(r) for r in compiled if not r.ok]
    assert failed == [], "kernels that do not compile:\n" + "\n".join(failed)
    for r in compiled:
        assert r.cubin_bytes > 0 and r.ptx_bytes > 0 and 0 < r.registers <= 255, _describe(r)
        assert r.num_warps >= 1 and r.smem_per_block >= aot.RESERVED_SMEM_PER_BLOCK
        occ = aot.occupancy(r.registers, r.threads, r.smem_per_block, aot.SM_LIMITS[r.arch])
        assert occ.blocks_per_sm >= 1, f"{_describe(r)}: one block does not fit an SM ({occ})"


@needs_cuobjdump
def test_kernels_use_no_local_memory(compiled: list[aot.CompileResult]) -> None:
    """Register spills (local memory or a stack frame) are a failure: the kernels are bandwidth bound
    and a spill adds memory traffic on every use of the spilled value."""
    spills = [_describe(r) for r in compiled if r.ok and r.spills]
    assert spills == [], "kernels that spill to local memory:\n" + "\n".join(spills)


def test_specialize_matches_triton_jit() -> None:
    """:func:`aot.specialize` gives what Triton's own JIT specialisation gives (where this Triton
    exposes it: ``native_specialize_impl``, Triton >= 3.4)."""
    try:
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.compiler import BaseBackend
    except ImportError:
        pytest.skip("this Triton has no native_specialize_impl to compare with")
    base = torch.empty(64)
    values = [
        1,
        0,
        16,
        17,
        2**31 - 16,
        2**31 + 16,
        -32,
        0.5,
        True,
        base,
        base[1:],
        base[4:],
        base.to(torch.bfloat16),
    ]
    for value in values:
        kind, const, aligned = aot.specialize(value)
        want_kind, want_attr = native_specialize_impl(BaseBackend, value, False, True, True)
        assert kind == want_kind, (value, kind, want_kind)
        if kind == "constexpr":
            assert const == want_attr
        else:
            assert aligned == (want_attr == "D"), (value, aligned, want_attr)


def test_parse_resource_usage() -> None:
    text = """
Resource usage:
 Common:
  GLOBAL:28 CONSTANT[4]:16
 Function _forward_kernel:
  REG:40 STACK:8 SHARED:1024 LOCAL:4 CONSTANT[0]:640 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
    usage = aot.parse_resource_usage(text)
    fields = {"REG": 40, "STACK": 8, "SHARED": 1024, "LOCAL": 4, "CONSTANT[0]": 640}
    assert usage == {"_forward_kernel": {**fields, "TEXTURE": 0, "SURFACE": 0, "SAMPLER": 0}}


def test_occupancy() -> None:
    a100, h100 = aot.SM_LIMITS[80], aot.SM_LIMITS[90]
    # 32 registers x 128 threads: 16 blocks of 4 warps fill the 64 warps
    assert aot.occupancy(32, 128, 1024, a100) == aot.Occupancy(16, 64, "warps", 1.0)
    # 255 registers: 8160 -> 8192 per warp, 8 warps by registers: 2 blocks of 4 warps
    assert aot.occupancy(255, 128, 1024, h100) == aot.Occupancy(2, 8, "registers", 0.125)
    # 96 registers: 3072 per warp, 21 -> 20 warps: 5 blocks
    assert aot.occupancy(96, 128, 1024, a100).blocks_per_sm == 5
    # 48 KB + reserve per block: 3 blocks in 164 KB, 4 in 228 KB
    assert aot.occupancy(32, 128, 48 * 1024 + 1024, a100) == aot.Occupancy(3, 12, "shared memory", 12 / 64)
    assert aot.occupancy(32, 128, 48 * 1024 + 1024, h100).blocks_per_sm == 4
    # more shared memory than a block may have: nothing runs
    assert aot.occupancy(32, 128, 200 * 1024, a100).blocks_per_sm == 0


@pytest.mark.skipif(aot.nvcc_path() is None, reason="nvcc not found ($CUDA_HOME, /usr/local/cuda, PATH)")
@needs_cuobjdump
def test_cuda_extension_kernels() -> None:
    """The torch-free CUDA C++ kernels (nvcc -cubin, sm_80 and sm_90): forward and backward for the four
    element types, no local memory, and at least one block of kThreads fits an SM."""
    threads = kr.cuda_threads()
    results = aot.compile_cuda_source(kr.CUDA_SOURCE, threads, ARCHS)
    names = {r.function for r in results}
    for kind in ("forward", "backward"):
        for t in ("float", "double", "__half", "__nv_bfloat16"):
            assert f"weighted_sum_{kind}_kernel<{t}>" in names, sorted(names)
    assert {r.arch for r in results} == set(ARCHS)
    spills = [f"{r.function} sm_{r.arch}: local {r.local} B, stack {r.stack} B" for r in results if r.spills]
    assert spills == [], spills
    for r in results:
        occ = aot.occupancy(r.registers, r.threads, r.smem_per_block, aot.SM_LIMITS[r.arch])
        assert occ.blocks_per_sm >= 1, (r, occ)
    rows = kr.cuda_rows(results)
    assert all(row["status"] == "ok" for row in rows)


def test_launch_expansion_of_autotuned_and_heuristic_kernels() -> None:
    """Autotuned kernels give one configuration per ``triton.Config`` (its constexprs and compile
    options), heuristics the values they compute; runtime arguments get the JIT's types."""
    import triton
    import triton.language as tl

    @triton.jit
    def scale(x_ptr, n, stride, BLOCK: tl.constexpr, EVEN: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(x_ptr + offs * stride, tl.load(x_ptr + offs * stride) * 2)

    configs = [triton.Config({"BLOCK": 64}, num_warps=2), triton.Config({"BLOCK": 128}, num_stages=2)]
    heuristic = triton.heuristics({"EVEN": lambda args: args["n"] % args["BLOCK"] == 0})(scale)
    tuned = triton.autotune(configs=configs, key=["n"])(heuristic)
    x = torch.empty(256)
    out = aot.configs_of_launch("m", "scale", tuned, (x, 256, 1), {})
    assert [dict(c.constexprs) for c in out] == [
        {"stride": 1, "BLOCK": 64, "EVEN": True},
        {"stride": 1, "BLOCK": 128, "EVEN": True},
    ]
    assert [dict(c.options) for c in out] == [
        {"num_warps": 2, "num_stages": 3},
        {"num_warps": 4, "num_stages": 2},
    ]
    first = out[0]
    assert first.types == ("*fp32", "i32", "constexpr", "constexpr", "constexpr")
    assert first.declared == ("BLOCK", "EVEN") and set(first.aligned) == {"x_ptr", "n"}
    assert first.label() == "fp32 BLOCK=64 EVEN=1 num_stages=3 num_warps=2"
    # a plain launch: the launcher's keyword options are compile options
    (plain,) = aot.configs_of_launch(
        "m", "scale", scale, (x[1:], 17, 3), {"BLOCK": 32, "EVEN": False, "num_warps": 8}
    )
    assert plain.options == (("num_warps", 8),) and plain.aligned == () and plain.types[1:3] == ("i32", "i32")


def test_recording_restores_the_kernel_modules(plan: kr.LaunchPlan) -> None:
    from fastnas.kernels import _common
    from fastnas.kernels import mixed_bn_sum as mbs

    assert plan.configs
    assert not isinstance(mbs._forward_kernel, aot.LaunchRecorder)
    assert mbs.triton_supports is _common.triton_supports
    assert (__import__("os").environ.get("TRITON_INTERPRET") == "1") == _common.TRITON_INTERPRET
