"""The fast executor on every search method, against the reference loop, in float64.

Two search iterations of each method (its per-step hook, the architecture step, the weight step, both
optimisers: ``benchmarks.step.SearchStep``) from the same seed with the fast and the reference executor
must agree to 1e-10 relative on the losses, every gradient (weights and architecture), the parameters after
the updates and the BN running statistics. On a CPU the fast executor runs its batched math with PyTorch
ops (the kernels' float64 path), so this checks the schedule itself: batched edges, per-edge candidate
sets, P-DARTS' skip dropout, the sparse active sets of EDAS and DDSAS, partial channels. The supernet-level
cases build the awkward edges directly: one op alone, ``none`` alone, identity beside ``none``.
"""

from __future__ import annotations

import copy
import sys
import warnings

import pytest
import torch
from conftest import REPO_ROOT

from fastnas.methods import METHODS
from fastnas.nn import PartialChannels, Supernet
from fastnas.nn.fast_executor import cell_plan
from fastnas.spaces import DartsSpace

if str(REPO_ROOT) not in sys.path:  # `benchmarks` is a folder of the repository
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.step import build_search_step, stage_space

RTOL = 1e-10
REFUSING = {"entrannas", "entrannas-dst"}  # EnTranNAS' engine cells have no fast path yet (issue 27)


def _run_method(
    method: str, executor: str, space: DartsSpace | None = None, skip_dropout: float = 0.0, order: int = 1
):
    """Two float64 iterations; returns (losses, grads, params, buffers) by name."""
    step = build_search_step(
        4,
        "cpu",
        C=4,
        layers=3,
        image_size=8,
        executor=executor,
        method=method,
        seed=3,
        space=space,
        order=order,
    )
    step.model.double()
    step.train_batch = (step.train_batch[0].double(), step.train_batch[1])
    step.val_batch = (step.val_batch[0].double(), step.val_batch[1])
    if skip_dropout:
        step.model.supernet.set_skip_dropout(skip_dropout)
    torch.manual_seed(11)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a fallback to the reference loop warns: fail
        for _ in range(2):  # SearchStep.__call__, keeping both losses
            step.model.start_step(step.epoch, step.step_index)
            step.step_index += 1
            losses += [step.arch_step(), step.weight_step()]
    named = dict(step.model.named_parameters())
    grads = {n: p.grad.detach().clone() for n, p in named.items() if p.grad is not None}
    params = {n: p.detach().clone() for n, p in named.items()}
    buffers = {
        n: b.detach().clone() for n, b in step.model.named_buffers() if "running" in n or "tracked" in n
    }
    return losses, grads, params, buffers


def _assert_agree(got, want) -> None:
    for x, y in zip(got[0], want[0], strict=True):
        torch.testing.assert_close(x, y, rtol=RTOL, atol=1e-12, msg="loss")
    for kind, g, w in zip(("grad", "param", "buffer"), got[1:], want[1:], strict=True):
        assert g.keys() == w.keys(), kind
        assert g, f"no {kind}s compared"
        for name in w:
            torch.testing.assert_close(g[name], w[name], rtol=RTOL, atol=1e-12, msg=f"{kind} {name}")


@pytest.mark.parametrize("method", [m for m in METHODS if m not in REFUSING])
def test_every_method_fast_equals_reference_float64(method: str) -> None:
    want = _run_method(method, "reference")
    got = _run_method(method, "fast")
    _assert_agree(got, want)
    assert any(g.abs().sum() > 0 for g in want[1].values())  # the comparison is not of zeros


def test_darts_second_order_fast_equals_reference_float64() -> None:
    """The unrolled architecture step (virtual step, finite differences) through the fast executor."""
    _assert_agree(_run_method("darts", "fast", order=2), _run_method("darts", "reference", order=2))


def test_pdarts_stage_with_candidates_and_skip_dropout_float64() -> None:
    """A later P-DARTS stage: 3 candidates per edge and skip-connect dropout 0.3 (masks drawn in the
    reference loop's edge order, so the same elements drop)."""
    space = stage_space(4, seed=2)
    want = _run_method("pdarts", "reference", space=space, skip_dropout=0.3)
    got = _run_method("pdarts", "fast", space=space, skip_dropout=0.3)
    _assert_agree(got, want)


@pytest.mark.parametrize("method", sorted(REFUSING))
def test_entrannas_refuses_the_fast_executor(method: str) -> None:
    with pytest.raises(Exception, match="fast"):
        build_search_step(4, "cpu", C=4, layers=3, image_size=8, executor="fast", method=method)


