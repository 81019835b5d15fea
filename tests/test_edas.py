"""EDAS (Hong, Ahn & Kim, "EDAS: Efficient and Differentiable Architecture Search", arXiv 2019): edge
sampling, the inversion warm-up, one relaxed edge per step, sparse execution, exact resume and short
searches on the DARTS and NAS-Bench-201 spaces."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SHARED_DATA, interrupt_search_at, require_shared, tiny_search

from fastnas import DartsSpace, SearchConfig, SearchModel, resume_search, run_search
from fastnas.algorithms import EDAS, EDASOptions
from fastnas.algorithms.edas import sampled_edges
from fastnas.cli import main
from fastnas.errors import ConfigError
from fastnas.genotype import Genotype
from fastnas.nb201 import NB201Arch, NB201Table
from fastnas.ops import Identity
from fastnas.spaces import NB201Space
from fastnas.train.search import SearchRunner

SPACE = DartsSpace()
OPS = list(SPACE.ops)
TYPES = SPACE.cell_types  # ("normal", "reduce")
EDGES = SPACE.num_edges  # 14
TABLE = SHARED_DATA / "nb201.csv"

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks: one thread is faster


def chi_square(counts: Counter[Any], cells: list[Any]) -> float:
    """Pearson's statistic of ``counts`` against the uniform distribution over ``cells``."""
    total = sum(counts[c] for c in cells)
    expected = total / len(cells)
    return sum((counts[c] - expected) ** 2 / expected for c in cells)


