"""DDSAS (REFERENCE.md section 8; seed 001 and its appendix): UCB subspaces, mixed weights, saliency,
schedules, exact resume and short searches. Every expectation is computed here by hand or from the
formulas (UCB = sigmoid(beta) + c * sqrt(ln N / n), n = 0 -> +inf), never taken from the code under test."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SHARED_DATA, interrupt_search_at, require_shared, tiny_search

from fastnas import DartsSpace, SearchConfig, SearchModel, resume_search, run_search
from fastnas.algorithms import DDSAS, DDSASOptions
from fastnas.algorithms.ddsas import ScheduleEntry, parse_schedule, select_subspace, ucb_scores
from fastnas.algorithms.derivation import derive_space_rule
from fastnas.cli import main
from fastnas.errors import ConfigError
from fastnas.genotype import Genotype
from fastnas.nb201 import NB201Arch, NB201Table
from fastnas.nn.fused_edge import is_identity
from fastnas.spaces import NB201Space

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks: one thread is faster

SPACE = DartsSpace()
OPS = list(SPACE.ops)  # none, max_pool_3x3, avg_pool_3x3, skip_connect, sep_3, sep_5, dil_3, dil_5
NONE = OPS.index("none")
TABLE = SHARED_DATA / "nb201.csv"


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def hand_ucb(p: float, n: int, total: int, c: float) -> float:
    """The UCB of REFERENCE.md section 8, written out."""
    return math.inf if n == 0 else p + c * math.sqrt(math.log(total) / n)


def hand_select(scores: list[list[float]], eligible: list[list[bool]], size: int) -> set[tuple[int, int]]:
    """The documented greedy rule, written as plain loops: each edge's best eligible op (ties: lower op),
    then the best remaining pairs (ties: lower op index, then lower edge)."""
    edges, ops = len(scores), len(scores[0])
    chosen = set()
    for e in range(edges):
        best = max((k for k in range(ops) if eligible[e][k]), key=lambda k: (scores[e][k], -k))
        chosen.add((e, best))
    rest = [(e, k) for e in range(edges) for k in range(ops) if eligible[e][k] and (e, k) not in chosen]
    rest.sort(key=lambda ek: (-scores[ek[0]][ek[1]], ek[1], ek[0]))
    chosen.update(rest[: max(0, size - edges)])
    return chosen


def pairs(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(e), int(k)) for e, k in mask.nonzero().tolist()}


def randomise(alg: DDSAS, seed: int, scale: float = 1.0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for params in (alg.alphas, alg.betas):
            for p in params.values():
                p.copy_(scale * torch.randn(p.shape, generator=g))


def set_saliency(alg: DDSAS, cell_type: str, values: torch.Tensor, steps: float = 2.0) -> None:
    """Make ``alg.saliency()[cell_type] == values`` through its running sums."""
    getattr(alg, f"saliency_sum_{cell_type}").copy_(values * steps)
    getattr(alg, f"saliency_steps_{cell_type}").fill_(steps)


# ------------------------------------------------------------------------------------------------ UCB


def test_ucb_scores_match_hand_computed_values() -> None:
    beta = torch.tensor([[0.0, 1.0, -2.0], [0.5, 0.0, 3.0]])
    counts = torch.tensor([[0, 1, 4], [2, 0, 9]])
    scores = ucb_scores(torch.sigmoid(beta), counts, 10, 1.44)
    assert scores.dtype == torch.float64
    # by hand: ln 10 = 2.302585093; sigmoid(1) = 0.7310585786, sigmoid(-2) = 0.1192029220,
    # sigmoid(0.5) = 0.6224593312, sigmoid(3) = 0.9525741268
    assert math.isinf(scores[0, 0]) and scores[0, 0] > 0  # n = 0
    assert math.isinf(scores[1, 1]) and scores[1, 1] > 0
    assert float(scores[0, 1]) == pytest.approx(0.7310585786 + 1.44 * 1.517427129, abs=1e-6)  # 2.916153645
    assert float(scores[0, 2]) == pytest.approx(0.1192029220 + 1.44 * 0.7587135645, abs=1e-6)  # 1.211750455
    assert float(scores[1, 0]) == pytest.approx(0.6224593312 + 1.44 * 1.072983013, abs=1e-6)  # 2.167554870
    assert float(scores[1, 2]) == pytest.approx(0.9525741268 + 1.44 * 0.5058090431, abs=1e-6)  # 1.680939149
    for e in range(2):
        for k in range(3):
            expected = hand_ucb(sigmoid(float(beta[e, k])), int(counts[e, k]), 10, 1.44)
            assert float(scores[e, k]) == pytest.approx(expected, rel=1e-6)
    # N = 1: ln 1 = 0, so every drawn op scores its probability; c = 0 likewise
    once = ucb_scores(torch.tensor([[0.2, 0.7]]), torch.tensor([[3, 1]]), 1, 1.44)
    torch.testing.assert_close(once, torch.tensor([[0.2, 0.7]], dtype=torch.float64))
    greedy = ucb_scores(torch.tensor([[0.2, 0.7]]), torch.tensor([[3, 1]]), 50, 0.0)
    torch.testing.assert_close(greedy, torch.tensor([[0.2, 0.7]], dtype=torch.float64))


# ------------------------------------------------------------------------------------------ selection


def test_every_edge_gets_its_best_op_before_the_rest_is_filled() -> None:
    """Edge 0 holds every high score; edges 1 and 2 still get their own best op first."""
    scores = torch.tensor(
        [
            [9.0, 0.9, 0.8, 0.7],  # column 0 ("none") is not eligible despite its score
            [9.0, 0.1, 0.3, 0.2],
            [9.0, 0.05, 0.02, 0.04],
        ],
        dtype=torch.float64,
    )
    eligible = torch.ones(3, 4, dtype=torch.bool)
    eligible[:, 0] = False
    chosen = select_subspace(scores, eligible, 5)
    assert pairs(chosen) == {(0, 1), (0, 2), (0, 3), (1, 2), (2, 1)}
    assert pairs(select_subspace(scores, eligible, 3)) == {(0, 1), (1, 2), (2, 1)}  # L = edges
    assert pairs(select_subspace(scores, eligible, 4)) == {(0, 1), (0, 2), (1, 2), (2, 1)}


def test_ties_go_to_the_lower_op_then_the_lower_edge() -> None:
    scores = torch.tensor([[0.0, 0.9, 0.5, 0.1], [0.0, 0.9, 0.5, 0.5]], dtype=torch.float64)
    eligible = torch.tensor([[False, True, True, True]] * 2)
    # first pass: op 1 on both edges; then the tied 0.5s: (op 2, edge 0), (op 2, edge 1), (op 3, edge 1)
    assert pairs(select_subspace(scores, eligible, 3)) == {(0, 1), (1, 1), (0, 2)}
    assert pairs(select_subspace(scores, eligible, 4)) == {(0, 1), (1, 1), (0, 2), (1, 2)}
    assert pairs(select_subspace(scores, eligible, 5)) == {(0, 1), (1, 1), (0, 2), (1, 2), (1, 3)}
    # a tie for an edge's best op: the lower op index
    within = torch.tensor([[0.0, 0.5, 0.7, 0.7]], dtype=torch.float64)
    assert pairs(select_subspace(within, eligible[:1], 1)) == {(0, 2)}
    # the first resample: every score +inf (n = 0) -> op 1 everywhere, then op 2 edge by edge, then op 3
    fresh = torch.full((3, 4), math.inf, dtype=torch.float64)
    third = torch.tensor([[False, True, True, True]] * 3)
    assert pairs(select_subspace(fresh, third, 7)) == {(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (2, 2), (0, 3)}


def test_ineligible_pairs_are_never_chosen_and_the_size_is_exact() -> None:
    scores = torch.tensor(
        [[math.inf, 5.0, 0.1, 0.2], [math.inf, 0.3, 7.0, 0.4], [math.inf, math.inf, 0.6, 0.5]],
        dtype=torch.float64,
    )
    eligible = torch.tensor(
        [[False, False, True, True], [False, True, False, True], [False, False, True, True]]
    )  # "none" and ops a schedule removed, whatever their scores
    for size in (3, 4, 5):
        chosen = select_subspace(scores, eligible, size)
        assert int(chosen.sum()) == size
        assert not bool((chosen & ~eligible).any())
    assert pairs(select_subspace(scores, eligible, 4)) == {(0, 3), (1, 3), (2, 2), (2, 3)}
    everything = select_subspace(scores, eligible, 20)  # more slots than eligible pairs: all of them
    assert pairs(everything) == pairs(eligible)
    with pytest.raises(ConfigError, match="every edge needs at least one op other than 'none'"):
        select_subspace(scores, torch.tensor([[False, True, True, True], [False] * 4, [True] * 4]), 3)


def test_selection_matches_the_written_out_rule_on_random_tied_scores() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        edges, ops = 5, 6
        scores = torch.randint(0, 4, (edges, ops), generator=g).double()  # many ties
        scores[torch.rand(edges, ops, generator=g) < 0.2] = math.inf
        eligible = torch.rand(edges, ops, generator=g) < 0.7
        eligible[:, 0] = False
        eligible[torch.arange(edges), 1 + torch.randint(0, ops - 1, (edges,), generator=g)] = True
        size = edges + trial % 12
        expected = hand_select(scores.tolist(), eligible.tolist(), size)
        assert pairs(select_subspace(scores, eligible, size)) == expected, trial


# --------------------------------------------------------------------------------------------- weights


def test_mixed_weights_are_masked_softmax_times_sigmoid_beta_l1_normalised() -> None:
    alg = DDSAS(SPACE, subspace_ops=20)
    randomise(alg, seed=1, scale=2.0)
    alg.on_step(0, 0)
    weights = alg.arch_weights()
    for t in SPACE.cell_types:
        active = alg.subspace[t]
        alpha, beta = alg.alphas[t].detach().tolist(), alg.betas[t].detach().tolist()
        expected = torch.zeros(14, 8, dtype=torch.float64)
        for e in range(14):
            on = [k for k in range(8) if active[e, k]]
            exp = {k: math.exp(alpha[e][k]) for k in on}
            soft = {k: exp[k] / sum(exp.values()) for k in on}
            raw = {k: soft[k] * sigmoid(beta[e][k]) for k in on}
            for k in on:
                expected[e, k] = raw[k] / sum(raw.values())
        w = weights[t].detach().double()
        torch.testing.assert_close(w, expected, rtol=1e-5, atol=1e-7)
        assert float(w[~active].abs().sum()) == 0.0  # inactive: exactly 0
        torch.testing.assert_close(w.sum(-1), torch.ones(14, dtype=torch.float64))
    # the normalisation keeps the gradient of p (appendix Eq. 13): beta of an active op gets one
    weights["normal"][0, OPS.index("max_pool_3x3")].backward()
    grad = alg.betas["normal"].grad
    assert grad is not None
    assert bool((grad[0][alg.subspace["normal"][0]] != 0).all())
    assert float(grad[0][~alg.subspace["normal"][0]].abs().sum()) == 0.0


# -------------------------------------------------------------------------------------------- saliency


def test_saliency_is_the_mean_weight_over_the_steps_an_op_was_active() -> None:
    alg = DDSAS(SPACE, subspace_ops=16, resample_every=2)
    randomise(alg, seed=2)
    g = torch.Generator().manual_seed(3)
    sums = {t: torch.zeros(14, 8, dtype=torch.float64) for t in SPACE.cell_types}
    steps = {t: torch.zeros(14, 8, dtype=torch.float64) for t in SPACE.cell_types}
    for step in range(7):
        alg.on_step(0, step)
        weights = alg.arch_weights()  # what this step's forward passes use
        for t in SPACE.cell_types:
            active = alg.subspace[t].double()
            sums[t] += weights[t].detach().double() * active
            steps[t] += active
        with torch.no_grad():  # an architecture step changes the weights
            for params in (alg.alphas, alg.betas):
                for p in params.values():
                    p.add_(0.5 * torch.randn(p.shape, generator=g))
    saliency = alg.saliency()
    for t in SPACE.cell_types:
        some = (steps[t] > 0) & (steps[t] < 7)
        assert bool(some.any())  # ops active in only some steps: the mean is over those steps only
        assert bool((steps[t][:, NONE] == 7).all())  # none is always on
        expected = sums[t] / steps[t].clamp_min(1)
        torch.testing.assert_close(saliency[t].double(), expected, rtol=1e-5, atol=1e-7)
        assert float(saliency[t][steps[t] == 0].abs().sum()) == 0.0  # never active: 0


def _hand_saliency_normal() -> tuple[torch.Tensor, list[set[tuple[str, int]]]]:
    """Per edge one strong op; ``none`` is the largest everywhere and must be ignored."""
    s = torch.full((14, 8), 0.01)
    s[:, NONE] = 0.95
    best = {
        0: ("sep_conv_3x3", 0.3),
        1: ("skip_connect", 0.4),  # node 0: both edges
        2: ("max_pool_3x3", 0.2),
        3: ("sep_conv_5x5", 0.5),
        4: ("skip_connect", 0.45),  # node 1: sources 1, 2
        5: ("dil_conv_3x3", 0.6),
        6: ("avg_pool_3x3", 0.1),
        7: ("sep_conv_3x3", 0.15),
        8: ("sep_conv_3x3", 0.55),  # node 2: sources 0, 3
        9: ("sep_conv_3x3", 0.2),
        10: ("sep_conv_5x5", 0.3),
        11: ("skip_connect", 0.25),
        12: ("max_pool_3x3", 0.7),
        13: ("avg_pool_3x3", 0.65),  # node 3: sources 3, 4
    }
    for e, (op, value) in best.items():
        s[e, OPS.index(op)] = value
    nodes = [
        {("sep_conv_3x3", 0), ("skip_connect", 1)},
        {("sep_conv_5x5", 1), ("skip_connect", 2)},
        {("dil_conv_3x3", 0), ("sep_conv_3x3", 3)},
        {("max_pool_3x3", 3), ("avg_pool_3x3", 4)},
    ]
    return s, nodes


def test_derivation_is_the_darts_rule_on_the_saliency() -> None:
    alg = DDSAS(SPACE, subspace_ops=20)
    with torch.no_grad():  # alphas and betas would pick dil_conv_5x5 everywhere
        for p in (*alg.alphas.values(), *alg.betas.values()):
            p.zero_()
            p[:, OPS.index("dil_conv_5x5")] = 10.0
    normal, normal_nodes = _hand_saliency_normal()
    reduce = torch.full((14, 8), 0.01)
    reduce[:, NONE] = 0.9
    reduce[:, OPS.index("sep_conv_5x5")] = 0.1 + 0.01 * torch.arange(14)  # later sources win
    set_saliency(alg, "normal", normal)
    set_saliency(alg, "reduce", reduce)
    genotype = alg.derive()
    assert isinstance(genotype, Genotype)
    assert [set(node) for node in genotype.cell("normal").nodes] == normal_nodes
    reduce_nodes = [{("sep_conv_5x5", n), ("sep_conv_5x5", n + 1)} for n in range(4)]
    assert [set(node) for node in genotype.cell("reduce").nodes] == reduce_nodes


def test_nb201_derivation_is_the_argmax_of_the_saliency() -> None:
    with pytest.warns(UserWarning, match="covers all 24"):
        DDSAS(NB201Space())  # the default L = 28 covers the whole NB201 cell: said, not silent
    alg = DDSAS(NB201Space(), subspace_ops=10)
    ops = NB201Space().ops
    s = torch.full((6, 5), 0.05)
    picks = ["nor_conv_3x3", "skip_connect", "none", "avg_pool_3x3", "nor_conv_1x1", "nor_conv_3x3"]
    for e, op in enumerate(picks):
        s[e, ops.index(op)] = 0.5
    set_saliency(alg, "cell", s)
    assert alg.derive() == NB201Arch(tuple(picks))


# ---------------------------------------------------------------------------------------- resampling


def test_resampling_every_m_steps_of_each_epoch_follows_the_ucb_rule() -> None:
    L, M, c = 40, 3, 1.44  # 14 resamples of 40 of the 98 pairs: most draws compare finite UCB values
    alg = DDSAS(SPACE, subspace_ops=L, resample_every=M, ucb_c=c)
    randomise(alg, seed=4)
    g = torch.Generator().manual_seed(5)
    counts = {t: [[0] * 8 for _ in range(14)] for t in SPACE.cell_types}
    draws: list[tuple[int, int]] = []
    for epoch, steps in ((0, 22), (1, 20)):
        for step in range(steps):
            before = {t: s.clone() for t, s in alg.subspace.items()}
            probs = {t: torch.sigmoid(alg.betas[t].detach()).tolist() for t in SPACE.cell_types}
            alg.on_step(epoch, step)
            if step % M != 0:
                assert {t: pairs(s) for t, s in alg.subspace.items()} == {
                    t: pairs(s) for t, s in before.items()
                }
                continue
            draws.append((epoch, step))
            total = len(draws)
            assert alg.resamples == total
            for t in SPACE.cell_types:
                scores = [
                    [hand_ucb(probs[t][e][k], counts[t][e][k], total, c) for k in range(8)] for e in range(14)
                ]
                eligible = [[k != NONE for k in range(8)] for _ in range(14)]
                drawn = hand_select(scores, eligible, L)
                none_everywhere = {(e, NONE) for e in range(14)}
                assert pairs(alg.subspace[t]) == drawn | none_everywhere
                for e, k in drawn:
                    counts[t][e][k] += 1
                assert alg.counts[t].tolist() == counts[t]
                active = alg.subspace[t]
                assert int(active[:, 1:].sum()) == L  # none is not counted in L
                assert bool(active[:, 1:].any(-1).all()) and bool(active[:, NONE].all())
            with torch.no_grad():  # the betas move between resamples
                for p in alg.betas.values():
                    p.add_(torch.randn(p.shape, generator=g))
    # the step counter restarts every epoch
    assert draws == [(0, s) for s in range(0, 22, 3)] + [(1, s) for s in range(0, 20, 3)]
    records = alg.drain_records()
    assert [stem for stem, _ in records] == ["sampling"] * 15
    assert [(r["stage_epoch"], r["step"], r["resample"]) for _, r in records] == [
        (e, s, i + 1) for i, (e, s) in enumerate(draws)
    ]
    assert records[-1][1]["counts"] == counts
    last = records[-1][1]["subspace"]
    assert last == {
        t: [[OPS[k] for k in range(8) if alg.subspace[t][e, k]] for e in range(14)] for t in SPACE.cell_types
    }
    assert alg.drain_records() == []


def test_active_set_draws_a_subspace_for_a_loop_without_start_step() -> None:
    alg = DDSAS(SPACE, subspace_ops=14)
    active = alg.active_set()
    assert alg.resamples == 1
    for mask in active.values():
        assert bool((mask[:, 1:].sum(-1) == 1).all())  # L = edges: exactly one op per edge


# ------------------------------------------------------------------------------------------ schedules


def test_parse_schedule_reads_both_forms_sorted_by_epoch() -> None:
    parsed = parse_schedule(("10:keep=4", " 1 : add = sep_conv_3x3+sep_conv_5x5 "))
    assert parsed == [ScheduleEntry(1, add=("sep_conv_3x3", "sep_conv_5x5")), ScheduleEntry(10, keep=4)]
    assert parse_schedule(()) == []


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ("5:drop=3", "bad entry '5:drop=3'"),
        ("keep=3", "bad entry 'keep=3'"),
        ("0:keep=3", "epochs count from 1"),
        ("-2:keep=3", "bad entry"),
        ("2:keep=0", "keep needs a count >= 1"),
        ("2:keep=many", "keep needs a count >= 1"),
        ("2:add=conv_9x9", "unknown op 'conv_9x9'"),
        ("2:add=+", "add needs op names"),
    ],
)
def test_bad_schedule_entries_are_config_errors(entry: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as caught:
        parse_schedule((entry,))
    assert "--ddsas-schedule" in str(caught.value)
    with pytest.raises(ConfigError, match=needle):
        DDSASOptions(schedule=("3:keep=2", entry))


def test_schedule_ops_must_be_in_the_space_and_leave_every_edge_an_op() -> None:
    with pytest.raises(ConfigError, match="adds 'nor_conv_1x1', which is not in the space"):
        DDSAS(SPACE, schedule=("2:add=nor_conv_1x1",))
    everything = "+".join(op for op in OPS if op != "none")
    with pytest.raises(ConfigError, match="each edge needs one from the first epoch"):
        DDSAS(SPACE, schedule=(f"2:add={everything}",))


def test_schedules_expand_then_shrink_the_space_at_their_epochs() -> None:
    sep3 = OPS.index("sep_conv_3x3")
    alg = DDSAS(SPACE, subspace_ops=28, resample_every=1, schedule=("2:add=sep_conv_3x3", "3:keep=2"))
    randomise(alg, seed=6)
    alg.on_epoch_start(0, 3)
    for t in SPACE.cell_types:
        assert not bool(alg.eligible(t)[:, sep3].any())
    for step in range(4):  # 28 of 6 x 14 pairs per resample: every allowed op is drawn, never sep_conv_3x3
        alg.on_step(0, step)
        assert not any(bool(s[:, sep3].any()) for s in alg.subspace.values())
    assert all(int((c[:, 1:] > 0).sum()) == 14 * 6 for c in alg.counts.values())
    alg.on_epoch_start(1, 3)  # epoch 2: sep_conv_3x3 joins the space
    for t in SPACE.cell_types:
        assert bool(alg.eligible(t)[:, sep3].all())
    alg.on_step(1, 0)
    for s in alg.subspace.values():  # never drawn: n = 0, UCB +inf, every edge's first pick
        assert bool(s[:, sep3].all())
    alg.on_step(1, 1)
    kept = {}
    for i, t in enumerate(SPACE.cell_types):  # hand-set saliency, none the largest (not kept: always on)
        s = torch.rand(14, 8, generator=torch.Generator().manual_seed(10 + i)) * 0.5
        s[:, NONE] = 0.99
        set_saliency(alg, t, s)
        top2 = torch.zeros(14, 8, dtype=torch.bool)
        for e in range(14):
            order = sorted(range(1, 8), key=lambda k: -float(s[e, k]))
            top2[e, order[:2]] = True
        kept[t] = top2
    alg.on_epoch_start(2, 3)  # epoch 3: each edge keeps its 2 most salient ops
    for t in SPACE.cell_types:
        assert pairs(alg.eligible(t)) == pairs(kept[t])
    for step in range(3):
        alg.on_step(2, step)
        for t, s in alg.subspace.items():
            assert pairs(s) == pairs(kept[t]) | {(e, NONE) for e in range(14)}  # L = 28 = 14 x 2


# ------------------------------------------------------------------------------------------ bad options


def test_bad_ddsas_options_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match=r"L=13 is smaller than the 14 edges of a cell.*L >= 14"):
        DDSAS(SPACE, subspace_ops=13)
    with pytest.raises(ConfigError, match=r"L=5 is smaller than the 6 edges"):
        DDSAS(NB201Space(), subspace_ops=5)
    assert int(DDSAS(SPACE, subspace_ops=14).active_set()["normal"][:, 1:].sum()) == 14
    for bad in (0, -3):
        with pytest.raises(ConfigError, match=r"resample_every \(--resample-every\) must be > 0"):
            DDSASOptions(resample_every=bad)
    with pytest.raises(ConfigError, match=r"ucb_c \(--ucb-c\) must be >= 0"):
        DDSASOptions(ucb_c=-0.5)
    with pytest.raises(ConfigError, match=r"subspace_ops \(--subspace-ops\) must be > 0"):
        DDSASOptions(subspace_ops=0)
    assert DDSASOptions(ucb_c=0).ucb_c == 0.0
    with pytest.raises(ConfigError, match="resample_every"):
        SearchConfig(method="ddsas", dataset="digits", method_options={"resample_every": 0}).resolved()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--subspace-ops", "5"], "L=5 is smaller than the 14 edges"),
        (["--resample-every", "0"], "resample_every (--resample-every) must be > 0"),
        (["--ucb-c", "-1"], "ucb_c (--ucb-c) must be >= 0"),
        (["--ddsas-schedule", "3:drop=2"], "bad entry '3:drop=2'"),
        (["--ddsas-schedule", "3:add=conv_9x9"], "unknown op 'conv_9x9'"),
    ],
)
def test_bad_ddsas_flags_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    base = ["search", "--method", "ddsas", "--dataset", "digits", "--limit", "32", "--batch-size", "16"]
    base += ["--C", "4", "--layers", "3", "--epochs", "1", "--device", "cpu", "--no-progress"]
    assert main([*base, "--out-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())  # no run directory is left behind


def test_published_defaults_resolve_from_the_config() -> None:
    resolved = SearchConfig(method="ddsas").resolved()
    assert (resolved.epochs, resolved.batch_size) == (50, 64)
    assert resolved.lr == 0.025 and resolved.lr_min == 0.001
    assert resolved.arch_lr == 3e-4 and resolved.arch_betas == (0.5, 0.999)
    assert resolved.arch_weight_decay == 1e-3
    options = resolved.options
    assert isinstance(options, DDSASOptions)
    assert (options.subspace_ops, options.resample_every, options.ucb_c) == (28, 30, 1.44)
    assert options.schedule == ()


# ---------------------------------------------------------------------------------------- sparse forward


def test_ops_outside_the_subspace_are_never_called() -> None:
    torch.manual_seed(0)
    model = SearchModel.build("ddsas", C=4, layers=3, num_classes=3, subspace_ops=16, resample_every=1)
    alg = model.algorithm
    assert isinstance(alg, DDSAS)
    randomise(alg, seed=7)
    calls: list[tuple[int, int, int]] = []

    def recorder(key: tuple[int, int, int]) -> Any:
        return lambda *_: calls.append(key)

    for i, cell in enumerate(model.supernet.cells):
        for e, edge in enumerate(cell.edges):
            for k, op in enumerate(edge.ops):
                op.register_forward_hook(recorder((i, e, edge.columns[k])))
    x = torch.randn(2, 3, 8, 8)
    for step in range(2):
        model.start_step(0, step)
        calls.clear()
        out = model(x)
        expected = []
        for i, cell in enumerate(model.supernet.cells):
            mask = alg.subspace["reduce" if cell.reduction else "normal"]
            for e, edge in enumerate(cell.edges):
                for k, op in enumerate(edge.ops):  # an identity skip is used as x, not called
                    column = edge.columns[k]
                    if mask[e, column] and column != NONE and not is_identity(op):
                        expected.append((i, e, column))
        assert sorted(calls) == sorted(expected)  # each active op once; inactive ops and none never
        assert len(expected) > 16
        dense = model.supernet(x, model.arch_weights())  # every op, the inactive ones weighted 0
        torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- searches

RESUME_OPTIONS: dict[str, Any] = {
    "subspace_ops": 20,
    "resample_every": 1,  # 2 steps an epoch (16 weight images, batch 8): a resample at each
    "schedule": ("2:add=dil_conv_5x5", "3:keep=3"),
}


def ddsas_config(tmp_path: Path, **overrides: object) -> SearchConfig:
    values = {"method_options": RESUME_OPTIONS, "batch_size": 8, "epochs": 3, "seed": 5, **overrides}
    return tiny_search(tmp_path, "ddsas", **values)  # type: ignore[no-any-return]


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("ddsas")
    result = run_search(ddsas_config(folder), progress=False)
    return {"result": result, "dir": folder / "run"}


def test_sampling_jsonl_records_every_resample(uninterrupted: dict[str, Any]) -> None:
    rows = read_rows(uninterrupted["dir"] / "sampling.jsonl")
    assert [(r["epoch"], r["step"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    counts = {t: [[0] * 8 for _ in range(14)] for t in SPACE.cell_types}
    kept_in_epoch_3: dict[str, list[set[str]]] = {t: [set() for _ in range(14)] for t in SPACE.cell_types}
    for row in rows:
        assert set(row["subspace"]) == set(row["counts"]) == set(SPACE.cell_types)
        for t, edges in row["subspace"].items():
            assert len(edges) == 14
            assert sum(len(ops) - 1 for ops in edges) == 20  # L ops other than none
            for e, ops in enumerate(edges):
                assert ops[0] == "none" and len(ops) >= 2 and set(ops) <= set(OPS)
                for op in ops[1:]:
                    counts[t][e][OPS.index(op)] += 1
                if row["epoch"] == 0:
                    assert "dil_conv_5x5" not in ops  # it joins the space in epoch 2
                if row["epoch"] == 2:
                    kept_in_epoch_3[t][e].update(ops[1:])
        assert row["counts"] == counts  # the cumulative counts n, recomputed from the subspaces
    assert all(len(ops) <= 3 for edges in kept_in_epoch_3.values() for ops in edges)  # 3:keep=3


def test_a_short_digits_search_gives_a_valid_genotype_from_the_saliency(
    uninterrupted: dict[str, Any],
) -> None:
    result, run = uninterrupted["result"], uninterrupted["dir"]
    genotype = result.genotype
    assert isinstance(genotype, Genotype)
    for t in ("normal", "reduce"):
        cell = genotype.cell(t)
        assert len(cell.nodes) == 4
        for n, node in enumerate(cell.nodes):
            assert len(node) == 2 and len({src for _, src in node}) == 2
            assert all(op in OPS and op != "none" and 0 <= src < n + 2 for op, src in node)
    assert (run / "genotype.txt").read_text().strip() == genotype.to_literal()
    alg = result.model.algorithm
    assert genotype == derive_space_rule(SPACE, {t: s.detach() for t, s in alg.saliency().items()})
    metrics = read_rows(run / "metrics.jsonl")
    assert len(metrics) == 3 and metrics[-1]["genotype"] == genotype.to_literal()
    config = json.loads((run / "config.json").read_text())
    assert config["method_options"]["schedule"] == list(RESUME_OPTIONS["schedule"])


@pytest.mark.parametrize("crash_epoch", [1, 2], ids=["before-the-add", "before-the-keep"])
def test_resume_is_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted: dict[str, Any], crash_epoch: int
) -> None:
    interrupt_search_at(monkeypatch, crash_epoch, ddsas_config(tmp_path))
    rows = read_rows(tmp_path / "run" / "sampling.jsonl")
    assert max(r["epoch"] for r in rows) == crash_epoch - 1
    result = resume_search(tmp_path / "run", progress=False)
    expected, theirs = uninterrupted["result"], uninterrupted["dir"]
    assert result.genotype == expected.genotype
    for name in ("alphas.jsonl", "sampling.jsonl"):
        assert (tmp_path / "run" / name).read_text() == (theirs / name).read_text(), name
    ours_alg, their_alg = result.model.algorithm, expected.model.algorithm
    assert isinstance(ours_alg, DDSAS) and isinstance(their_alg, DDSAS)
    for t in SPACE.cell_types:
        torch.testing.assert_close(ours_alg.saliency()[t], their_alg.saliency()[t], rtol=0, atol=0)
        assert torch.equal(ours_alg.counts[t], their_alg.counts[t])
        assert torch.equal(ours_alg.allowed[t], their_alg.allowed[t])
    assert ours_alg.resamples == their_alg.resamples == 6
    ours = [r["genotype"] for r in read_rows(tmp_path / "run" / "metrics.jsonl")]
    assert ours == [r["genotype"] for r in read_rows(theirs / "metrics.jsonl")]


def test_a_short_nb201_search_gives_a_valid_cell(tmp_path: Path) -> None:
    require_shared(TABLE)
    config = ddsas_config(
        tmp_path,
        space="nb201",
        layers=1,
        epochs=2,
        method_options={"subspace_ops": 10, "resample_every": 1},
        nb201_table=str(TABLE),
    )
    result = run_search(config, progress=False)
    arch = result.genotype
    assert isinstance(arch, NB201Arch) and len(arch.ops) == 6
    assert NB201Arch.parse((result.run_dir / "genotype.txt").read_text().strip()) == arch
    table = NB201Table.from_csv(TABLE)
    metrics = read_rows(result.run_dir / "metrics.jsonl")
    assert metrics[-1]["table"]["c10_test"] == table.lookup(arch).c10_test
    rows = read_rows(result.run_dir / "sampling.jsonl")
    assert [(r["epoch"], r["step"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for row in rows:
        edges = row["subspace"]["cell"]
        assert len(edges) == 6 and all(ops[0] == "none" and len(ops) >= 2 for ops in edges)
        assert sum(len(ops) - 1 for ops in edges) == 10
    alg = result.model.algorithm
    assert isinstance(alg, DDSAS)
    assert alg.alphas["cell"].shape == alg.betas["cell"].shape == (6, 5)
    saliency = alg.saliency()["cell"].tolist()
    assert arch.ops == tuple(NB201Space().ops[row.index(max(row))] for row in saliency)


def test_schedules_that_cannot_act_as_written_say_so() -> None:
    late = DDSAS(SPACE, schedule=("5:keep=3",))
    with pytest.warns(UserWarning, match=r"epochs \[5\] come after the last epoch \(3\)"):
        late.on_epoch_start(0, 3)
    small = DDSAS(SPACE, subspace_ops=30, schedule=("2:keep=1",))  # 14 pairs left, L = 30
    small.on_epoch_start(0, 3)
    with pytest.warns(UserWarning, match="14 pairs in all, fewer than L = 30"):
        small.on_epoch_start(1, 3)
    assert all(int(small.eligible(t).sum()) == 14 for t in SPACE.cell_types)
