"""``fastnas.compat.pdarts.Network``: P-DARTS' ``model_search.Network`` (Chen, Xie, Wu & Tian, "Progressive
Differentiable Architecture Search: Bridging the Depth Gap between Search and Evaluation", ICCV 2019),
driven the way P-DARTS' staged ``train_search.py`` drives it: a new, deeper network per stage over the ops
still switched on, ``[14, k]`` alphas read through ``softmax(arch_parameters())`` to switch off the weakest
ops, ``model.p = ...; model.update_p()`` for the skip-connect dropout."""

from __future__ import annotations

import math

import pytest
import torch
from test_compat import ARCH_LR, ARCH_WEIGHT_DECAY, GRAD_CLIP, LR, MOMENTUM, WEIGHT_DECAY, batch
from torch import nn

from fastnas.algorithms.architect import first_order_arch_gradients
from fastnas.compat import pdarts
from fastnas.errors import ConfigError
from fastnas.nn import MixedEdge
from fastnas.ops import DARTS_OPS
from fastnas.search_model import SearchModel
from fastnas.spaces import DartsSpace

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NONE = DARTS_OPS.index("none")
SKIP = DARTS_OPS.index("skip_connect")
NODE_EDGES = [[0, 1], [2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12, 13]]  # the edges into each node
ALL_ON = [[True] * 8 for _ in range(14)]


