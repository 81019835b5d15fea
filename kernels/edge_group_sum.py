"""All edges leaving one state of a DARTS search cell in one op: the mixed-op weighted sums with
BatchNorm(affine=False) folded in (Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search",
ICLR 2019; batch normalization as in Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network
Training by Reducing Internal Covariate Shift", ICML 2015).

E edges leave a state ``x``; edge e computes ``sum_k w[e, k] * op_k(x)``, and every op but ``none`` and the
identity ends in ``BatchNorm2d(C, affine=False)`` with batch statistics. The fast executor computes each op
type once for all E edges, so the op outputs come as *terms*: a **batched** term ``z_t`` [R, N, C, H, W]
whose row r belongs to edge ``term_edges[t][r]`` (a conv op type, one row per edge that has it), or a
**shared** term ``z_t`` [N, C, H, W] used by every edge of ``term_edges[t]`` (a parameter-free pooling op,
the identity ``x``). ``term_cols[t][i]`` is the column of ``weights`` [E, K] that weighs the term's i-th
row (batched) or i-th edge (shared); ``normalize[t]`` says whether the term goes through BN (False: the
identity, added as it is). With ``u = (t, r, e, k)`` running over the uses (row r of term t in edge e with
weight column k) and ``y_u = zhat_{t,r} = (z_t[r] - mean_{t,r}) * rstd_{t,r}`` (per-channel batch
statistics over (N, H, W), biased variance, ``rstd = 1 / sqrt(var + eps)``; a shared term's statistics
computed once) or ``y_u = z_t[r]`` (identity)::

    out_e = sum_{u in e} w[e, k_u] * y_u                                    (E outputs [N, C, H, W])

Backward, with ``g_e = grad out_e`` (None: no contribution), means over (N, H, W) per channel and
``G_{t,r} = sum_{u on (t,r)} w[e_u, k_u] * g_{e_u}`` (a shared term sums all its edges)::

    grad z_t[r] = rstd_{t,r} * (G - mean(G) - zhat_{t,r} * mean(G * zhat_{t,r}))    (BN terms)
    grad z_t[r] = G                                                                  (identity terms)
    grad w[e, k] = sum over the uses u of (e, k) of sum(g_e * y_u)          (0 where no use)

with ``mean(G) = sum_u w_u mean(g_{e_u})`` and ``mean(G * zhat) = sum_u w_u mean(g_{e_u} * zhat)``: both
come from the per-use, per-channel sums ``sum(g_e)`` and ``sum(g_e * y_u)`` that grad w needs anyway.

:func:`edge_group_sum` returns ``(outs, means, vars)``: E outputs in the terms' dtype (contiguous NCHW) and
per term the detached batch ``mean`` and biased ``var`` [R or 1, C] (float32; float64 for float64; [0, C]
for identity terms) for the running statistics (:func:`fastnas.kernels.mixed_bn_sum.update_running_stats`).
Gradients: one tensor per term (a batched term's gradient is one contiguous [R, N, C, H, W] tensor, a
shared term's gradient one [N, C, H, W] tensor summing all its edges) and ``grad weights`` [E, K].

It runs the operator ``torch.ops.fastnas.edge_group_sum`` (autograd through
``torch.ops.fastnas.edge_group_sum_backward``) where :func:`fastnas.kernels._common.use_kernels` allows,
else :func:`edge_group_sum_reference` (``F.batch_norm`` per row and weighted sums, autograd). The nested
host lists travel to the operators flattened (``edges``, ``cols``, ``sizes`` = rows or edges per term).
On a dtype or device the kernels do not handle (float64: gradcheck), or beyond :data:`MAX_TERMS` terms /
:data:`MAX_EDGES` edges, the operators compute the same formulas with PyTorch ops; both have fake
implementations for ``torch.compile(fullgraph=True)``. The autograd registration does not materialise
missing output gradients (an edge whose output gets no gradient contributes nothing; no gradient at all:
no launch), and skips what the backward pass does not use (:func:`fastnas.kernels._common.grad_wanted`):
the term gradients when no term's producer runs (an architecture-only pass: one launch fewer), the weight
gradient when the weights are not asked for.

Layouts on the kernel path: every term row and every incoming gradient is read in place through its own
strides (row, sample, channel and one stride over the H*W plane: NCHW tensors and views such as channel
slices or a subset of a batched tensor's rows, channels-last tensors, expanded gradients); only a tensor
whose H and W do not merge is copied first, that tensor alone. ``weights`` may be any strided view and have
another floating dtype than the terms. The structure (which row belongs to which edge and column) goes to
the kernels as one small int32 table per device, built on the first call with that structure and cached:
no host-to-device copy per call after that.

Kernels (fp32 accumulation; term pointers in slots ``z0..z15``, edge gradients / outputs in ``g0..g7`` /
``o0..o7``, so a call launches the same kernels whatever T <= 16 and E <= 8):
- forward (2 launches): ``_stats_kernel``, grid (C, S, normalised rows), the sum and sum of squares of one
  row's channel c over chunk s of N*H*W, shifted by the row's first element of the channel (the variance
  does not cancel when |mean| >> std); ``_forward_kernel``, grid (N*C, H*W blocks, E), turns the partials
  into mean/rstd and writes one block of ``out_e`` from all of the edge's terms (and the statistics).
- backward (2 launches; 1 when no term gradient is wanted): ``_backward_reduce_kernel``, grid (C, S, E),
  reads ``g_e`` once and forms the partial ``sum(g_e)`` and ``sum(g_e * y_u)`` of every use of edge e;
  ``_backward_finish_kernel``, grid (N*C, H*W blocks, wanted term rows + 1), writes grad z of one term row
  (summing the split partials itself), and its last program the whole ``grad weights`` [E, K].
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fastnas.kernels import _common
from fastnas.kernels._common import HAS_TRITON, TRITON_INTERPRET, tl, triton, triton_supports

__all__ = ["MAX_EDGES", "MAX_TERMS", "edge_group_sum", "edge_group_sum_reference"]


MAX_TERMS = 16  # pointer arguments z0..z15 of the kernels
MAX_EDGES = 8  # pointer arguments g0..g7 / o0..o7
_BLOCK_R = 256  # reduction block of the statistics and backward reduction kernels
_BLOCK_T = 16  # [BLOCK_T, BLOCK_R] accumulators of the backward reduction (padded to the terms)
_BLOCK_HW = 256  # elementwise block along H*W
_BLOCK_WC = 64  # channel block of the weight-gradient program
_MAX_SPLITS = 64

NAME = "edge_group_sum"


# --------------------------------------------------------------------------------------------------
# Structure of a call (host lists), argument checks, reference
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """The structure of one call, from the host lists: rows per term, which (term, edge) pair uses which
    row, column and statistics row, and the normalised rows (t, r) in statistics order."""

    num_edges: int
    rows: tuple[int, ...]  # rows per term (1 for a shared term)
    normalize: tuple[bool, ...]
    row_of: tuple[tuple[int, ...], ...]  # [T][E]: the term's row used by edge e, -1 if none
    col_of: tuple[tuple[int, ...], ...]  # [T][E]: its weight column (0 if none)
    stat_of: tuple[tuple[int, ...], ...]  # [T][E]: its statistics row (0 if none or identity)
    stat_base: tuple[int, ...]  # first statistics row of each term (normalised terms)
    stat_rows: tuple[tuple[int, int], ...]  # (t, r) of every statistics row

    @property
    def num_terms(self) -> int:
        return len(self.rows)

    @property
    def norm_mask(self) -> int:
        return sum(1 << t for t, flag in enumerate(self.normalize) if flag)

    def uses(self, t: int) -> list[tuple[int, int, int]]:
        """``(row, edge, col)`` of every use of term ``t``."""
        return [(r, e, self.col_of[t][e]) for e, r in enumerate(self.row_of[t]) if r >= 0]


@functools.lru_cache(maxsize=256)
def _plan(
    edges: tuple[int, ...], cols: tuple[int, ...], sizes: tuple[int, ...], normalize: tuple[bool, ...],
    batched: tuple[bool, ...], num_edges: int,
) -> _Plan:  # fmt: skip
    row_of = [[-1] * num_edges for _ in sizes]
    col_of = [[0] * num_edges for _ in sizes]
    stat_of = [[0] * num_edges for _ in sizes]
    stat_base: list[int] = []
    stat_rows: list[tuple[int, int]] = []
    rows: list[int] = []
    pos = 0
    for t, size in enumerate(sizes):
        n_rows = size if batched[t] else 1
        rows.append(n_rows)
        stat_base.append(len(stat_rows))
        if normalize[t]:
            stat_rows.extend((t, r) for r in range(n_rows))
        for i in range(size):
            e, k = edges[pos + i], cols[pos + i]
            r = i if batched[t] else 0
            row_of[t][e], col_of[t][e] = r, k
            stat_of[t][e] = stat_base[t] + r if normalize[t] else 0
        pos += size
    return _Plan(
        num_edges,
        tuple(rows),
        tuple(normalize),
        tuple(map(tuple, row_of)),
        tuple(map(tuple, col_of)),
        tuple(map(tuple, stat_of)),
        tuple(stat_base),
        tuple(stat_rows),
    )


def _flatten(
    term_edges: Sequence[Sequence[int]], term_cols: Sequence[Sequence[int]]
) -> tuple[list[int], ...]:
    edges = [int(e) for te in term_edges for e in te]
    cols = [int(k) for tc in term_cols for k in tc]
    sizes = [len(te) for te in term_edges]
    return edges, cols, sizes


def _plan_of(
    terms: Sequence[Tensor], edges: Sequence[int], cols: Sequence[int], sizes: Sequence[int],
    normalize: Sequence[bool], num_edges: int,
) -> _Plan:  # fmt: skip
    batched = tuple(t.dim() == 5 for t in terms)
    # the structure is static: int() specialises symbolic ints (dynamic-shape tracing); every edge has a
    # term (checked), so E = max(edges) + 1 without reading the weights' (possibly symbolic) shape
    del num_edges
    ints = [tuple(int(v) for v in seq) for seq in (edges, cols, sizes)]
    return _plan(ints[0], ints[1], ints[2], tuple(bool(f) for f in normalize), batched, max(ints[0]) + 1)


def _check_args(
    terms: Sequence[Tensor],
    term_edges: Sequence[Sequence[int]],
    term_cols: Sequence[Sequence[int]],
    normalize: Sequence[bool],
    weights: Tensor,
) -> list[Tensor]:
    """Validate the arguments of :func:`edge_group_sum`; returns the terms as a list. Raises
    ``TypeError``/``ValueError``."""
    if isinstance(terms, Tensor) or not isinstance(terms, Sequence) or len(terms) == 0:
        raise ValueError(f"{NAME}: `terms` must be a non-empty sequence of tensors.")
    terms = list(terms)
    num = len(terms)
    for label, seq in (("term_edges", term_edges), ("term_cols", term_cols), ("normalize", normalize)):
        if len(seq) != num:
            raise ValueError(f"{NAME}: `{label}` must have one entry per term ({num}), got {len(seq)}.")
    if not isinstance(weights, Tensor) or weights.dim() != 2:
        raise _common.shape_error(NAME, "weights", weights, "a 2-D [E, K] tensor of edge weights")
    _common.check_float_dtype(NAME, "`weights`", weights.dtype)
    num_edges, num_cols = weights.shape
    row_shape: tuple[int, ...] | None = None
    z0 = None
    used: set[int] = set()
    for t, (z, te, tc) in enumerate(zip(terms, term_edges, term_cols, strict=True)):
        if not isinstance(z, Tensor) or z.dim() not in (4, 5):
            raise _common.shape_error(
                NAME, f"terms[{t}]", z, "a batched [R, N, C, H, W] or a shared [N, C, H, W] tensor"
            )
        if z0 is None:
            z0 = z
            _common.check_float_dtype(NAME, "the terms", z.dtype)
        else:
            _common.check_dtype_match(NAME, f"terms[{t}]", z, "terms[0]", z0, "use one dtype")
            _common.check_device_match(NAME, f"terms[{t}]", z, "terms[0]", z0)
        shape = tuple(z.shape[-4:])
        if row_shape is None:
            row_shape = shape
        elif shape != row_shape:
            raise ValueError(f"{NAME}: terms[{t}] has rows of shape {shape} but terms[0] has {row_shape}.")
        te, tc = list(te), list(tc)
        if len(tc) != len(te):
            raise ValueError(f"{NAME}: term_cols[{t}] must have one column per entry of term_edges[{t}].")
        if z.dim() == 5 and len(te) != z.shape[0]:
            raise ValueError(
                f"{NAME}: batched terms[{t}] has {z.shape[0]} rows but term_edges[{t}] lists {len(te)} edges."
            )
        if not te:
            raise ValueError(f"{NAME}: term_edges[{t}] is empty: every term must be used by an edge.")
        if len(set(te)) != len(te) and z.dim() == 4:
            raise ValueError(f"{NAME}: shared terms[{t}] lists an edge twice in term_edges[{t}] = {te}.")
        for e, k in zip(te, tc, strict=True):
            if not 0 <= int(e) < num_edges or not 0 <= int(k) < num_cols:
                raise ValueError(
                    f"{NAME}: term {t} uses (edge {e}, column {k}) outside `weights` of shape "
                    f"{tuple(weights.shape)}."
                )
        used.update(int(e) for e in te)
    assert z0 is not None and row_shape is not None
    _common.check_device_match(NAME, "`weights`", weights, "the terms", z0)
    missing = sorted(set(range(num_edges)) - used)
    if missing:
        raise ValueError(f"{NAME}: edges {missing} have no term (every edge of `weights` needs one).")
    n, _, h, wd = row_shape
    if any(normalize) and n * h * wd < 2:
        raise ValueError(
            f"{NAME}: batch statistics need more than 1 value per channel, got N*H*W = {n * h * wd}."
        )
    return terms


def _rows_of(z: Tensor) -> list[Tensor]:
    return list(z.unbind(0)) if z.dim() == 5 else [z]


def edge_group_sum_reference(
    terms: Sequence[Tensor],
    term_edges: Sequence[Sequence[int]],
    term_cols: Sequence[Sequence[int]],
    normalize: Sequence[bool],
    weights: Tensor,
    eps: float = 1e-5,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Plain PyTorch reference: ``F.batch_norm`` (training, no affine, no running stats) per normalised
    term row (a shared term once), then each edge's weighted sum; autograd through it gives the reference
    gradients. Arguments and results as :func:`edge_group_sum`."""
    terms = _check_args(terms, term_edges, term_cols, normalize, weights)
    dtype = terms[0].dtype
    acc = _common.acc_dtype(dtype)
    c = terms[0].shape[-3]
    wf = weights.to(acc)
    outs: list[Tensor | None] = [None] * weights.shape[0]
    means, variances = [], []
    for t, z in enumerate(terms):
        rows = _rows_of(z)
        values = []
        row_means, row_vars = [], []
        for row in rows:
            zf = row.to(acc)
            if normalize[t]:
                values.append(F.batch_norm(zf, None, None, None, None, training=True, momentum=0.0, eps=eps))
                with torch.no_grad():
                    row_means.append(zf.mean(dim=(0, 2, 3)))
                    row_vars.append(zf.var(dim=(0, 2, 3), correction=0))
            else:
                values.append(zf)
        for i, (e, k) in enumerate(zip(term_edges[t], term_cols[t], strict=True)):
            term = wf[e, k] * values[i if z.dim() == 5 else 0]
            prev = outs[e]
            outs[e] = term if prev is None else prev + term
        empty = z.new_empty((0, c), dtype=acc)
        means.append(torch.stack(row_means) if row_means else empty)
        variances.append(torch.stack(row_vars) if row_vars else empty.clone())
    result = []
    for out in outs:
        assert out is not None  # _check_args: every edge has a term
        result.append(out.to(dtype))
    return result, means, variances