def _awkward_masks(space: DartsSpace, seed: int) -> dict[str, torch.Tensor]:
    """Random host masks with, on purpose, edges where one op runs alone (a conv, a pool, the identity),
    only ``none`` is chosen, the identity sits beside ``none``, and ordinary mixtures."""
    g = torch.Generator().manual_seed(seed)
    ops = list(space.ops)
    masks = {}
    for t in space.cell_types:
        mask = torch.rand(space.num_edges, space.num_ops, generator=g) < 0.4
        forced = {
            0: ["sep_conv_3x3"],
            1: ["none"],
            2: ["skip_connect"],
            3: ["skip_connect", "none"],
            4: ["max_pool_3x3"],
            5: ["none", "dil_conv_5x5", "avg_pool_3x3"],
        }
        for e, names in forced.items():
            mask[e] = False
            for name in names:
                mask[e, ops.index(name)] = True
        mask[mask.sum(1) == 0, ops.index("sep_conv_5x5")] = True
        masks[t] = mask
    return masks


@pytest.mark.parametrize("k", [1, 2])
def test_sparse_active_sets_supernet_float64(k: int) -> None:
    """The supernet with host masks (EDAS/DDSAS steps) and partial channels: logits, every gradient and
    the running statistics after two steps agree to 1e-10."""
    torch.manual_seed(0)
    space = DartsSpace()
    reference = Supernet(space, C=4, layers=3, num_classes=5, partial=PartialChannels(k)).double()
    fast = copy.deepcopy(reference)
    fast.set_executor("fast")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 8, 8, generator=gen, dtype=torch.float64)
    results = []
    for model in (reference, fast):
        out = []
        for seed in (0, 1):
            masks = _awkward_masks(space, seed)
            alphas = {
                t: torch.randn(
                    space.num_edges, space.num_ops, generator=torch.Generator().manual_seed(seed + 5)
                )
                .double()
                .requires_grad_(True)
                for t in space.cell_types
            }
            weights = {t: torch.softmax(a, -1) for t, a in alphas.items()}
            model.zero_grad(set_to_none=True)
            logits = model(x, weights, masks)
            (
                logits * torch.linspace(-1, 1, logits.numel(), dtype=torch.float64).view_as(logits)
            ).sum().backward()
            out.append(logits.detach())
            out.extend(a.grad.detach().clone() for a in alphas.values())
        out.extend(p.grad.detach().clone() for p in model.parameters() if p.grad is not None)
        out.extend(b.detach().clone() for n, b in model.named_buffers() if "running" in n)
        results.append(out)
    assert len(results[0]) == len(results[1])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, rtol=RTOL, atol=1e-12)


def test_plan_batches_each_op_type_once_per_source() -> None:
    """The schedule runs each op type once per source state for all the edges that compute it (the
    separable and the dilated convs each as one family), skips inactive pairs, and marks lone ops and
    `none`-only edges."""
    space = DartsSpace()
    model = Supernet(space, C=4, layers=3, num_classes=5)
    cell = model.cells[0]
    full = cell_plan(cell)
    assert not isinstance(full, str)
    for source in full.sources:
        names = [name for g in source.groups for name in g.name.split("+")]
        assert len(names) == len(set(names))  # each op type once
        for group in source.groups:
            # every edge leaving it computes every op of the group
            assert len(group.members) == len(source.edges) * len(group.name.split("+"))
        convs = {g.name: g.conv for g in source.groups}
        # the 3x3 kernels zero-padded to 5x5 about their centre: one run per family
        assert convs["sep_conv_3x3+sep_conv_5x5"] == (5, 1, 2, 1)
        assert convs["dil_conv_3x3+dil_conv_5x5"] == (5, 1, 4, 2)
    masks = _awkward_masks(space, 0)[model.cell_types[0]]  # the first cell is a normal cell
    sparse = cell_plan(cell, masks)
    assert not isinstance(sparse, str)
    plans = {p.edge: p for s in sparse.sources for p in s.edges}
    assert plans[0].alone and len(plans[0].bn_ops) == 1
    assert plans[1].zero and not plans[1].bn_ops
    assert plans[3].identity is not None and not plans[3].alone and not plans[3].bn_ops
    ran = sum(len(g.members) for s in sparse.sources for g in s.groups)
    active_bn = sum(len(p.bn_ops) for p in plans.values())
    assert ran == active_bn < sum(len(g.members) for s in full.sources for g in s.groups)