def switches_keeping(k: int, seed: int) -> list[list[bool]]:
    """14 random rows of 8 switches with ``k`` on each (``none`` always off, so an edge computes)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(14):
        on = {1 + int(j) for j in torch.randperm(7, generator=g)[:k]}
        rows.append([j in on for j in range(8)])
    return rows


def on_columns(switches: list[list[bool]]) -> torch.Tensor:
    return torch.tensor([[j for j, on in enumerate(row) if on] for row in switches])


def network(
    switches_normal=None, switches_reduce=None, p: float = 0.0, layers: int = 3, **kw
) -> pdarts.Network:
    return pdarts.Network(
        4, 10, layers, nn.CrossEntropyLoss(), switches_normal=switches_normal,
        switches_reduce=switches_reduce, p=p, **kw,
    ).double()  # fmt: skip


def data_parallel(model: nn.Module) -> nn.Module:
    """P-DARTS wraps its network in ``nn.DataParallel`` (on a machine without CUDA: a plain call)."""
    if not torch.cuda.is_available():
        return nn.DataParallel(model)
    return nn.ModuleDict({"module": model})  # the same names; the tests' model stays on the CPU


def skip_rates(model: nn.Module) -> list[float]:
    return [e.skip_dropout for m in model.modules() if isinstance(m, MixedEdge) for e in [m]]


# ------------------------------------------------------------------------------ P-DARTS' script, by hand
def drop_weakest(prob: torch.Tensor, switches: list[list[bool]], n: int, last: bool) -> list[list[bool]]:
    """P-DARTS' end of a stage: on every edge switch off the ``n`` switched-on ops of lowest probability
    (``prob[e, j]``: the ``j``-th switched-on op of edge ``e``); after the last stage ``none`` goes first,
    so the one op left computes."""
    out = [list(row) for row in switches]
    for e, row in enumerate(switches):
        on = [j for j, s in enumerate(row) if s]
        ranked = sorted(range(len(on)), key=lambda c: float(prob[e, c]))
        if last and on[0] == NONE:
            ranked = [0, *[c for c in ranked if c != 0]]
        for c in ranked[:n]:
            out[e][on[c]] = False
    return out


def final_genes(
    prob: torch.Tensor, switches: list[list[bool]], kept: list[list[bool]]
) -> list[tuple[str, int]]:
    """P-DARTS' genotype after the last stage: per node the two incoming edges whose strongest switched-on
    op other than ``none`` (``prob`` of the last stage) is strongest, each with the op ``kept`` left on."""
    strength = []
    for e, row in enumerate(switches):
        on = [j for j, s in enumerate(row) if s]
        strength.append(max(float(prob[e, c]) for c, j in enumerate(on) if j != NONE))
    genes = []
    for edges in NODE_EDGES:
        for e in sorted(edges, key=lambda e: -strength[e])[:2]:
            (op,) = [j for j, s in enumerate(kept[e]) if s]
            genes.append((DARTS_OPS[op], e - edges[0]))
    return genes


def test_a_staged_pdarts_run_reads_and_writes_the_alphas_as_fastnas_pdarts_masks_them() -> None:
    """Three stages as P-DARTS' script runs them (all 8 ops; then 5 after dropping the 3 weakest per edge;
    then 3; deeper each stage; skip-connect dropout rates 0.0, 0.3, 0.6 through ``model.p`` and
    ``update_p()``), against fastnas's own P-DARTS (same seeds) on the candidate sets it keeps itself:
    the same ``[14, k]`` softmax, dropout rates, steps, kept ops and final genotype."""
    rates, depths, drops, epochs, warmup = (0.0, 0.3, 0.6), (3, 4, 5), (3, 2, 2), 2, 1
    options = {
        "stage_epochs": (epochs,) * 3,
        "stage_layers": depths,
        "keep_ops": (5, 3, 1),
        "skip_dropout": rates,
        "warmup_epochs": warmup,
        "max_skip": 8,  # P-DARTS' script limits the skip-connects after this; compare the plain rule
    }
    switches = {"normal": ALL_ON, "reduce": ALL_ON}
    candidates: dict[str, list[list[int]]] | None = None
    for stage in range(3):
        torch.manual_seed(10 + stage)
        model = data_parallel(
            network(switches["normal"], switches["reduce"], p=rates[stage], layers=depths[stage], max_skip=8)
        )
        torch.manual_seed(10 + stage)
        space = DartsSpace() if candidates is None else DartsSpace().with_candidates(candidates)
        native = SearchModel.build("pdarts", space=space, C=4, layers=depths[stage], **options).double()
        native.algorithm.start_stage(stage, None)
        k = 8 - sum(drops[:stage])
        start = [a.detach().clone() for a in model.module.arch_parameters()]
        assert model.module.switch_on == k
        assert [tuple(a.shape) for a in model.module.arch_parameters()] == [(14, k), (14, k)]

        # the script's optimisers: weights by name (DataParallel's names), the [14, k] alphas with Adam
        network_params = [
            v for n, v in model.named_parameters() if not n.endswith(("alphas_normal", "alphas_reduce"))
        ]
        assert {id(v) for v in network_params} == {id(v) for v in model.module.search.supernet.parameters()}
        optimizer = torch.optim.SGD(network_params, LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        optimizer_a = torch.optim.Adam(
            model.module.arch_parameters(), lr=ARCH_LR, betas=(0.5, 0.999), weight_decay=ARCH_WEIGHT_DECAY
        )
        weights = native.weight_parameters()
        native_w = torch.optim.SGD(weights, LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        native_a = torch.optim.Adam(
            native.arch_parameters(), lr=ARCH_LR, betas=(0.5, 0.999), weight_decay=ARCH_WEIGHT_DECAY
        )
        for epoch in range(epochs):
            if epoch < warmup:
                rate = rates[stage] * (epochs - epoch - 1) / epochs
            else:
                rate = rates[stage] * math.exp(-(epoch - warmup) * 0.2)
            model.module.p = rate
            model.module.update_p()
            native.start_epoch(epoch, epochs)
            expected = rate if rates[stage] > 0 else 0.0  # a network built with p = 0 has no dropout
            assert skip_rates(model) == pytest.approx([expected] * len(skip_rates(model)), abs=1e-15)
            assert skip_rates(native) == skip_rates(model)
            train, valid = batch(100 * stage + 2 * epoch), batch(100 * stage + 2 * epoch + 1)
            if epoch >= warmup:
                torch.manual_seed(epoch)  # the same dropout masks on both sides
                optimizer_a.zero_grad()
                nn.CrossEntropyLoss()(model(valid[0]), valid[1]).backward()
                nn.utils.clip_grad_norm_(model.module.arch_parameters(), GRAD_CLIP)
                optimizer_a.step()
                torch.manual_seed(epoch)
                grads, _ = first_order_arch_gradients(native, valid)
                for alpha, g in zip(native.arch_parameters(), grads):
                    alpha.grad = g
                nn.utils.clip_grad_norm_(native.arch_parameters(), GRAD_CLIP)
                native_a.step()
            torch.manual_seed(50 + epoch)
            optimizer.zero_grad()
            nn.CrossEntropyLoss()(model(train[0]), train[1]).backward()
            nn.utils.clip_grad_norm_(network_params, GRAD_CLIP)
            optimizer.step()
            torch.manual_seed(50 + epoch)
            native_w.zero_grad()
            native.loss(*train).backward()
            nn.utils.clip_grad_norm_(weights, GRAD_CLIP)
            native_w.step()

        # the stage's end: the script reads softmax([14, k]); fastnas masks [14, 8]
        arch = model.module.arch_parameters()
        probs = {}
        for t, alpha, native_alpha, alpha0 in zip(switches, arch, native.arch_parameters(), start):
            cols = on_columns(switches[t])
            torch.testing.assert_close(alpha, native_alpha.gather(1, cols), rtol=1e-9, atol=1e-12)
            assert (alpha.detach() - alpha0).abs().max() > 1e-2  # the architecture step moved them
            probs[t] = torch.softmax(alpha.detach(), dim=-1)
            ours = model.module.search.algorithm.arch_weights()[t]  # the compat network's own method
            for weights_of in (native.algorithm.arch_weights()[t], ours):
                torch.testing.assert_close(probs[t], weights_of.gather(1, cols), rtol=1e-9, atol=1e-12)
                off = torch.ones_like(weights_of, dtype=torch.bool).scatter(1, cols, False)
                assert torch.all(weights_of[off] == 0)
        model.eval()
        native.eval()
        x, _ = batch(7)
        torch.testing.assert_close(model(x), native(x), rtol=1e-9, atol=1e-12)

        last = stage == 2
        kept = {t: drop_weakest(probs[t], switches[t], drops[stage], last) for t in switches}
        if not last:
            candidates = native.algorithm.next_candidates()
            for t in switches:
                assert on_columns(kept[t]).tolist() == candidates[t]  # fastnas keeps the same ops
            switches = kept
        else:
            genotype = model.module.genotype()
            assert genotype == native.genotype()
            for t, genes in (("normal", genotype.normal), ("reduce", genotype.reduce)):
                assert sorted(genes) == sorted(final_genes(probs[t], switches[t], kept[t]))


def test_the_alphas_are_k_wide_over_the_switched_on_ops_only() -> None:
    normal, reduce = switches_keeping(5, 1), switches_keeping(5, 2)
    torch.manual_seed(0)
    model = network(normal, reduce)
    assert model.switch_on == 5
    assert model.switches_normal == normal and model.switches_reduce == reduce
    assert model.alphas_normal.shape == model.alphas_reduce.shape == (14, 5)
    assert model.arch_parameters() == [model.alphas_normal, model.alphas_reduce]
    assert all(a.abs().max() < 1e-2 for a in model.arch_parameters())  # 1e-3 * randn, as P-DARTS
    for cell, cell_type in zip(model.search.supernet.cells, model.search.supernet.cell_types):
        rows = normal if cell_type == "normal" else reduce
        for edge, row in zip(cell.edges, rows):
            assert list(edge.op_names) == [DARTS_OPS[j] for j, on in enumerate(row) if on]
    # the [14, k] alphas carry fastnas's masked softmax, in both directions
    with torch.no_grad():
        for alpha in model.arch_parameters():
            alpha.normal_()
    for t, alpha, rows in (("normal", model.alphas_normal, normal), ("reduce", model.alphas_reduce, reduce)):
        weights = model.search.algorithm.arch_weights()[t]
        cols = on_columns(rows)
        torch.testing.assert_close(weights.gather(1, cols), torch.softmax(alpha, -1), rtol=1e-12, atol=0)
        assert float(weights.detach().sum()) == pytest.approx(14)
    model._loss(*batch(1)).backward()
    assert all(a.grad is not None and a.grad.shape == (14, 5) for a in model.arch_parameters())


def test_parameters_include_the_alphas_first_as_in_pdarts() -> None:
    """P-DARTS' alphas are module parameters: its parameter count includes them (all ops on, C=16, 5
    cells: the DARTS code's 1,275,834 weights plus 2 x 14 x 8 alphas)."""
    model = pdarts.Network(16, 10, 5, nn.CrossEntropyLoss())
    assert sum(p.numel() for p in model.parameters()) == 1_275_834 + 2 * 14 * 8
    names = [n for n, _ in model.named_parameters()]
    assert names[:2] == ["alphas_normal", "alphas_reduce"]
    assert all(n.split(".")[0] in ("stem", "cells", "classifier") for n in names[2:])
    wrapped = [n for n, _ in data_parallel(model).named_parameters()]
    assert wrapped[:2] == ["module.alphas_normal", "module.alphas_reduce"]
    assert sum(n.endswith(("alphas_normal", "alphas_reduce")) for n in wrapped) == 2