# --------------------------------------------------------------------------------------------------
# Layouts, tables, PyTorch math of the operators
# --------------------------------------------------------------------------------------------------


def _plane(t: Tensor) -> tuple[Tensor, int, int, int, int]:
    """``(t, stride rows, stride N, stride C, stride over H*W)`` of a [R, N, C, H, W] or [N, C, H, W]
    tensor (row stride 0 for the latter) whose H and W merge into one strided dimension (read in place);
    a contiguous copy when they do not."""
    h, wd = t.shape[-2:]
    strides = t.stride()
    sh, sw = strides[-2:]
    if not (wd == 1 or h == 1 or sh == wd * sw):
        t = t.contiguous()
        strides = t.stride()
        sh, sw = strides[-2:]
    hw = sh if wd == 1 else sw
    sr = strides[0] if t.dim() == 5 else 0
    return t, sr, strides[-4], strides[-3], hw


_tables: dict[tuple[torch.device, tuple[int, ...]], Tensor] = {}


def _device_ints(device: torch.device, values: tuple[int, ...]) -> Tensor:
    """``values`` as an int32 tensor on ``device``, made on the first call and cached (no host-to-device
    copy on later calls with the same structure)."""
    key = (device, values)
    table = _tables.get(key)
    if table is None:
        table = torch.tensor(values, dtype=torch.int32).to(device)
        _tables[key] = table
    return table