def randomised(alg: EDAS, seed: int, scale: float = 1.0) -> EDAS:
    """``alg`` with well-separated random alphas (the argmax of every row is unambiguous)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in alg.alphas.values():
            a.copy_(scale * torch.randn(a.shape, generator=g))
    return alg


def one_hot(index: int, size: int) -> torch.Tensor:
    row = torch.zeros(size)
    row[index] = 1.0
    return row


# ------------------------------------------------------------------------------------------ sampling


def test_sampled_edges_are_a_pure_function_of_seed_epoch_and_step() -> None:
    args = (TYPES, EDGES, "per-cell-type")
    draws = [sampled_edges(7, 3, s, *args) for s in range(300)]
    assert draws == [sampled_edges(7, 3, s, *args) for s in range(300)]  # same arguments, same draw
    assert all(set(d) == set(TYPES) for d in draws)  # one edge per cell type
    assert all(isinstance(v, int) and 0 <= v < EDGES for d in draws for v in d.values())
    # 196 possible pairs: consecutive steps (and other epochs / seeds) give other draws
    assert len({tuple(d.values()) for d in draws}) > 120
    assert sum(a == b for a, b in itertools.pairwise(draws)) < 10
    assert [sampled_edges(7, 4, s, *args) for s in range(50)] != draws[:50]
    assert [sampled_edges(8, 3, s, *args) for s in range(50)] != draws[:50]
    # NAS-Bench-201: one cell type of 6 edges
    nb = [sampled_edges(1, 0, s, ("cell",), 6, "per-cell-type") for s in range(100)]
    assert all(set(d) == {"cell"} and 0 <= d["cell"] < 6 for d in nb)
    assert {d["cell"] for d in nb} == set(range(6))


def test_per_cell_type_sampling_is_uniform_and_independent_across_cell_types() -> None:
    n = 200 * EDGES
    draws = [sampled_edges(11, s // 100, s % 100, TYPES, EDGES, "per-cell-type") for s in range(n)]
    for t in TYPES:
        counts = Counter(d[t] for d in draws)
        # chi-square with 13 degrees of freedom: P(> 60) < 1e-7 for a uniform draw
        assert chi_square(counts, list(range(EDGES))) < 60, counts
    same = sum(d["normal"] == d["reduce"] for d in draws) / n
    assert 0.03 < same < 0.12  # independent draws agree with probability 1/14 ~ 0.071


def test_all_mode_relaxes_exactly_one_edge_among_every_cell_types_edges() -> None:
    n = 200 * EDGES * len(TYPES)
    draws = [sampled_edges(5, s // 100, s % 100, TYPES, EDGES, "all") for s in range(n)]
    picks = []
    for d in draws:
        assert set(d) == set(TYPES)
        chosen = [(t, e) for t, e in d.items() if e is not None]
        assert len(chosen) == 1
        t, e = chosen[0]
        assert isinstance(e, int) and 0 <= e < EDGES
        picks.append((t, e))
    slots = [(t, e) for t in TYPES for e in range(EDGES)]
    # chi-square with 27 degrees of freedom: P(> 85) < 1e-7 for a uniform draw over the 28 edges
    assert chi_square(Counter(picks), slots) < 85
    by_type = Counter(t for t, _ in picks)
    assert abs(by_type["normal"] / n - 0.5) < 0.03


def test_the_algorithm_draws_from_its_checkpointed_sampling_seed() -> None:
    torch.manual_seed(0)
    first = EDAS(SPACE)
    torch.manual_seed(1)
    second = EDAS(SPACE)
    assert first.sample_seed != second.sample_seed
    for mode in ("per-cell-type", "all"):
        alg = EDAS(SPACE, sample=mode)
        alg.load_state_dict(first.state_dict())  # the seed travels with the state dict
        assert alg.sample_seed == first.sample_seed
        for epoch, step in [(0, 0), (0, 1), (3, 7), (12, 2)]:
            alg.on_step(epoch, step)
            assert alg.sample is not None
            assert alg.sample.edges == sampled_edges(first.sample_seed, epoch, step, TYPES, EDGES, mode)


# ------------------------------------------------------------------------------- inversion schedule

T, F = True, False
PATTERNS = {  # which of the steps 0..11 of a warm-up epoch are inverted (the docstring of edas.py)
    0: [T] * 12,  # every warm-up iteration (sections 4.1, 5.3)
    1: [T, F] * 6,
    3: [T, T, T, F, F, F] * 2,  # blocks of P iterations, inverted first
    5: [T] * 5 + [F] * 5 + [T] * 2,
}


@pytest.mark.parametrize("period", sorted(PATTERNS))
@pytest.mark.parametrize("warmup", [10, 2])
def test_the_inversion_schedule(period: int, warmup: int) -> None:
    options = (
        {"inversion_period": period} if warmup == 10 else {"inversion_period": period, "warmup_epochs": 2}
    )
    alg = EDAS(SPACE, **options)
    assert alg.options.warmup_epochs == warmup
    for epoch in range(12):
        for step in range(12):
            alg.on_step(epoch, step)
            assert alg.sample is not None
            expected = epoch < warmup and PATTERNS[period][step]
            assert alg.sample.inverted is expected, (epoch, step)
            assert alg.inverted(epoch, step) is expected


def test_arch_weight_decay_is_1e_3_in_the_warmup_and_the_configured_value_after() -> None:
    configured = SearchConfig(method="edas", dataset="digits").resolved().arch_weight_decay
    assert configured == 0.0  # Hong et al. 2019, section 4.1: no alpha weight decay outside warm-up
    alg = EDAS(SPACE)
    for epoch in range(10):
        assert alg.arch_optimizer_settings(epoch) == {"weight_decay": pytest.approx(1e-3)}
    for epoch in (10, 11, 24):  # nothing overridden: the run's configured value applies
        assert alg.arch_optimizer_settings(epoch) == {}
    custom = EDAS(SPACE, warmup_epochs=2, warmup_arch_weight_decay=5e-3)
    assert [custom.arch_optimizer_settings(e) for e in range(4)] == [{"weight_decay": 5e-3}] * 2 + [{}] * 2
    assert EDAS(SPACE, warmup_epochs=0).arch_optimizer_settings(0) == {}


def test_evaluation_runs_the_argmax_of_the_current_alphas() -> None:
    """Evaluation mode: every edge one-hot on argmax(alpha), recomputed after any write to the alphas."""
    alg = randomised(EDAS(SPACE), seed=11).eval()
    for round_ in range(2):
        expected = {t: a.detach().argmax(-1) for t, a in alg.alphas.items()}
        active = alg.active_set()
        for t in TYPES:
            assert torch.equal(active[t], torch.nn.functional.one_hot(expected[t], len(OPS)).bool())
        if round_ == 0:  # a write behind autograd's back, then the usual train/eval switch
            for a in alg.alphas.values():
                a.data.copy_(-a.data)
            alg.train().eval()


# ------------------------------------------------------------------------------------- edge weights


@pytest.mark.parametrize("epoch", [0, 10], ids=["warm-up", "after-warm-up"])
def test_the_sampled_edge_is_the_softmax_and_every_other_edge_its_argmax(epoch: int) -> None:
    alg = randomised(EDAS(SPACE), seed=3)
    sign = -1.0 if epoch < 10 else 1.0  # Eq. 3: -alpha in the warm-up
    for step in range(6):
        alg.on_step(epoch, step)
        edges = sampled_edges(alg.sample_seed, epoch, step, TYPES, EDGES, "per-cell-type")
        weights, active = alg.arch_weights(), alg.active_set()
        for t in TYPES:
            a = alg.alphas[t].detach()
            assert weights[t].shape == (EDGES, len(OPS)) and active[t].device.type == "cpu"
            for e in range(EDGES):
                if e == edges[t]:
                    torch.testing.assert_close(weights[t][e], torch.softmax(sign * a[e], dim=0))
                    assert bool(active[t][e].all())
                else:
                    best = int(torch.argmax(sign * a[e]))
                    assert torch.equal(weights[t][e], one_hot(best, len(OPS)))
                    assert active[t][e].tolist() == [k == best for k in range(len(OPS))]
    # evaluation: the derived network, every edge its argmax of +alpha (no inversion)
    alg.eval()
    weights, active = alg.arch_weights(), alg.active_set()
    for t in TYPES:
        for e in range(EDGES):
            best = int(torch.argmax(alg.alphas[t].detach()[e]))
            assert torch.equal(weights[t][e], one_hot(best, len(OPS)))
            assert int(active[t][e].sum()) == 1 and bool(active[t][e, best])


def test_candidate_sets_restrict_the_mixture_and_the_argmax() -> None:
    sets = {t: [[0, 3, 4, 6] if e % 2 else [1, 5, 7] for e in range(EDGES)] for t in TYPES}
    space = SPACE.with_candidates(sets)
    alg = EDAS(space)
    with torch.no_grad():
        for a in alg.alphas.values():
            a.copy_(torch.linspace(-1.0, 1.0, len(OPS)).repeat(EDGES, 1))  # largest: column 7
            a[:, 2] = 5.0  # the largest and smallest alphas are on ops no edge has
            a[:, 0] = -5.0
    for epoch in (0, 10):
        sign = -1.0 if epoch < 10 else 1.0
        alg.on_step(epoch, 0)
        assert alg.sample is not None
        weights, active = alg.arch_weights(), alg.active_set()
        for t in TYPES:
            a = alg.alphas[t].detach()
            for e, cands in enumerate(sets[t]):
                if e == alg.sample.edges[t]:
                    expected = torch.zeros(len(OPS))
                    expected[cands] = torch.softmax(sign * a[e, cands], dim=0)
                    torch.testing.assert_close(weights[t][e], expected)
                    assert active[t][e].tolist() == [k in cands for k in range(len(OPS))]
                else:
                    best = cands[int(torch.argmax(sign * a[e, cands]))]
                    assert torch.equal(weights[t][e], one_hot(best, len(OPS)))
                    assert active[t][e].nonzero().flatten().tolist() == [best]


# ------------------------------------------------------------------------------ architecture updates


def _arch_steps(
    epoch: int, freeze: bool, steps: int = 3, sample: str = "per-cell-type", weight_decay: float = 0.0
) -> list[tuple[dict[str, int | None], Any, Any, Any]]:
    """``steps`` architecture updates as the search loop does them: (sample, grads, before, after);
    ``weight_decay`` is the run's configured alpha decay (the warm-up overrides it)."""
    torch.manual_seed(4)
    model = SearchModel.build("edas", C=4, layers=3, num_classes=3, freeze_unsampled=freeze, sample=sample)
    alg = model.algorithm
    assert isinstance(alg, EDAS)
    randomised(alg, seed=5, scale=0.5)
    params = model.arch_parameters()
    optimizer = torch.optim.Adam(params, lr=0.025, betas=(0.5, 0.999), weight_decay=weight_decay)
    for group in optimizer.param_groups:
        group.update(alg.arch_optimizer_settings(epoch))
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 1])
    model.train()
    out = []
    for step in range(steps):
        model.start_step(epoch, step)
        assert alg.sample is not None
        before = {t: a.detach().clone() for t, a in alg.alphas.items()}
        optimizer.zero_grad(set_to_none=True)
        model.loss(x, y, level="arch").backward(inputs=params)
        grads = {t: None if a.grad is None else a.grad.clone() for t, a in alg.alphas.items()}
        optimizer.step()
        alg.after_arch_step()
        after = {t: a.detach().clone() for t, a in alg.alphas.items()}
        out.append((dict(alg.sample.edges), grads, before, after))
    return out