def test_update_p_sets_the_skip_dropout_as_pdarts() -> None:
    torch.manual_seed(0)
    model = network(p=0.2)
    assert set(skip_rates(model)) == {0.2}
    model.p = 0.5
    model.update_p()
    assert set(skip_rates(model)) == {0.5}
    built_without = network(p=0.0)
    built_without.p = 0.5
    built_without.update_p()  # P-DARTS builds no dropout for p = 0: nothing to update
    assert set(skip_rates(built_without)) == {0.0}
    # the dropout acts on the identity skip in training mode only
    torch.manual_seed(0)
    plain = network(p=0.0)
    plain.load_state_dict(model.state_dict())
    x, _ = batch(3)
    for m in (model, plain):
        m.eval()
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)
    for m in (model, plain):
        m.train()
    assert not torch.allclose(model(x), plain(x))


def test_state_dict_and_new_keep_the_k_wide_alphas() -> None:
    """``utils.save`` of the DataParallel-wrapped network, loaded into a fresh one of the same switches."""
    normal = switches_keeping(3, 4)
    torch.manual_seed(0)
    model = network(normal, normal, p=0.1)
    with torch.no_grad():
        model.alphas_normal.normal_()
    state = data_parallel(model).state_dict()
    assert state["module.alphas_normal"].shape == (14, 3)
    assert not [k for k in state if "search." in k]
    torch.manual_seed(1)
    fresh = network(normal, normal, p=0.1)
    data_parallel(fresh).load_state_dict(state)
    assert torch.equal(fresh.alphas_normal, model.alphas_normal)
    other = model.new()
    assert torch.equal(other.alphas_normal, model.alphas_normal) and other.switches_normal == normal
    x, _ = batch(2)
    for m in (model, fresh, other):
        m.eval()
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)


def test_bad_pdarts_arguments_are_clear_errors() -> None:
    uneven = [list(row) for row in ALL_ON]
    uneven[3][SKIP] = False
    with pytest.raises(ConfigError, match=r"same number k of ops, got \[7, 8\]"):
        network(uneven, ALL_ON)
    with pytest.raises(ConfigError, match="switches_reduce must be 14 lists"):
        network(ALL_ON, ALL_ON[:13])
    with pytest.raises(ConfigError, match=r"p, the skip-connect dropout rate, must be in \[0, 1\)"):
        network(p=1.0)
    with pytest.raises(TypeError, match="builds P-DARTS"):
        network(method="darts")
    only_none = [[j == NONE for j in range(8)] for _ in range(14)]
    with pytest.raises(ConfigError, match="other than 'none'"):
        network(only_none, only_none)