def _table(plan: _Plan, device: torch.device, wanted: Sequence[bool] = ()) -> tuple[Tensor, dict[str, int]]:
    """The plan's device table and the offsets of its parts: ``row``/``col``/``stat`` [T, E] (row, weight
    column and statistics row of each (term, edge) pair), ``stat_t``/``stat_r`` (term and row of each
    statistics row) and ``want_t``/``want_r``/``want_s`` (term, row and statistics row of each row of the
    ``wanted`` terms)."""
    parts: dict[str, list[int]] = {
        "row": [v for row in plan.row_of for v in row],
        "col": [v for row in plan.col_of for v in row],
        "stat": [v for row in plan.stat_of for v in row],
        "stat_t": [t for t, _ in plan.stat_rows],
        "stat_r": [r for _, r in plan.stat_rows],
    }
    want = [(t, r) for t, flag in enumerate(wanted) if flag for r in range(plan.rows[t])]
    parts["want_t"] = [t for t, _ in want]
    parts["want_r"] = [r for _, r in want]
    parts["want_s"] = [plan.stat_base[t] + r if plan.normalize[t] else 0 for t, r in want]
    offsets: dict[str, int] = {}
    values: list[int] = []
    for name, vals in parts.items():
        offsets[name] = len(values)
        values.extend(vals)
    return _device_ints(device, tuple(values or [0])), offsets


def _kernels_run(terms: Sequence[Tensor], plan: _Plan) -> bool:
    z0 = terms[0]
    return (
        triton_supports(z0.device, z0.dtype) and plan.num_terms <= MAX_TERMS and plan.num_edges <= MAX_EDGES
    )


def _torch_forward(
    terms: list[Tensor], plan: _Plan, weights: Tensor, eps: float
) -> tuple[list[Tensor], Tensor, Tensor]:
    dtype = terms[0].dtype
    acc = _common.acc_dtype(dtype)
    c = terms[0].shape[-3]
    wf = weights.detach().to(acc)
    outs: list[Tensor | None] = [None] * plan.num_edges
    means, variances = [], []
    for t, z in enumerate(terms):
        values = []
        for row in _rows_of(z.detach()):
            zf = row.to(acc)
            if plan.normalize[t]:
                mean = zf.mean(dim=(0, 2, 3))
                var = zf.var(dim=(0, 2, 3), correction=0)
                means.append(mean)
                variances.append(var)
                values.append((zf - mean[:, None, None]) * (var + eps).rsqrt()[:, None, None])
            else:
                values.append(zf)
        for r, e, k in plan.uses(t):
            term = wf[e, k] * values[r]
            prev = outs[e]
            outs[e] = term if prev is None else prev + term
    result = []
    for out in outs:
        assert out is not None
        result.append(out.to(dtype).contiguous())
    mean_all = torch.stack(means) if means else terms[0].new_empty((0, c), dtype=acc)
    var_all = torch.stack(variances) if variances else terms[0].new_empty((0, c), dtype=acc)
    return result, mean_all, var_all


def _torch_backward(
    grads: list[Tensor | None], terms: list[Tensor], plan: _Plan, weights: Tensor, mean: Tensor,
    var: Tensor, eps: float, want_terms: list[bool], want_weights: bool,
) -> tuple[list[Tensor], Tensor]:  # fmt: skip
    z0 = terms[0]
    acc = _common.acc_dtype(z0.dtype)
    wf = weights.to(acc)
    gs = [None if g is None else g.to(acc) for g in grads]
    grad_w = torch.zeros(tuple(weights.shape), dtype=acc, device=weights.device)
    out_grads = []
    for t, z in enumerate(terms):
        rows = _rows_of(z)
        row_grads = []
        for r, row in enumerate(rows):
            value = row.to(acc)
            if plan.normalize[t]:
                s = plan.stat_base[t] + r
                rstd = (var[s].to(acc) + eps).rsqrt()[:, None, None]
                value = (value - mean[s].to(acc)[:, None, None]) * rstd
            big_g = torch.zeros_like(value)
            for rr, e, k in plan.uses(t):
                g = gs[e]
                if rr != r or g is None:
                    continue
                grad_w[e, k] += (g * value).sum()
                big_g = big_g + wf[e, k] * g
            if plan.normalize[t]:
                mean_g = big_g.mean(dim=(0, 2, 3), keepdim=True)
                mean_gz = (big_g * value).mean(dim=(0, 2, 3), keepdim=True)
                big_g = rstd * (big_g - mean_g - value * mean_gz)
            row_grads.append(big_g.to(z0.dtype))
        if want_terms[t]:
            out_grads.append(torch.stack(row_grads) if z.dim() == 5 else row_grads[0].contiguous())
        else:
            out_grads.append(z.new_empty((0,)))
    gw = grad_w.to(weights.dtype) if want_weights else weights.new_empty((0,))
    return out_grads, gw