@pytest.mark.parametrize("weight_decay", [0.0, 0.25], ids=["no-decay", "decay"])
def test_after_the_warmup_an_arch_step_moves_only_the_sampled_edges_alphas(weight_decay: float) -> None:
    """Hong et al. 2019, section 4.1: after the warm-up nothing moves an unsampled edge - not Adam's
    moments of the earlier steps, not a configured weight decay: its alphas stay bit-identical."""
    for edges, grads, before, after in _arch_steps(10, freeze=True, weight_decay=weight_decay):
        for t in TYPES:
            edge = edges[t]
            assert edge is not None
            others = [e for e in range(EDGES) if e != edge]
            grad = grads[t]
            assert grad is not None and float(grad[edge].abs().sum()) > 0
            assert float(grad[others].abs().max()) == 0.0  # the one-hot rows get no gradient
            assert torch.equal(after[t][others], before[t][others])
            assert bool((after[t][edge] != before[t][edge]).all())  # Adam moves every entry of the row


def _adam_l2_first_step(alpha: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Adam's first update with L2 weight decay, by hand (Kingma & Ba 2015, Algorithm 1, on the gradient
    ``grad + wd * alpha``): the warm-up's published settings typed in (Hong et al. 2019, section 4.1)."""
    lr, beta1, beta2, eps, wd = 0.025, 0.5, 0.999, 1e-8, 1e-3
    a = alpha.double()
    g = grad.double() + wd * a
    m_hat = (1 - beta1) * g / (1 - beta1)
    v_hat = (1 - beta2) * g * g / (1 - beta2)
    return a - lr * m_hat / (v_hat.sqrt() + eps)