# --------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _row_block(C, HW, BLOCK_HW: tl.constexpr):
        """Program (n*C + c, block, .) of the elementwise kernels: ``n``, ``c``, whether it is the first
        block of sample 0, the block's positions ``hw`` in the H*W plane, their int64 offsets into a
        contiguous [N, C, H*W] tensor and their mask."""
        row = tl.program_id(0)
        blk = tl.program_id(1)
        hw = blk * BLOCK_HW + tl.arange(0, BLOCK_HW)
        n = row // C
        return n, row - n * C, (row < C) & (blk == 0), hw, row.to(tl.int64) * HW + hw, hw < HW

    @triton.jit
    def _stats_kernel(
        z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15,  # terms (unused: any)
        zr0, zr1, zr2, zr3, zr4, zr5, zr6, zr7, zr8, zr9, zr10, zr11, zr12, zr13, zr14, zr15,  # row strides
        zn0, zn1, zn2, zn3, zn4, zn5, zn6, zn7, zn8, zn9, zn10, zn11, zn12, zn13, zn14, zn15,  # over N
        zc0, zc1, zc2, zc3, zc4, zc5, zc6, zc7, zc8, zc9, zc10, zc11, zc12, zc13, zc14, zc15,  # over C
        zh0, zh1, zh2, zh3, zh4, zh5, zh6, zh7, zh8, zh9, zh10, zh11, zh12, zh13, zh14, zh15,  # over H*W
        table_ptr,
        psum_ptr,
        psumsq_ptr,
        C,
        HW,
        M,
        CHUNK,
        SC,
        STAT_T,
        STAT_R,
        NUM_TERMS: tl.constexpr,
        NORM_MASK: tl.constexpr,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        """Program (c, s, j): shifted sum and sum of squares of statistics row j (row r of term t),
        channel c, over reduction chunk s (into [S, rows, C])."""
        ZP = (z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15)
        ZR = (zr0, zr1, zr2, zr3, zr4, zr5, zr6, zr7, zr8, zr9, zr10, zr11, zr12, zr13, zr14, zr15)
        ZN = (zn0, zn1, zn2, zn3, zn4, zn5, zn6, zn7, zn8, zn9, zn10, zn11, zn12, zn13, zn14, zn15)
        ZC = (zc0, zc1, zc2, zc3, zc4, zc5, zc6, zc7, zc8, zc9, zc10, zc11, zc12, zc13, zc14, zc15)
        ZH = (zh0, zh1, zh2, zh3, zh4, zh5, zh6, zh7, zh8, zh9, zh10, zh11, zh12, zh13, zh14, zh15)
        c = tl.program_id(0)
        s = tl.program_id(1)
        j = tl.program_id(2)
        tid = tl.load(table_ptr + STAT_T + j)
        r = tl.load(table_ptr + STAT_R + j).to(tl.int64)
        c64 = c.to(tl.int64)
        start = s * CHUNK
        for t in tl.static_range(NUM_TERMS):
            if (NORM_MASK >> t) & 1:  # noqa: SIM102 (compile-time, then run-time condition)
                if tid == t:
                    zp, sr, sn, sc, sh = ZP[t], ZR[t], ZN[t], ZC[t], ZH[t]
                    base = zp + r * sr + c64 * sc
                    # the row's channel is shifted by its first element (z[r, 0, c, 0, 0])
                    shift = tl.load(base).to(tl.float32)
                    acc = tl.zeros([BLOCK], dtype=tl.float32)
                    acc2 = tl.zeros([BLOCK], dtype=tl.float32)
                    for r0 in range(start, start + CHUNK, BLOCK):
                        rr = r0 + tl.arange(0, BLOCK)
                        mask = rr < M
                        n = (rr // HW).to(tl.int64)
                        hw = rr.to(tl.int64) - n * HW
                        v = tl.load(base + n * sn + hw * sh, mask=mask, other=0.0)
                        d = tl.where(mask, v.to(tl.float32) - shift, 0.0)
                        acc += d
                        acc2 += d * d
                    out = s * SC + j * C + c
                    tl.store(psum_ptr + out, tl.sum(acc, axis=0))
                    tl.store(psumsq_ptr + out, tl.sum(acc2, axis=0))

    @triton.jit
    def _forward_kernel(
        z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15,  # terms (unused: any)
        zr0, zr1, zr2, zr3, zr4, zr5, zr6, zr7, zr8, zr9, zr10, zr11, zr12, zr13, zr14, zr15,  # row strides
        zn0, zn1, zn2, zn3, zn4, zn5, zn6, zn7, zn8, zn9, zn10, zn11, zn12, zn13, zn14, zn15,  # over N
        zc0, zc1, zc2, zc3, zc4, zc5, zc6, zc7, zc8, zc9, zc10, zc11, zc12, zc13, zc14, zc15,  # over C
        zh0, zh1, zh2, zh3, zh4, zh5, zh6, zh7, zh8, zh9, zh10, zh11, zh12, zh13, zh14, zh15,  # over H*W
        o0, o1, o2, o3, o4, o5, o6, o7,  # the edges' outputs (contiguous; unused: any)
        w_ptr,
        table_ptr,
        psum_ptr,
        psumsq_ptr,
        mean_ptr,
        var_ptr,
        C,
        HW,
        INV_M,
        E,
        SC,
        SPLIT,
        WS0,
        WS1,
        ROW,
        COL,
        STAT,
        eps,
        NUM_TERMS: tl.constexpr,
        NUM_EDGES: tl.constexpr,
        NORM_MASK: tl.constexpr,
        BLOCK_S: tl.constexpr,
        BLOCK_HW: tl.constexpr,
    ):  # fmt: skip
        """Program (n*C + c, block, e): one block of out_e[n, c] from every term row edge e uses, with
        their statistics from the split partials (stored by the first block of sample 0)."""
        ZP = (z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15)
        ZR = (zr0, zr1, zr2, zr3, zr4, zr5, zr6, zr7, zr8, zr9, zr10, zr11, zr12, zr13, zr14, zr15)
        ZN = (zn0, zn1, zn2, zn3, zn4, zn5, zn6, zn7, zn8, zn9, zn10, zn11, zn12, zn13, zn14, zn15)
        ZC = (zc0, zc1, zc2, zc3, zc4, zc5, zc6, zc7, zc8, zc9, zc10, zc11, zc12, zc13, zc14, zc15)
        ZH = (zh0, zh1, zh2, zh3, zh4, zh5, zh6, zh7, zh8, zh9, zh10, zh11, zh12, zh13, zh14, zh15)
        OUT = (o0, o1, o2, o3, o4, o5, o6, o7)
        n, c, first, hw, roff, hmask = _row_block(C, HW, BLOCK_HW)
        e = tl.program_id(2)
        n64 = n.to(tl.int64)
        c64 = c.to(tl.int64)
        hw64 = hw.to(tl.int64)
        ss = tl.arange(0, BLOCK_S)
        smask = ss < SPLIT
        acc = tl.zeros([BLOCK_HW], dtype=tl.float32)
        for t in tl.static_range(NUM_TERMS):
            row = tl.load(table_ptr + ROW + t * E + e)
            used = row >= 0
            col = tl.load(table_ptr + COL + t * E + e)
            wv = tl.load(w_ptr + e * WS0 + col * WS1).to(tl.float32)
            zp, sr, sn, sc, sh = ZP[t], ZR[t], ZN[t], ZC[t], ZH[t]
            zrow = zp + tl.maximum(row, 0).to(tl.int64) * sr + c64 * sc
            zv = tl.load(zrow + n64 * sn + hw64 * sh, mask=hmask & used, other=0.0).to(tl.float32)
            if (NORM_MASK >> t) & 1:
                j = tl.load(table_ptr + STAT + t * E + e)
                part = ss * SC + j * C + c
                s1 = tl.sum(tl.load(psum_ptr + part, mask=smask & used, other=0.0), axis=0)
                s2 = tl.sum(tl.load(psumsq_ptr + part, mask=smask & used, other=0.0), axis=0)
                dm = s1 * INV_M
                var = tl.maximum(s2 * INV_M - dm * dm, 0.0)
                rstd = tl.math.rsqrt(var + eps)
                # mean = shift + mean of the shifted values; the shift is the row's first element
                mean = tl.load(zrow, mask=used, other=0.0).to(tl.float32) + dm
                acc += tl.where(used, wv * rstd, 0.0) * (zv - mean)
                # a shared term's statistics are stored by each of its edges' programs: the same values
                tl.store(mean_ptr + j * C + c, mean, mask=used & first)
                tl.store(var_ptr + j * C + c, var, mask=used & first)
            else:
                acc += tl.where(used, wv, 0.0) * zv
        for f in tl.static_range(NUM_EDGES):
            op = OUT[f]
            tl.store(op + roff, acc.to(op.dtype.element_ty), mask=hmask & (e == f))

    @triton.jit
    def _backward_reduce_kernel(
        z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15,  # terms (unused: any)
        zr0, zr1, zr2, zr3, zr4, zr5, zr6, zr7, zr8, zr9, zr10, zr11, zr12, zr13, zr14, zr15,  # row strides
        zn0, zn1, zn2, zn3, zn4, zn5, zn6, zn7, zn8, zn9, zn10, zn11, zn12, zn13, zn14, zn15,  # over N
        zc0, zc1, zc2, zc3, zc4, zc5, zc6, zc7, zc8, zc9, zc10, zc11, zc12, zc13, zc14, zc15,  # over C
        zh0, zh1, zh2, zh3, zh4, zh5, zh6, zh7, zh8, zh9, zh10, zh11, zh12, zh13, zh14, zh15,  # over H*W
        g0, g1, g2, g3, g4, g5, g6, g7,  # incoming gradients of the edges (None: any)
        gn0, gn1, gn2, gn3, gn4, gn5, gn6, gn7,  # their strides over N
        gc0, gc1, gc2, gc3, gc4, gc5, gc6, gc7,  # over C
        gh0, gh1, gh2, gh3, gh4, gh5, gh6, gh7,  # over the H*W plane
        table_ptr,
        mean_ptr,
        var_ptr,
        part_g_ptr,
        part_gz_ptr,
        C,
        HW,
        M,
        CHUNK,
        E,
        TEC,
        ROW,
        STAT,
        eps,
        NUM_TERMS: tl.constexpr,
        NUM_EDGES: tl.constexpr,
        NORM_MASK: tl.constexpr,
        G_MASK: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_R: tl.constexpr,
    ):  # fmt: skip
        """Program (c, s, e): partial sum(g_e) and sum(g_e * y) of every term row edge e uses, channel c,
        over chunk s (into [S, E, C] and [S, T, E, C]); zero for an edge without gradient."""
        ZP = (z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15)
        ZR = (zr0, zr1, zr2, zr3, zr4, zr5, zr6, zr7, zr8, zr9, zr10, zr11, zr12, zr13, zr14, zr15)
        ZN = (zn0, zn1, zn2, zn3, zn4, zn5, zn6, zn7, zn8, zn9, zn10, zn11, zn12, zn13, zn14, zn15)
        ZC = (zc0, zc1, zc2, zc3, zc4, zc5, zc6, zc7, zc8, zc9, zc10, zc11, zc12, zc13, zc14, zc15)
        ZH = (zh0, zh1, zh2, zh3, zh4, zh5, zh6, zh7, zh8, zh9, zh10, zh11, zh12, zh13, zh14, zh15)
        GP = (g0, g1, g2, g3, g4, g5, g6, g7)
        GN = (gn0, gn1, gn2, gn3, gn4, gn5, gn6, gn7)
        GC = (gc0, gc1, gc2, gc3, gc4, gc5, gc6, gc7)
        GH = (gh0, gh1, gh2, gh3, gh4, gh5, gh6, gh7)
        c = tl.program_id(0)
        s = tl.program_id(1)
        e = tl.program_id(2)
        c64 = c.to(tl.int64)
        ts = tl.arange(0, BLOCK_T)
        tmask = ts < NUM_TERMS
        has_g = ((G_MASK >> e) & 1) != 0
        acc_g = tl.zeros([BLOCK_R], dtype=tl.float32)
        acc = tl.zeros([BLOCK_T, BLOCK_R], dtype=tl.float32)
        start = s * CHUNK
        stop = tl.where(has_g, start + CHUNK, start)  # no gradient: nothing to read, zeros stored
        for r0 in range(start, stop, BLOCK_R):
            rr = r0 + tl.arange(0, BLOCK_R)
            rmask = rr < M
            n = (rr // HW).to(tl.int64)
            hw = rr.to(tl.int64) - n * HW
            g = tl.zeros([BLOCK_R], dtype=tl.float32)
            for f in tl.static_range(NUM_EDGES):
                if (G_MASK >> f) & 1:
                    gp, gn, gc, gh = GP[f], GN[f], GC[f], GH[f]
                    gv = tl.load(gp + n * gn + c64 * gc + hw * gh, mask=rmask & (e == f), other=0.0)
                    g += gv.to(tl.float32)
            acc_g += g
            for t in tl.static_range(NUM_TERMS):
                zp, sr, sn, sc, sh = ZP[t], ZR[t], ZN[t], ZC[t], ZH[t]
                # uniform scalar loads (cached): the row edge e uses (-1: none), its statistics
                row = tl.load(table_ptr + ROW + t * E + e)
                zrow = zp + tl.maximum(row, 0).to(tl.int64) * sr + c64 * sc
                v = tl.load(zrow + n * sn + hw * sh, mask=rmask & (row >= 0), other=0.0)
                y = v.to(tl.float32)
                if (NORM_MASK >> t) & 1:
                    j = tl.load(table_ptr + STAT + t * E + e)
                    rstd = tl.math.rsqrt(tl.load(var_ptr + j * C + c) + eps)
                    y = (y - tl.load(mean_ptr + j * C + c)) * rstd
                # masked-off positions have g = 0, unused terms are not read back: no contribution
                acc += tl.where(ts[:, None] == t, (g * y)[None, :], 0.0)
        tl.store(part_g_ptr + (s * E + e) * C + c, tl.sum(acc_g, axis=0))
        tl.store(part_gz_ptr + s * TEC + (ts * E + e) * C + c, tl.sum(acc, axis=1), mask=tmask)

    @triton.jit
    def _backward_finish_kernel(
        z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15,  # terms (unused: any)
        zr0, zr1, zr2, zr3, zr4, zr5, zr6, zr7, zr8, zr9, zr10, zr11, zr12, zr13, zr14, zr15,  # row strides
        zn0, zn1, zn2, zn3, zn4, zn5, zn6, zn7, zn8, zn9, zn10, zn11, zn12, zn13, zn14, zn15,  # over N
        zc0, zc1, zc2, zc3, zc4, zc5, zc6, zc7, zc8, zc9, zc10, zc11, zc12, zc13, zc14, zc15,  # over C
        zh0, zh1, zh2, zh3, zh4, zh5, zh6, zh7, zh8, zh9, zh10, zh11, zh12, zh13, zh14, zh15,  # over H*W
        gz0, gz1, gz2, gz3, gz4, gz5, gz6, gz7, gz8, gz9, gz10, gz11, gz12, gz13, gz14, gz15,  # grad terms
        g0, g1, g2, g3, g4, g5, g6, g7,  # incoming gradients of the edges (None: any)
        gn0, gn1, gn2, gn3, gn4, gn5, gn6, gn7,  # their strides over N
        gc0, gc1, gc2, gc3, gc4, gc5, gc6, gc7,  # over C
        gh0, gh1, gh2, gh3, gh4, gh5, gh6, gh7,  # over the H*W plane
        w_ptr,
        grad_w_ptr,
        table_ptr,
        mean_ptr,
        var_ptr,
        part_g_ptr,
        part_gz_ptr,
        C,
        HW,
        INV_M,
        E,
        K,
        TEC,
        PLANE,
        SPLIT,
        NROWS,
        WS0,
        WS1,
        ROW,
        COL,
        WANT_T,
        WANT_R,
        WANT_S,
        eps,
        NUM_TERMS: tl.constexpr,
        NUM_EDGES: tl.constexpr,
        NORM_MASK: tl.constexpr,
        G_MASK: tl.constexpr,
        BLOCK_S: tl.constexpr,
        BLOCK_HW: tl.constexpr,
        BLOCK_E: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        """Program (n*C + c, block, j < NROWS): one block of grad z[r, n, c] of wanted term row j (term t,
        row r). Program (0, 0, NROWS): grad weights [E, K] from the split partials."""
        ZP = (z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15)
        ZR = (zr0, zr1, zr2, zr3, zr4, zr5, zr6, zr7, zr8, zr9, zr10, zr11, zr12, zr13, zr14, zr15)
        ZN = (zn0, zn1, zn2, zn3, zn4, zn5, zn6, zn7, zn8, zn9, zn10, zn11, zn12, zn13, zn14, zn15)
        ZC = (zc0, zc1, zc2, zc3, zc4, zc5, zc6, zc7, zc8, zc9, zc10, zc11, zc12, zc13, zc14, zc15)
        ZH = (zh0, zh1, zh2, zh3, zh4, zh5, zh6, zh7, zh8, zh9, zh10, zh11, zh12, zh13, zh14, zh15)
        GP = (g0, g1, g2, g3, g4, g5, g6, g7)
        GN = (gn0, gn1, gn2, gn3, gn4, gn5, gn6, gn7)
        GC = (gc0, gc1, gc2, gc3, gc4, gc5, gc6, gc7)
        GH = (gh0, gh1, gh2, gh3, gh4, gh5, gh6, gh7)
        GZ = (gz0, gz1, gz2, gz3, gz4, gz5, gz6, gz7, gz8, gz9, gz10, gz11, gz12, gz13, gz14, gz15)
        j = tl.program_id(2)
        if j == NROWS:
            if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
                es = tl.arange(0, BLOCK_E)
                ks = tl.arange(0, BLOCK_K)
                cs = tl.arange(0, BLOCK_C)
                emask = es < E
                has_g = ((G_MASK >> es) & 1) != 0
                gw = tl.zeros([BLOCK_E, BLOCK_K], dtype=tl.float32)
                for t in tl.static_range(NUM_TERMS):
                    rows = tl.load(table_ptr + ROW + t * E + es, mask=emask, other=-1)
                    cols = tl.load(table_ptr + COL + t * E + es, mask=emask, other=-1)
                    used = (rows >= 0) & has_g & emask
                    tot = tl.zeros([BLOCK_E, BLOCK_C], dtype=tl.float32)
                    for s in range(0, SPLIT):
                        for c0 in range(0, C, BLOCK_C):
                            cc = c0 + cs
                            idx = s * TEC + (t * E + es[:, None]) * C + cc[None, :]
                            m2 = used[:, None] & (cc < C)[None, :]
                            tot += tl.load(part_gz_ptr + idx, mask=m2, other=0.0)
                    per_edge = tl.sum(tot, axis=1)
                    hit = (cols[:, None] == ks[None, :]) & used[:, None]
                    gw += tl.where(hit, per_edge[:, None], 0.0)
                out = es[:, None] * K + ks[None, :]
                wmask = emask[:, None] & (ks < K)[None, :]
                tl.store(grad_w_ptr + out, gw.to(grad_w_ptr.dtype.element_ty), mask=wmask)
        else:
            n, c, _, hw, roff, hmask = _row_block(C, HW, BLOCK_HW)
            n64 = n.to(tl.int64)
            c64 = c.to(tl.int64)
            hw64 = hw.to(tl.int64)
            ss = tl.arange(0, BLOCK_S)
            smask = ss < SPLIT
            tid = tl.load(table_ptr + WANT_T + j)
            r = tl.load(table_ptr + WANT_R + j)
            for t in tl.static_range(NUM_TERMS):
                if tid == t:
                    zp, sr, sn, sc, sh = ZP[t], ZR[t], ZN[t], ZC[t], ZH[t]
                    gzp = GZ[t]
                    big_g = tl.zeros([BLOCK_HW], dtype=tl.float32)
                    acc_g = tl.zeros([BLOCK_S], dtype=tl.float32)  # sum_u w_u * partial sum(g_e)
                    acc_gz = tl.zeros([BLOCK_S], dtype=tl.float32)  # sum_u w_u * partial sum(g_e * zhat)
                    for f in tl.static_range(NUM_EDGES):
                        if (G_MASK >> f) & 1:  # noqa: SIM102 (compile-time, then run-time condition)
                            if tl.load(table_ptr + ROW + t * E + f) == r:  # edge f uses this row
                                col = tl.load(table_ptr + COL + t * E + f)
                                wv = tl.load(w_ptr + f * WS0 + col * WS1).to(tl.float32)
                                gp, gn, gc, gh = GP[f], GN[f], GC[f], GH[f]
                                gv = tl.load(gp + n64 * gn + c64 * gc + hw64 * gh, mask=hmask, other=0.0)
                                big_g += wv * gv.to(tl.float32)
                                if (NORM_MASK >> t) & 1:
                                    pg = tl.load(part_g_ptr + (ss * E + f) * C + c, mask=smask, other=0.0)
                                    pz_ptr = part_gz_ptr + ss * TEC + (t * E + f) * C + c
                                    acc_g += wv * pg
                                    acc_gz += wv * tl.load(pz_ptr, mask=smask, other=0.0)
                    if (NORM_MASK >> t) & 1:
                        js = tl.load(table_ptr + WANT_S + j)
                        mean = tl.load(mean_ptr + js * C + c)
                        rstd = tl.math.rsqrt(tl.load(var_ptr + js * C + c) + eps)
                        zrow = zp + r.to(tl.int64) * sr + c64 * sc
                        zv = tl.load(zrow + n64 * sn + hw64 * sh, mask=hmask, other=0.0).to(tl.float32)
                        sum_g = tl.sum(acc_g, axis=0)
                        sum_gz = tl.sum(acc_gz, axis=0)
                        zhat = (zv - mean) * rstd
                        gz = rstd * (big_g - sum_g * INV_M - zhat * (sum_gz * INV_M))
                    else:
                        gz = big_g
                    out = gzp + r.to(tl.int64) * PLANE + roff
                    tl.store(out, gz.to(gzp.dtype.element_ty), mask=hmask)


def _num_splits(m: int, programs: int) -> int:
    """Number of chunks the N*H*W reductions are split into (``programs``: those of one split;
    :func:`fastnas.kernels._common.num_splits`); 1 under the interpreter."""
    return 1 if TRITON_INTERPRET else _common.num_splits(m, programs, _BLOCK_R, _MAX_SPLITS)


_empty = _common.empty  # the buffers the kernels write in full (tests replace it with a NaN fill)


def _term_args(planes: list[tuple[Tensor, int, int, int, int]]) -> list[Tensor | int]:
    """The term arguments ``z0..z15, zr.., zn.., zc.., zh..`` (unused slots repeat the first term)."""
    padded = planes + [planes[0]] * (MAX_TERMS - len(planes))
    return [p[i] for i in range(5) for p in padded]


def _edge_args(grads: list[Tensor | None]) -> list[Tensor | int]:
    """The gradient arguments ``g0..g7, gn.., gc.., gh..`` (missing and unused slots: another gradient)."""
    present = [g for g in grads if g is not None]
    filler = present[0]
    planes = [_plane(filler if g is None else g) for g in grads]
    padded = planes + [planes[0]] * (MAX_EDGES - len(planes))
    return [p[i] for i in (0, 2, 3, 4) for p in padded]


def _pad(ptrs: list[Tensor], size: int) -> list[Tensor]:
    return ptrs + [ptrs[0]] * (size - len(ptrs))


def _launch_forward(
    terms: list[Tensor], plan: _Plan, weights: Tensor, eps: float
) -> tuple[list[Tensor], Tensor, Tensor]:
    """Triton forward on the terms as they are (strided, :func:`_plane`)."""
    z0 = terms[0]
    n, c, h, wd = z0.shape[-4:]
    hw, m = h * wd, n * h * wd
    dev = z0.device
    num_e = plan.num_edges
    planes = [_plane(t) for t in terms]
    table, off = _table(plan, dev)
    n_stat = len(plan.stat_rows)
    splits = 1
    outs = [_empty((n, c, h, wd), dev, z0.dtype) for _ in range(num_e)]
    mean = _empty((n_stat, c), dev, torch.float32)
    var = _empty((n_stat, c), dev, torch.float32)
    psum = psumsq = mean
    if n_stat:
        chunk, splits = _common.split_chunks(m, _num_splits(m, c * n_stat), _BLOCK_R)
        psum = _empty((splits, n_stat, c), dev, torch.float32)
        psumsq = _empty((splits, n_stat, c), dev, torch.float32)
        _stats_kernel[(c, splits, n_stat)](
            *_term_args(planes),
            table,
            psum,
            psumsq,
            c,
            hw,
            m,
            chunk,
            n_stat * c,
            off["stat_t"],
            off["stat_r"],
            NUM_TERMS=plan.num_terms,
            NORM_MASK=plan.norm_mask,
            BLOCK=_BLOCK_R,
        )
    block_hw = _common.pow2_block(hw, hi=_BLOCK_HW)
    _forward_kernel[(n * c, triton.cdiv(hw, block_hw), num_e)](
        *_term_args(planes),
        *_pad(outs, MAX_EDGES),
        weights,
        table,
        psum,
        psumsq,
        mean,
        var,
        c,
        hw,
        1.0 / m,
        num_e,
        n_stat * c,
        splits,
        weights.stride(0),
        weights.stride(1),
        off["row"],
        off["col"],
        off["stat"],
        float(eps),
        NUM_TERMS=plan.num_terms,
        NUM_EDGES=num_e,
        NORM_MASK=plan.norm_mask,
        BLOCK_S=_common.pow2_block(splits, 2),
        BLOCK_HW=block_hw,
    )
    return outs, mean, var


def _launch_backward(
    grads: list[Tensor | None], terms: list[Tensor], plan: _Plan, weights: Tensor, mean: Tensor,
    var: Tensor, eps: float, want_terms: list[bool], want_weights: bool,
    targets: list[Tensor] | None = None,
) -> tuple[list[Tensor], Tensor]:  # fmt: skip
    """Triton backward on the terms and incoming gradients as they are (strided): the wanted terms'
    gradients (contiguous, or written into ``targets``: contiguous views; the others empty) and grad
    weights (empty when not wanted)."""
    z0 = terms[0]
    n, c, h, wd = z0.shape[-4:]
    hw, m = h * wd, n * h * wd
    dev = z0.device
    num_e, num_t = plan.num_edges, plan.num_terms
    term_grads = targets or [
        _empty(tuple(t.shape), dev, z0.dtype) if want else z0.new_empty((0,))
        for t, want in zip(terms, want_terms, strict=True)
    ]
    grad_w = _empty(tuple(weights.shape), dev, weights.dtype) if want_weights else weights.new_empty((0,))
    if not any(want_terms) and not want_weights:
        return term_grads, grad_w
    planes = [_plane(t) for t in terms]
    table, off = _table(plan, dev, want_terms)
    g_mask = sum(1 << e for e, g in enumerate(grads) if g is not None)
    edge_args = _edge_args(grads)
    chunk, splits = _common.split_chunks(m, _num_splits(m, c * num_e), _BLOCK_R)
    part_g = _empty((splits, num_e, c), dev, torch.float32)
    part_gz = _empty((splits, num_t, num_e, c), dev, torch.float32)
    tec = num_t * num_e * c
    _backward_reduce_kernel[(c, splits, num_e)](
        *_term_args(planes),
        *edge_args,
        table,
        mean,
        var,
        part_g,
        part_gz,
        c,
        hw,
        m,
        chunk,
        num_e,
        tec,
        off["row"],
        off["stat"],
        float(eps),
        NUM_TERMS=num_t,
        NUM_EDGES=num_e,
        NORM_MASK=plan.norm_mask,
        G_MASK=g_mask,
        BLOCK_T=_common.pow2_block(num_t, 2, _BLOCK_T),
        BLOCK_R=_BLOCK_R,
    )
    n_rows = sum(plan.rows[t] for t in range(num_t) if want_terms[t])
    block_hw = _common.pow2_block(hw, hi=_BLOCK_HW)
    # the weight-gradient program is the last one (j = n_rows); alone when no term gradient is wanted
    grid = (n * c, triton.cdiv(hw, block_hw), n_rows + int(want_weights)) if n_rows else (1, 1, 1)
    targets = [g if g.numel() else planes[0][0] for g in term_grads]
    _backward_finish_kernel[grid](
        *_term_args(planes),
        *_pad(targets, MAX_TERMS),
        *edge_args,
        weights,
        grad_w if want_weights else part_g,
        table,
        mean,
        var,
        part_g,
        part_gz,
        c,
        hw,
        1.0 / m,
        num_e,
        weights.shape[1],
        tec,
        n * c * hw,
        splits,
        n_rows,
        weights.stride(0),
        weights.stride(1),
        off["row"],
        off["col"],
        off["want_t"],
        off["want_r"],
        off["want_s"],
        float(eps),
        NUM_TERMS=num_t,
        NUM_EDGES=num_e,
        NORM_MASK=plan.norm_mask,
        G_MASK=g_mask,
        BLOCK_S=_common.pow2_block(splits, 2),
        BLOCK_HW=block_hw,
        BLOCK_E=_common.pow2_block(num_e, 2),
        BLOCK_K=_common.pow2_block(weights.shape[1], 2),
        BLOCK_C=_common.pow2_block(c, 2, _BLOCK_WC),
    )
    return term_grads, grad_w


# --------------------------------------------------------------------------------------------------
# Batched terms holding several rows of one edge (merged op types): cut into runs of distinct edges
# --------------------------------------------------------------------------------------------------


def _runs(edges: Sequence[int], sizes: Sequence[int], terms: Sequence[Tensor]) -> list[tuple[int, int, int]]:
    """``(term, first row, rows)`` of the *virtual* terms the kernels see: a batched term whose rows repeat
    an edge (e.g. the rows of two conv op types run as one batch) is cut into runs of consecutive rows
    with distinct edges, each a view of the term; any other term is one run."""
    runs: list[tuple[int, int, int]] = []
    pos = 0
    for t, size in enumerate(sizes):
        te = edges[pos : pos + size]
        pos += size
        if terms[t].dim() == 4 or len(set(te)) == len(te):
            runs.append((t, 0, size))
            continue
        start, seen = 0, set[int]()
        for r, e in enumerate(te):
            if e in seen:
                runs.append((t, start, r - start))
                start, seen = r, set[int]()
            seen.add(e)
        runs.append((t, start, size - start))
    return runs


_Expanded = tuple[list[Tensor], list[int], list[int], list[int], list[bool], list[tuple[int, int, int]]]


def _expand(
    terms: Sequence[Tensor], edges: Sequence[int], cols: Sequence[int], sizes: Sequence[int],
    normalize: Sequence[bool],
) -> _Expanded:  # fmt: skip
    """The operators' arguments over the virtual terms of :func:`_runs` (views: no copy), and the runs."""
    runs = _runs(edges, sizes, terms)
    if len(runs) == len(terms):
        return list(terms), list(edges), list(cols), list(sizes), list(normalize), runs
    starts = [sum(sizes[:t]) for t in range(len(sizes))]
    v_terms: list[Tensor] = []
    v_edges: list[int] = []
    v_cols: list[int] = []
    v_sizes: list[int] = []
    v_norm: list[bool] = []
    for t, first, rows in runs:
        z = terms[t]
        v_terms.append(z if z.dim() == 4 or rows == z.shape[0] else z[first : first + rows])
        at = starts[t] + first
        v_edges += edges[at : at + rows]
        v_cols += cols[at : at + rows]
        v_sizes.append(rows)
        v_norm.append(normalize[t])
    return v_terms, v_edges, v_cols, v_sizes, v_norm, runs


# --------------------------------------------------------------------------------------------------
# Registered operators
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("fastnas::edge_group_sum", mutates_args=())
def _edge_group_sum_op(
    terms: list[Tensor], edges: list[int], cols: list[int], sizes: list[int], normalize: list[bool],
    weights: Tensor, eps: float,
) -> tuple[list[Tensor], Tensor, Tensor]:  # fmt: skip
    """``(outs, mean, var)``: the E outputs and the statistics of every normalised term row, stacked
    [rows, C] in term order. Triton where :func:`triton_supports` (and T <= 16, E <= 8), else PyTorch."""
    terms, edges, cols, sizes, normalize, _ = _expand(terms, edges, cols, sizes, normalize)
    plan = _plan_of(terms, edges, cols, sizes, normalize, weights.shape[0])
    if _kernels_run(terms, plan):
        return _launch_forward(terms, plan, weights, eps)
    return _torch_forward(terms, plan, weights, eps)


@_edge_group_sum_op.register_fake
def _edge_group_sum_fake(
    terms: list[Tensor], edges: list[int], cols: list[int], sizes: list[int], normalize: list[bool],
    weights: Tensor, eps: float,
) -> tuple[list[Tensor], Tensor, Tensor]:  # fmt: skip
    terms, edges, cols, sizes, normalize, _ = _expand(terms, edges, cols, sizes, normalize)
    plan = _plan_of(terms, edges, cols, sizes, normalize, weights.shape[0])
    z0 = terms[0]
    shape = tuple(z0.shape[-4:])
    sd = _common.acc_dtype(z0.dtype)
    rows = len(plan.stat_rows)
    outs = [z0.new_empty(shape) for _ in range(plan.num_edges)]
    return outs, z0.new_empty((rows, shape[1]), dtype=sd), z0.new_empty((rows, shape[1]), dtype=sd)


@torch.library.custom_op("fastnas::edge_group_sum_backward", mutates_args=())
def _edge_group_sum_backward_op(
    grads: list[Tensor | None], terms: list[Tensor], edges: list[int], cols: list[int], sizes: list[int],
    normalize: list[bool], weights: Tensor, mean: Tensor, var: Tensor, eps: float, want_terms: list[bool],
    want_weights: bool,
) -> tuple[list[Tensor], Tensor]:  # fmt: skip
    """``(grad terms, grad weights)``: one contiguous gradient per wanted term (an empty tensor for the
    others) and grad weights [E, K] (empty when not wanted)."""
    real, wanted_real = list(terms), [bool(f) for f in want_terms]
    terms, edges, cols, sizes, normalize, runs = _expand(real, edges, cols, sizes, normalize)
    plan = _plan_of(terms, edges, cols, sizes, normalize, weights.shape[0])
    z0 = terms[0]
    gs = [None if g is None else g.to(z0.dtype) for g in grads]
    wanted = [wanted_real[t] for t, _, _ in runs]
    kernels = _kernels_run(terms, plan) and mean.dtype == torch.float32 and var.dtype == torch.float32
    if len(runs) == len(real):
        if kernels and any(g is not None for g in gs):
            return _launch_backward(gs, terms, plan, weights, mean, var, eps, wanted, want_weights)
        return _torch_backward(gs, terms, plan, weights, mean, var, eps, wanted, want_weights)
    # virtual terms: each writes its rows of its term's one gradient (views), no cat afterwards
    grads_real = [
        _empty(tuple(t.shape), z0.device, z0.dtype) if want else z0.new_empty((0,))
        for t, want in zip(real, wanted_real, strict=True)
    ]
    targets = [
        grads_real[t][first : first + rows] if grads_real[t].numel() and real[t].dim() == 5 else grads_real[t]
        for t, first, rows in runs
    ]
    if kernels and any(g is not None for g in gs):
        _, grad_w = _launch_backward(gs, terms, plan, weights, mean, var, eps, wanted, want_weights, targets)
        return grads_real, grad_w
    virtual, grad_w = _torch_backward(gs, terms, plan, weights, mean, var, eps, wanted, want_weights)
    for target, g in zip(targets, virtual, strict=True):
        if target.numel():
            target.copy_(g)
    return grads_real, grad_w


@_edge_group_sum_backward_op.register_fake
def _edge_group_sum_backward_fake(
    grads: list[Tensor | None], terms: list[Tensor], edges: list[int], cols: list[int], sizes: list[int],
    normalize: list[bool], weights: Tensor, mean: Tensor, var: Tensor, eps: float, want_terms: list[bool],
    want_weights: bool,
) -> tuple[list[Tensor], Tensor]:  # fmt: skip
    term_grads = [
        t.new_empty(tuple(t.shape)) if want else t.new_empty((0,))
        for t, want in zip(terms, want_terms, strict=True)
    ]
    grad_w = weights.new_empty(tuple(weights.shape)) if want_weights else weights.new_empty((0,))
    return term_grads, grad_w


def _setup_context(ctx, inputs, output) -> None:
    terms, edges, cols, sizes, normalize, weights, eps = inputs
    _, mean, var = output
    ctx.num_terms = len(terms)
    ctx.structure = (list(edges), list(cols), list(sizes), list(normalize))
    starts = [sum(sizes[:t]) for t in range(len(sizes))]
    ctx.term_edges = [list(edges[s : s + n]) for s, n in zip(starts, sizes, strict=True)]
    ctx.eps = eps
    ctx.save_for_backward(weights, mean, var, *terms)
    # which inputs want gradients: requires_grad, and the engine will run their producer's backward
    ctx.term_grads = [(t.requires_grad, _common.grad_node(t)) for t in terms]
    ctx.weight_grad = (weights.requires_grad, _common.grad_node(weights))
    ctx.mark_non_differentiable(mean, var)
    # missing output gradients and mean/var's gradients are not materialised as zeros (each a launch)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_outs, _grad_mean, _grad_var):
    nothing = ([None] * ctx.num_terms, None, None, None, None, None, None)
    grads = list(grad_outs) if grad_outs is not None else []
    if all(g is None for g in grads):
        return nothing
    # a term none of whose edges gets a gradient gets none (not zeros)
    fed = [any(grads[e] is not None for e in edges_of) for edges_of in ctx.term_edges]
    want_terms = [
        f and _common.grad_wanted(req, node) for f, (req, node) in zip(fed, ctx.term_grads, strict=True)
    ]
    want_weights = _common.grad_wanted(*ctx.weight_grad)
    if not any(want_terms) and not want_weights:
        return nothing
    weights, mean, var, *terms = ctx.saved_tensors
    edges, cols, sizes, normalize = ctx.structure
    term_grads, grad_w = torch.ops.fastnas.edge_group_sum_backward(
        grads, terms, edges, cols, sizes, normalize, weights, mean, var, ctx.eps, want_terms, want_weights
    )
    return (
        [g if want else None for g, want in zip(term_grads, want_terms, strict=True)],
        None,
        None,
        None,
        None,
        grad_w if want_weights else None,
        None,
    )


_edge_group_sum_op.register_autograd(_backward, setup_context=_setup_context)


def _split_stats(stats: Tensor, terms: Sequence[Tensor], normalize: Sequence[bool]) -> list[Tensor]:
    """Per term its rows of the stacked statistics (a [0, C] view for identity terms)."""
    out, base = [], 0
    for z, flag in zip(terms, normalize, strict=True):
        rows = (z.shape[0] if z.dim() == 5 else 1) if flag else 0
        out.append(stats[base : base + rows])
        base += rows
    return out


def edge_group_sum(
    terms: Sequence[Tensor],
    term_edges: Sequence[Sequence[int]],
    term_cols: Sequence[Sequence[int]],
    normalize: Sequence[bool],
    weights: Tensor,
    eps: float = 1e-5,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """The E mixed-op sums of all edges leaving one state, BN(affine=False) with batch statistics folded
    in (module docstring).

    Args:
        terms: T tensors, one dtype and device, rows of one shape [N, C, H, W]: a batched term
            [R, N, C, H, W] (row r belongs to edge ``term_edges[t][r]``) or a shared term [N, C, H, W]
            (used by every edge of ``term_edges[t]``). Strided views and channels-last are read in place.
        term_edges: per term, the edge (0..E-1) of each row (batched) or the edges using it (shared); an
            edge at most once per term.
        term_cols: per term, the column of ``weights`` of each entry of ``term_edges[t]``.
        normalize: per term, True for BN (batch statistics; a shared term's computed once), False for the
            identity (added as it is).
        weights: [E, K] edge-op weights (any strides; a floating dtype, possibly not the terms').
        eps: BN epsilon.

    Returns:
        ``(outs, means, vars)``: E outputs [N, C, H, W] in the terms' dtype (contiguous); per term the batch
        mean and biased var [R or 1, C] (float32; float64 for float64; [0, C] for identity terms), not
        differentiable (:func:`fastnas.kernels.mixed_bn_sum.update_running_stats`).

    Raises ``ValueError``/``TypeError`` for malformed arguments, including an edge with no term. Uses the
    Triton operator when :func:`fastnas.kernels._common.use_kernels` allows, else
    :func:`edge_group_sum_reference`.
    """
    terms = _check_args(terms, term_edges, term_cols, normalize, weights)
    if not _common.use_kernels(terms[0]):
        return edge_group_sum_reference(terms, term_edges, term_cols, normalize, weights, eps)
    edges, cols, sizes = _flatten(term_edges, term_cols)
    flags = [bool(f) for f in normalize]
    outs, mean, var = torch.ops.fastnas.edge_group_sum(terms, edges, cols, sizes, flags, weights, float(eps))
    return list(outs), _split_stats(mean, terms, flags), _split_stats(var, terms, flags)