@pytest.mark.parametrize("sample", ["per-cell-type", "all"])
def test_the_warmup_weight_decay_moves_every_unsampled_alpha_as_adam_with_l2_predicts(sample: str) -> None:
    """Hong et al. 2019, section 4.1: during the warm-up the alpha weight decay 1e-3 acts on every edge,
    sampled or not. An unsampled edge has gradient 0, so its first Adam step is driven by ``1e-3 * alpha``
    alone (with ``sample="all"`` a whole cell type has no sampled edge: it decays too)."""
    for edges, grads, before, after in _arch_steps(0, freeze=True, steps=1, sample=sample):
        for t in TYPES:
            others = [e for e in range(EDGES) if e != edges[t]]
            grad = grads[t]
            assert grad is not None  # a zero gradient, not None: Adam skips a parameter without one
            assert float(grad[others].abs().max()) == 0.0
            expected = _adam_l2_first_step(before[t][others], torch.zeros_like(before[t][others]))
            torch.testing.assert_close(after[t][others].double(), expected, rtol=1e-6, atol=1e-7)
            # |1e-3 * alpha| >> eps: each entry moves by about lr toward 0, far from a no-op
            assert bool(((after[t][others] - before[t][others]).abs() > 0.02).all())
            edge = edges[t]
            if edge is not None:  # the sampled edge: its gradient plus the decay
                expected_edge = _adam_l2_first_step(before[t][edge], grad[edge])
                torch.testing.assert_close(after[t][edge].double(), expected_edge, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------- sparse execution


@pytest.mark.parametrize("epoch", [0, 10], ids=["warm-up", "after-warm-up"])
def test_unsampled_edges_call_only_their_argmax_op(epoch: int) -> None:
    torch.manual_seed(6)
    model = SearchModel.build("edas", C=4, layers=3, num_classes=3)
    alg = model.algorithm
    assert isinstance(alg, EDAS)
    convs = [OPS.index(n) for n in ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")]
    pools = [OPS.index(n) for n in ("max_pool_3x3", "avg_pool_3x3")]
    high = {e: convs[e % 4] for e in range(EDGES)}  # the largest alpha of edge e: a conv
    low = {e: pools[e % 2] for e in range(EDGES)}  # the smallest: a pool (the warm-up's argmax)
    with torch.no_grad():
        for a in alg.alphas.values():
            a.copy_(0.1 * torch.randn(a.shape))
            for e in range(EDGES):
                a[e, high[e]], a[e, low[e]] = 2.0, -2.0
    calls: Counter[tuple[int, int, int]] = Counter()
    for c, cell in enumerate(model.supernet.cells):
        for e, edge in enumerate(cell.edges):
            for k, op in enumerate(edge.ops):
                op.register_forward_hook(lambda *_, key=(c, e, k): calls.update([key]))
    x = torch.randn(2, 3, 8, 8)
    model.train()
    for step in range(3):
        calls.clear()
        model.start_step(epoch, step)
        assert alg.sample is not None
        edges = alg.sample.edges
        logits = model(x)
        for c, (cell, t) in enumerate(zip(model.supernet.cells, model.supernet.cell_types, strict=True)):
            for e, edge in enumerate(cell.edges):
                if e == edges[t]:  # the mixture: every op that computes something
                    expected = {
                        k
                        for k, op in enumerate(edge.ops)
                        if OPS[k] != "none" and not isinstance(op, Identity)
                    }
                else:
                    expected = {low[e] if epoch < 10 else high[e]}
                got = {k for k in range(len(OPS)) if calls[(c, e, k)]}
                assert got == expected, (c, e, edges)
                assert all(calls[(c, e, k)] == 1 for k in got)
        # inactive ops have weight exactly 0: the dense supernet under the same weights agrees
        dense = model.supernet(x, alg.arch_weights())
        torch.testing.assert_close(logits, dense, rtol=1e-5, atol=1e-6)
    model.eval()
    calls.clear()
    model(x)
    for c, cell in enumerate(model.supernet.cells):
        for e in range(len(cell.edges)):
            assert {k for k in range(len(OPS)) if calls[(c, e, k)]} == {high[e]}


# ------------------------------------------------------------------------------------------ searches


def edas_config(tmp_path: Path, **overrides: object) -> SearchConfig:
    values = {
        "method_options": {"warmup_epochs": 2},  # epochs 1-2 inverted, epoch 3 not
        "arch_weight_decay": 0.25,  # not the default: the loop must restore it after the warm-up
        "batch_size": 8,  # two steps per epoch
        "epochs": 3,
        "seed": 4,
        **overrides,
    }
    return tiny_search(tmp_path, "edas", **values)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished 3-epoch search and what each of its architecture steps did."""
    folder = tmp_path_factory.mktemp("edas")
    steps: list[dict[str, Any]] = []
    arch_step = SearchRunner.arch_step

    def recording(self, train_batch, val_batch, lr):  # type: ignore[no-untyped-def]
        alg = self.algorithm
        before = {t: a.detach().clone() for t, a in alg.alphas.items()}
        loss = arch_step(self, train_batch, val_batch, lr)
        steps.append(
            {
                "edges": dict(alg.sample.edges),
                "inverted": alg.sample.inverted,
                "weight_decay": [g["weight_decay"] for g in self.arch_optimizer.param_groups],
                "before": before,
                "after": {t: a.detach().clone() for t, a in alg.alphas.items()},
                "seed": alg.sample_seed,
            }
        )
        return loss

    with pytest.MonkeyPatch.context() as m:
        m.setattr(SearchRunner, "arch_step", recording)
        result = run_search(edas_config(folder), progress=False)
    return {"result": result, "dir": folder / "run", "steps": steps}


def test_the_search_loop_follows_the_warmup_and_updates_only_sampled_edges(
    uninterrupted: dict[str, Any],
) -> None:
    steps = uninterrupted["steps"]
    assert len(steps) == 6  # 3 epochs of 2 steps
    assert [s["inverted"] for s in steps] == [True] * 4 + [False] * 2
    assert [s["weight_decay"] for s in steps] == [[pytest.approx(1e-3)]] * 4 + [[0.25]] * 2
    for i, s in enumerate(steps):
        epoch, step = divmod(i, 2)
        assert s["edges"] == sampled_edges(s["seed"], epoch, step, TYPES, EDGES, "per-cell-type")
        for t in TYPES:
            others = [e for e in range(EDGES) if e != s["edges"][t]]
            moved = (s["after"][t][others] != s["before"][t][others]).any(dim=1)
            if epoch < 2:  # warm-up: the decay moves every unsampled edge (Hong et al. 2019, 4.1)
                assert bool(moved.all())
            else:  # after it nothing does
                assert not bool(moved.any())
            assert not torch.equal(s["after"][t][s["edges"][t]], s["before"][t][s["edges"][t]])


def _darts_rule(alphas: dict[str, torch.Tensor]) -> dict[str, list[set[tuple[str, int]]]]:
    """The DARTS rule on softmax(alpha), by hand: per node the two strongest incoming edges, each with
    its best op other than ``none``."""
    out: dict[str, list[set[tuple[str, int]]]] = {}
    for t, a in alphas.items():
        w = torch.softmax(a.detach().double(), dim=-1).tolist()
        nodes = []
        for node in range(SPACE.num_nodes):
            scored = []
            for edge in (e for e in SPACE.edges if e.node == node):
                best = max((k for k in range(len(OPS)) if OPS[k] != "none"), key=lambda k: w[edge.index][k])
                scored.append((w[edge.index][best], OPS[best], edge.source))
            nodes.append({(op, source) for _, op, source in sorted(scored, reverse=True)[:2]})
        out[t] = nodes
    return out


def _one_hot_cosine(first: set[Any], second: set[Any]) -> float:
    return 1.0 - len(first & second) / math.sqrt(len(first) * len(second))


def test_a_digits_search_gives_the_darts_rule_genotype_and_cosine_distances(
    uninterrupted: dict[str, Any],
) -> None:
    result, run = uninterrupted["result"], uninterrupted["dir"]
    genotype = result.genotype
    assert isinstance(genotype, Genotype)
    assert Genotype.parse((run / "genotype.txt").read_text().strip()) == genotype
    expected = _darts_rule(result.model.algorithm.alphas)  # softmax(+alpha): no inversion in derivation
    for t in TYPES:
        nodes = genotype.cell(t).nodes
        assert len(nodes) == SPACE.num_nodes
        for n, node in enumerate(nodes):
            assert len(node) == 2 and len({s for _, s in node}) == 2
            assert all(op in OPS and op != "none" and 0 <= s < n + 2 for op, s in node)
        assert [set(node) for node in nodes] == expected[t]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[0]["arch_cosine_distance"] is None
    encodings = []
    for r in rows:
        g = Genotype.parse(r["genotype"])
        encodings.append(
            {(t, n, s, op) for t in TYPES for n, node in enumerate(g.cell(t).nodes) for op, s in node}
        )
    for i, r in enumerate(rows[1:], start=1):
        d = r["arch_cosine_distance"]
        assert isinstance(d, float) and 0.0 <= d <= 1.0
        assert d == pytest.approx(_one_hot_cosine(encodings[i - 1], encodings[i]))


@pytest.mark.parametrize("crash_epoch", [1, 2], ids=["in-the-warm-up", "right-after-it"])
def test_resume_gives_the_uninterrupted_alphas_and_genotype(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted: dict[str, Any], crash_epoch: int
) -> None:
    interrupt_search_at(monkeypatch, crash_epoch, edas_config(tmp_path))
    assert len((tmp_path / "run" / "alphas.jsonl").read_text().splitlines()) == crash_epoch
    result = resume_search(tmp_path / "run", progress=False)
    assert result.genotype == uninterrupted["result"].genotype
    ours = (tmp_path / "run" / "alphas.jsonl").read_text()
    theirs = (uninterrupted["dir"] / "alphas.jsonl").read_text()
    assert ours == theirs
    assert result.model.algorithm.sample_seed == uninterrupted["result"].model.algorithm.sample_seed


def test_an_nb201_search_gives_a_valid_cell(tmp_path: Path) -> None:
    require_shared(TABLE)
    config = edas_config(
        tmp_path, space="nb201", layers=1, epochs=2, nb201_table=str(TABLE), run_name="nb",
        method_options={"warmup_epochs": 1},  # below the 2 epochs
    )  # fmt: skip
    result = run_search(config, progress=False)
    arch = result.genotype
    assert isinstance(arch, NB201Arch)
    assert NB201Arch.parse((result.run_dir / "genotype.txt").read_text().strip()) == arch
    alphas = result.model.algorithm.alphas["cell"].detach()
    ops = NB201Space().ops
    assert alphas.shape == (6, len(ops))
    assert list(arch.ops) == [ops[int(i)] for i in alphas.argmax(-1)]  # NB201: the argmax of every edge
    table = NB201Table.from_csv(TABLE)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["arch_cosine_distance"] is None
    for r in rows:
        assert r["table"]["c10_test"] == table.lookup(r["genotype"]).c10_test
    first, second = (NB201Arch.parse(r["genotype"]).ops for r in rows)
    d = rows[1]["arch_cosine_distance"]
    assert isinstance(d, float) and 0.0 <= d <= 1.0
    assert d == pytest.approx(1.0 - sum(a == b for a, b in zip(first, second)) / 6)


# --------------------------------------------------------------------------------- config and CLI


def test_published_defaults_resolve_from_the_config() -> None:
    resolved = SearchConfig(method="edas").resolved()
    assert (resolved.epochs, resolved.batch_size, resolved.layers) == (25, 64, 20)
    assert resolved.lr == 0.025 and resolved.lr_min == 0.001
    assert resolved.arch_lr == 0.025 and resolved.arch_betas == (0.5, 0.999)
    options = resolved.options
    assert isinstance(options, EDASOptions)
    assert options.sample == "per-cell-type" and options.warmup_epochs == 10 and options.inversion_period == 0
    assert options.warmup_arch_weight_decay == 1e-3 and options.freeze_unsampled
    options = {"sample": "all", "warmup_epochs": 2}  # the published 10 would cover the 3 epochs
    given = SearchConfig(method="edas", epochs=3, arch_lr=0.01, method_options=options).resolved()
    assert given.epochs == 3 and given.arch_lr == 0.01 and given.options.sample == "all"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="must be one of 'per-cell-type', 'all'"):
        SearchConfig(method="edas", method_options={"sample": "every"}).resolved()
    with pytest.raises(ConfigError, match=r"inversion_period \(--inversion-period\) must be >= 0"):
        SearchConfig(method="edas", method_options={"inversion_period": -3}).resolved()


def test_the_cli_takes_the_edas_flags(tmp_path: Path) -> None:
    args = ["search", "--method", "edas", "--edas-sample", "all", "--inversion-period", "2"]
    args += ["--warmup-epochs", "1", "--dataset", "digits", "--limit", "32", "--batch-size", "8", "--C", "4"]
    args += ["--layers", "3", "--epochs", "2", "--device", "cpu", "--no-progress"]  # warm-up, then one more
    assert main([*args, "--out-dir", str(tmp_path), "--run-name", "cli"]) == 0
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert config["method"] == "edas"
    assert config["method_options"]["sample"] == "all" and config["method_options"]["inversion_period"] == 2
    assert config["method_options"]["warmup_epochs"] == 1
    assert (
        Genotype.parse((tmp_path / "cli" / "genotype.txt").read_text().strip()).cell("normal").num_nodes == 4
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--edas-sample", "every"], "--edas-sample must be one of 'per-cell-type', 'all'"),
        (["--inversion-period", "-1"], "inversion_period (--inversion-period) must be >= 0, got -1"),
        (["--inversion-period", "two"], "--inversion-period must be int"),
        (["--warmup-epochs", "-1"], "warmup_epochs (--warmup-epochs) must be >= 0"),
    ],
)
def test_bad_edas_flags_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    base = ["search", "--method", "edas", "--dataset", "digits", "--epochs", "1", "--no-progress"]
    try:
        code = main([*base, "--out-dir", str(tmp_path), *args])
    except SystemExit as exc:  # argparse rejects a value it can parse itself
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_the_alpha_history_records_softmax_alpha(uninterrupted: dict[str, Any]) -> None:
    """``alphas.jsonl`` keeps the weights the derivation ranks, not one step's mostly one-hot weights."""
    rows = [json.loads(line) for line in (uninterrupted["dir"] / "alphas.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        for t in TYPES:
            alpha = torch.tensor(row["parameters"][f"alphas.{t}"])
            torch.testing.assert_close(torch.tensor(row["weights"][t]), torch.softmax(alpha, -1))
