"""DDSAS (Yang et al., "DDSAS: Dynamic and Differentiable Space-Architecture Search", ACML 2021, as the
authors' public code runs it): the UCB table with pseudo-counts, the saliency updated at resampling
points, the walk that draws a subspace, the shrink and expand schedules, the saliency derivation, the
public code's options, exact resume and short searches. Every expectation is computed here by hand or by
the plain loops below, written from the rules, never taken from the code under test."""

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
from fastnas.algorithms.ddsas import ScheduleEntry, draw_subspace, parse_schedule, shrink_available
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
#: two edges (one node) of three ops: small enough to trace by hand
TINY = DartsSpace(ops=("none", "skip_connect", "sep_conv_3x3"), num_nodes=1, multiplier=1)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def pairs(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(e), int(k)) for e, k in mask.nonzero().tolist()}


def randomise(alg: DDSAS, seed: int, scale: float = 1.0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for params in (alg.alphas, alg.betas):
            for p in params.values():
                p.copy_(scale * torch.randn(p.shape, generator=g))


def set_params(alg: DDSAS, alpha: list[list[float]], beta: list[list[float]]) -> None:
    with torch.no_grad():
        for t in alg.space.cell_types:
            alg.alphas[t].copy_(torch.tensor(alpha))
            alg.betas[t].copy_(torch.tensor(beta))


def set_saliency(alg: DDSAS, cell_type: str, values: torch.Tensor) -> None:
    alg.saliency_table[cell_type] = values.double().clone()


# ------------------------------------------------------------------ the rules written out as plain loops


def walk(
    scores: list[list[float]], avail: list[list[bool]], none: list[bool], size: int
) -> set[tuple[int, int]]:
    """The subspace walk: per edge, available ops in descending score (a none met is on, the first other op
    is on and ends the walk); then all pairs in descending score until ``size`` non-none pairs are on.
    Ties: lower op on an edge; lower (edge, op) over the table."""
    on: set[tuple[int, int]] = set()
    counted = 0
    for e, row in enumerate(scores):
        for k in sorted(range(len(row)), key=lambda k: (-row[k], k)):
            if avail[e][k]:
                on.add((e, k))
                if not none[k]:
                    counted += 1
                    break
    table = [(e, k) for e in range(len(scores)) for k in range(len(scores[0]))]
    for e, k in sorted(table, key=lambda ek: (-scores[ek[0]][ek[1]], ek)):
        if counted >= size:
            break
        if avail[e][k]:
            if not none[k] and (e, k) not in on:
                counted += 1
            on.add((e, k))
    return on


class PlainSampler:
    """The public code's sampler state for one cell type, in Python floats."""

    def __init__(self, edges: int, ops: int, c: float = 1.44) -> None:
        self.n = [[1.0] * ops for _ in range(edges)]
        self.s = [[0.0] * ops for _ in range(edges)]
        self.ucb = [[0.0] * ops for _ in range(edges)]
        self.total = 1
        self.c = c
        self.on: set[tuple[int, int]] = set()

    def update(self, alpha: list[list[float]], beta: list[list[float]]) -> None:
        for e, row in enumerate(alpha):
            ks = [k for k in range(len(row)) if (e, k) in self.on]
            z = sum(math.exp(row[k]) for k in ks)
            for k in ks:
                w = math.exp(row[k]) / z * sigmoid(beta[e][k])
                self.s[e][k] = (self.s[e][k] * self.n[e][k] + w) / (self.n[e][k] + 1)
                self.n[e][k] += 1
        for e, row in enumerate(beta):
            for k, b in enumerate(row):
                self.ucb[e][k] = sigmoid(b) + self.c * math.sqrt(math.log(self.total) / self.n[e][k])
        self.total += 1


# ------------------------------------------------------------------------------------ a trace by hand


def test_a_hand_computed_trace_of_updates_and_resamples() -> None:
    """Two edges of (none, skip, sep), L = 3, M = 1, alpha = 0; every number below worked out by hand."""
    alg = DDSAS(TINY, subspace_ops=3, resample_every=1)
    beta = [[0.0, 1.0, -1.0], [2.0, -0.5, 0.5]]
    set_params(alg, [[0.0] * 3] * 2, beta)
    p = [[sigmoid(b) for b in row] for row in beta]  # [.5, .731, .269], [.881, .378, .622]
    assert alg.total == 1
    assert all(bool((alg.counts[t] == 1).all()) for t in TINY.cell_types)  # the pseudo-count

    # step 0: the subspace is empty, so nothing is updated; ln N = ln 1 = 0: the UCB is sigmoid(beta)
    alg.on_step(0, 0)
    assert alg.total == 2
    torch.testing.assert_close(alg.ucb["normal"], torch.tensor(p, dtype=torch.float64))
    # edge 0: skip (.731) first; edge 1: none (.881), then sep (.622); then the table: (1, none) (0, skip)
    # (1, sep) are on, (0, none) .5 is switched on uncounted, (1, skip) .378 is the third op
    assert pairs(alg.subspace["normal"]) == {(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)}
    assert alg.subspace["normal"].equal(alg.subspace["reduce"])
    weights = alg.arch_weights()["normal"].detach().double()
    raw0 = [0.5 * p[0][0], 0.5 * p[0][1]]  # softmax over the two active ops of edge 0, times p
    raw1 = [p[1][k] / 3 for k in range(3)]
    expected = [[raw0[0] / sum(raw0), raw0[1] / sum(raw0), 0.0], [r / sum(raw1) for r in raw1]]
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float64))

    # step 1: the update uses the *unnormalised* weights raw0 / raw1: s = (0 * 1 + w) / 2, n = 2
    alg.on_step(0, 1)
    s = alg.saliency_table["normal"]
    torch.testing.assert_close(
        s, torch.tensor([[raw0[0] / 2, raw0[1] / 2, 0.0], [r / 2 for r in raw1]], dtype=torch.float64)
    )
    assert alg.counts["normal"].tolist() == [[2.0, 2.0, 1.0], [2.0, 2.0, 2.0]]
    two, one = 1.44 * math.sqrt(math.log(2) / 2), 1.44 * math.sqrt(math.log(2) / 1)  # .8477, 1.1989
    ucb = [[p[0][0] + two, p[0][1] + two, p[0][2] + one], [p[1][0] + two, p[1][1] + two, p[1][2] + two]]
    torch.testing.assert_close(alg.ucb["normal"], torch.tensor(ucb, dtype=torch.float64))
    assert alg.total == 3
    # UCB: edge 0 [1.348, 1.579, 1.468], edge 1 [1.729, 1.225, 1.470]: edge 0 takes skip, edge 1 none then
    # sep; the table adds (0, sep) 1.468 as the third op; edge 0's none (1.348) is no longer met
    assert pairs(alg.subspace["normal"]) == {(0, 1), (1, 0), (1, 2), (0, 2)}

    # step 2: alpha moves between resamples; the update reads the weights at the resampling point only
    with torch.no_grad():
        alg.alphas["normal"].copy_(torch.tensor([[0.0, 1.0, 2.0], [0.5, 0.0, -1.0]]))
    alg.on_step(0, 2)
    e0 = [math.exp(1.0), math.exp(2.0)]
    w01, w02 = e0[0] / sum(e0) * p[0][1], e0[1] / sum(e0) * p[0][2]
    e1 = [math.exp(0.5), math.exp(-1.0)]
    w10, w12 = e1[0] / sum(e1) * p[1][0], e1[1] / sum(e1) * p[1][2]
    expected_s = [
        [raw0[0] / 2, (raw0[1] / 2 * 2 + w01) / 3, (0.0 * 1 + w02) / 2],
        [(raw1[0] / 2 * 2 + w10) / 3, raw1[1] / 2, (raw1[2] / 2 * 2 + w12) / 3],
    ]
    torch.testing.assert_close(alg.saliency_table["normal"], torch.tensor(expected_s, dtype=torch.float64))
    assert alg.counts["normal"].tolist() == [[2.0, 3.0, 2.0], [3.0, 2.0, 3.0]]
    assert alg.total == 4


def test_the_first_subspace_follows_beta_not_the_op_order() -> None:
    """With pseudo-counts no pair starts at an infinite UCB: the first draw ranks by sigmoid(beta)."""
    alg = DDSAS(SPACE, subspace_ops=14)
    beta = torch.zeros(14, 8)
    beta[:, OPS.index("sep_conv_5x5")] = 1.0  # the best op everywhere; none and the pools far below
    beta[:, NONE] = -3.0
    set_params(alg, torch.zeros(14, 8).tolist(), beta.tolist())
    alg.on_step(0, 0)
    for t in SPACE.cell_types:
        assert pairs(alg.subspace[t]) == {(e, OPS.index("sep_conv_5x5")) for e in range(14)}
    # a convolution runs from the first step (the appendix's n = 0 -> +inf ran the pools first)


def test_none_is_active_only_where_the_walk_meets_it_and_never_counts() -> None:
    alg = DDSAS(SPACE, subspace_ops=20)
    beta = torch.zeros(14, 8)
    beta[:, NONE] = -5.0  # below every op: never met ...
    beta[3, NONE] = 5.0  # ... but on edge 3 the walk meets it first
    beta[:, OPS.index("skip_connect")] = torch.linspace(0.1, 1.0, 14)
    set_params(alg, torch.zeros(14, 8).tolist(), beta.tolist())
    alg.on_step(0, 0)
    for t in SPACE.cell_types:
        mask = alg.subspace[t]
        assert mask[:, NONE].nonzero().flatten().tolist() == [3]
        assert int(mask[:, 1:].sum()) == 20  # L counts ops other than none
        assert bool(mask[:, 1:].any(-1).all())  # every edge has an op besides none


def test_the_draw_matches_the_written_rule_on_random_tied_scores() -> None:
    g = torch.Generator().manual_seed(0)
    none = [True, False, False, False, False, False]
    for trial in range(40):
        edges, ops = 5, 6
        scores = torch.randint(0, 4, (edges, ops), generator=g).double()  # many ties
        avail = torch.rand(edges, ops, generator=g) < 0.7
        avail[torch.arange(edges), 1 + torch.randint(0, ops - 1, (edges,), generator=g)] = True
        size = edges + trial % 12
        expected = walk(scores.tolist(), avail.tolist(), none, size)
        got = draw_subspace(scores, avail, torch.tensor(none), size)
        assert pairs(got) == expected, trial
        assert not bool((got & ~avail).any())


def test_many_steps_agree_with_the_plain_sampler() -> None:
    """200 steps, M = 7, the architecture moving every step: the counts, saliency, UCB and subspaces of
    both cell types equal the plain loops' (float64, 1e-12)."""
    alg = DDSAS(SPACE, subspace_ops=24, resample_every=7)
    randomise(alg, seed=4)
    plain = {t: PlainSampler(14, 8) for t in SPACE.cell_types}
    g = torch.Generator().manual_seed(5)
    none = [op == "none" for op in OPS]
    for epoch, steps in ((0, 30), (1, 30)):
        for step in range(steps):
            before = {t: (alg.alphas[t].tolist(), alg.betas[t].tolist()) for t in SPACE.cell_types}
            alg.on_step(epoch, step)
            if step % 7 == 0:
                for t, ref in plain.items():
                    ref.update(*before[t])
                    ref.on = walk(ref.ucb, [[True] * 8] * 14, none, 24)
            for t, ref in plain.items():
                assert pairs(alg.subspace[t]) == ref.on, (epoch, step, t)
            with torch.no_grad():
                for params in (alg.alphas, alg.betas):
                    for p in params.values():
                        p.add_(0.3 * torch.randn(p.shape, generator=g))
    for t, ref in plain.items():
        torch.testing.assert_close(alg.counts[t], torch.tensor(ref.n, dtype=torch.float64), rtol=0, atol=0)
        torch.testing.assert_close(
            alg.saliency_table[t], torch.tensor(ref.s, dtype=torch.float64), rtol=1e-12, atol=1e-12
        )
        torch.testing.assert_close(
            alg.ucb[t], torch.tensor(ref.ucb, dtype=torch.float64), rtol=1e-12, atol=1e-12
        )
        assert alg.total == ref.total == 11  # 1 + resamples at steps 0, 7, 14, 21, 28 of 2 epochs


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
    # the normalisation keeps the gradient of p (appendix Eq. 13): beta of an active op gets one
    first = int(alg.subspace["normal"][0].nonzero()[0])
    weights["normal"][0, first].backward()
    grad = alg.betas["normal"].grad
    assert grad is not None
    assert bool((grad[0][alg.subspace["normal"][0]] != 0).all())
    assert float(grad[0][~alg.subspace["normal"][0]].abs().sum()) == 0.0


def test_the_other_weight_forms_of_the_public_code() -> None:
    beta = [[0.0, 1.0, -1.0], [2.0, -0.5, 0.5]]
    alpha = [[0.3, -0.2, 0.1], [0.0, 0.4, -0.6]]
    mask = torch.tensor([[False, True, True], [True, False, True]])

    def build(**options: Any) -> DDSAS:
        alg = DDSAS(TINY, subspace_ops=3, **options)
        set_params(alg, alpha, beta)
        alg.drawn = True
        alg._set_subspace({t: mask.clone() for t in TINY.cell_types})
        return alg

    soft = []
    for e in range(2):
        on = [k for k in range(3) if mask[e, k]]
        z = sum(math.exp(alpha[e][k]) for k in on)
        soft.append([math.exp(alpha[e][k]) / z if k in on else 0.0 for k in range(3)])
    raw = [[soft[e][k] * sigmoid(beta[e][k]) for k in range(3)] for e in range(2)]
    unnormalised = build(normalise=False).arch_weights()["normal"].detach().double()
    torch.testing.assert_close(unnormalised, torch.tensor(raw, dtype=torch.float64))
    # "all": times prod(sigmoid(beta) where active, 1 - sigmoid(beta) elsewhere) over the edge, which the
    # L1 normalisation cancels (the gradient of beta vanishes, appendix Eq. 13)
    prod = [
        math.prod(sigmoid(beta[e][k]) if mask[e, k] else 1 - sigmoid(beta[e][k]) for k in range(3))
        for e in range(2)
    ]
    alls = build(weight_form="all", normalise=False).arch_weights()["normal"].detach().double()
    torch.testing.assert_close(
        alls, torch.tensor([[s * prod[e] for s in soft[e]] for e in range(2)], dtype=torch.float64)
    )
    normalised = build(weight_form="all").arch_weights()["normal"].detach().double()
    torch.testing.assert_close(normalised, torch.tensor(soft, dtype=torch.float64))


def test_gumbel_weights_anneal_their_temperature_and_stay_on_the_subspace() -> None:
    alg = DDSAS(SPACE, subspace_ops=20, gumbel_tau=(10.0, 1.0))
    randomise(alg, seed=3)
    temperatures = []
    for epoch in range(4):
        alg.on_epoch_start(epoch, 4)
        temperatures.append(alg.tau)
    assert temperatures == pytest.approx([10.0, 7.0, 4.0, 1.0])  # tau_max - (tau_max - tau_min) e / (E - 1)
    alg.on_step(3, 0)
    a, b = alg.arch_weights()["normal"].detach(), alg.arch_weights()["normal"].detach()
    assert not torch.equal(a, b)  # fresh noise at every forward
    for w in (a, b):
        assert float(w[~alg.subspace["normal"]].abs().sum()) == 0.0
        torch.testing.assert_close(w.sum(-1), torch.ones(14))
    with pytest.raises(ConfigError, match="temperatures > 0"):
        DDSASOptions(gumbel_tau=(1.0, 0.0))


# -------------------------------------------------------------------------------- the public options


def test_random_epochs_draw_a_random_subspace_every_step_without_updates() -> None:
    alg = DDSAS(SPACE, subspace_ops=20, resample_every=30, random_epochs=1)
    randomise(alg, seed=6)
    drawn = []
    for step in range(3):
        alg.on_step(0, step)
        drawn.append(pairs(alg.subspace["normal"]))
        assert int(alg.subspace["normal"][:, 1:].sum()) == 20
    assert drawn[0] != drawn[1] != drawn[2]  # every step, not every M steps
    assert alg.total == 1 and all(bool((c == 1).all()) for c in alg.counts.values())  # no update
    alg.on_step(1, 0)  # the first UCB step: updates with the last random subspace
    assert alg.total == 2
    assert int((alg.counts["normal"] == 2).sum()) == len(drawn[2])


def test_random_prob_one_draws_random_subspaces_but_still_updates() -> None:
    alg = DDSAS(SPACE, subspace_ops=20, resample_every=1, random_prob=1.0)
    randomise(alg, seed=8)
    for step in range(3):
        alg.on_step(0, step)
    assert alg.total == 4 and alg.resamples == 3
    assert all(r["random"] for _, r in alg.drain_records())
    assert float(alg.saliency_table["normal"].sum()) > 0


# -------------------------------------------------------------------------------------- schedules


def test_shrink_removes_the_least_salient_pairs_keeping_an_op_per_edge() -> None:
    none = torch.tensor([True, False, False, False])
    saliency = torch.tensor(
        [[0.01, 0.02, 0.50, 0.60], [0.00, 0.03, 0.04, 0.05], [0.90, 0.001, 0.002, 0.7], [0.3, 0.2, 0.1, 0.4]],
        dtype=torch.float64,
    )
    avail = torch.ones(4, 4, dtype=torch.bool)
    avail[3, 2] = False  # already gone: skipped although it is among the smallest
    # ascending: (1,0) .000 (2,1) .001 (2,2) .002 (0,0) .01 (0,1) .02 (1,1) .03 (1,2) .04 ...: each of
    # the first five leaves an edge with more than 2 ops while its none is available (1 once it is gone)
    shrunk = shrink_available(saliency, avail, none, 5)
    removed = pairs(avail & ~shrunk)
    assert removed == {(1, 0), (2, 1), (2, 2), (0, 0), (0, 1)}
    # edge 2 kept none (.9) and skip-like op 3: with none available it may not drop below 2 ops
    assert pairs(shrunk[2:3]) == {(0, 0), (0, 3)}
    # keep rules: with none available an edge keeps two ops, without it one
    tight = shrink_available(saliency, avail, none, 100)
    for e in range(4):
        ops_left = [k for k in range(4) if tight[e, k]]
        assert len(ops_left) == (2 if 0 in ops_left else 1)
        assert any(k != 0 for k in ops_left)  # an op other than none always remains


def test_the_shrink_schedule_leaves_112_98_84_70_56_42_pairs_at_epochs_11_to_51() -> None:
    alg = DDSAS(SPACE, space_schedule="shrink")
    randomise(alg, seed=9)
    for t in SPACE.cell_types:
        set_saliency(alg, t, torch.rand(14, 8, generator=torch.Generator().manual_seed(10)))
    sizes = {}
    for epoch in range(60):
        alg.on_epoch_start(epoch, 60)
        sizes[epoch + 1] = [int(alg.available[t].sum()) for t in SPACE.cell_types]
    steps = {1: 112, 10: 112, 11: 98, 20: 98, 21: 84, 31: 70, 41: 56, 50: 56, 51: 42, 60: 42}
    for epoch, size in steps.items():
        assert sizes[epoch] == [size, size], epoch
    assert SearchConfig(method="ddsas", method_options={"space_schedule": "shrink"}).resolved().epochs == 60
    assert (
        SearchConfig(method="ddsas", epochs=30, method_options={"space_schedule": "shrink"}).resolved().epochs
        == 30
    )
    assert SearchConfig(method="ddsas").resolved().epochs == 50


def test_the_expand_schedules_add_ops_in_the_public_order() -> None:
    order = ["none", "skip_connect", "sep_conv_3x3", "max_pool_3x3", "dil_conv_3x3", "avg_pool_3x3",
             "sep_conv_5x5", "dil_conv_5x5"]  # fmt: skip
    alg = DDSAS(SPACE, space_schedule="expand")
    for epoch in range(60):
        alg.on_epoch_start(epoch, 60)
        alg.on_step(epoch, 0)
        count = 3 + min(5, epoch // 10)  # the first 3 from the start, one more every 10 epochs
        ops_on = {OPS[k] for k in range(8) if bool(alg.available["normal"][:, k].all())}
        assert ops_on == set(order[:count]), epoch
        assert not bool(alg.available["normal"][:, [OPS.index(op) for op in order[count:]]].any())
        drawn = {OPS[k] for _, k in pairs(alg.subspace["reduce"])}
        assert drawn <= set(order[:count])
    imagenet = DDSAS(SPACE, space_schedule="expand-imagenet")
    first = {"sep_conv_3x3", "dil_conv_3x3", "sep_conv_5x5", "dil_conv_5x5"}
    for epoch in range(60):
        imagenet.on_epoch_start(epoch, 60)
        ops_on = {OPS[k] for k in range(8) if bool(imagenet.available["normal"][:, k].all())}
        assert ops_on == (first if epoch < 40 else set(OPS)), epoch


def test_parse_schedule_reads_every_form_sorted_by_epoch() -> None:
    assert parse_schedule(("20:keep=2", " 11 : shrink = 14 ", "1:add=sep_conv_3x3+dil_conv_5x5")) == [
        ScheduleEntry(1, add=("sep_conv_3x3", "dil_conv_5x5")),
        ScheduleEntry(11, shrink=14),
        ScheduleEntry(20, keep=2),
    ]


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ("5:drop=2", "bad entry '5:drop=2'"),
        ("0:keep=2", "epochs count from 1"),
        ("3:keep=0", "keep needs a count >= 1"),
        ("3:shrink=x", "shrink needs a count >= 1"),
        ("3:add=conv_9x9", "unknown op 'conv_9x9'"),
    ],
)
def test_bad_schedule_entries_are_config_errors(entry: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        DDSASOptions(schedule=(entry,))


def test_a_preset_and_custom_entries_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="use one of them"):
        DDSASOptions(space_schedule="shrink", schedule=("3:keep=2",))
    with pytest.raises(ConfigError, match="not in the space"):
        DDSAS(DartsSpace(ops=("none", "skip_connect", "sep_conv_3x3")), space_schedule="expand")


# ------------------------------------------------------------------------------------------ derivation


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


def test_an_unavailable_pair_is_never_derived_whatever_its_saliency() -> None:
    alg = DDSAS(SPACE, space_schedule="shrink")
    normal, nodes = _hand_saliency_normal()
    normal[0, OPS.index("dil_conv_5x5")] = 5.0  # the strongest value of the table, on a removed pair
    set_saliency(alg, "normal", normal)
    set_saliency(alg, "reduce", normal)
    alg.available["normal"][0, OPS.index("dil_conv_5x5")] = False
    genotype = alg.derive()
    assert isinstance(genotype, Genotype)
    assert [set(node) for node in genotype.cell("normal").nodes] == nodes
    assert ("dil_conv_5x5", 0) in genotype.cell("reduce").nodes[0]  # still available there
    assert float(alg.saliency()["normal"][0, OPS.index("dil_conv_5x5")]) == 0.0


def test_an_earlier_checkpoint_of_the_appendix_rules_is_refused() -> None:
    alg = DDSAS(SPACE)
    with pytest.raises(ConfigError, match="earlier fastnas.*start the search again"):
        alg.set_extra_state({"resamples": 3, "counts": {}, "subspace": {}, "allowed": {}})
    state = DDSAS(SPACE).state_dict()
    alg.load_state_dict(state)  # the current form round-trips


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
        (["--ddsas-space", "shrink", "--ddsas-schedule", "3:keep=2"], "use one of them"),
        (["--ddsas-random-prob", "1.5"], "random_prob (--ddsas-random-prob) must be <= 1"),
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
    assert options.schedule == () and options.space_schedule == "static"
    assert (options.weight_form, options.normalise, options.random_epochs, options.random_prob) == (
        "simple",
        True,
        0,
        0.0,
    )
    assert options.gumbel_tau is None


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
    "schedule": ("2:add=dil_conv_5x5", "3:shrink=30"),
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
    first = rows[0]["epoch"]
    assert [(r["epoch"] - first, r["stage_epoch"], r["step"]) for r in rows] == [
        (e, e + 1, s) for e in range(3) for s in range(2)
    ]
    counts = {t: [[0] * 8 for _ in range(14)] for t in SPACE.cell_types}
    previous: dict[str, list[list[str]]] = {}
    for row in rows:
        assert set(row["subspace"]) == set(row["counts"]) == set(SPACE.cell_types)
        for t, edges in row["subspace"].items():
            assert len(edges) == 14
            assert sum(len(ops) - ("none" in ops) for ops in edges) == 20  # L ops other than none
            for ops in edges:
                assert set(ops) <= set(OPS) and any(op != "none" for op in ops)
                if row["stage_epoch"] == 1:
                    assert "dil_conv_5x5" not in ops  # it joins the space in epoch 2
            for e, ops in enumerate(previous.get(t, [])):  # the update counts the last subspace
                for op in ops:
                    counts[t][e][OPS.index(op)] += 1
        assert row["counts"] == counts  # times active at an update, recomputed from the subspaces
        previous = row["subspace"]
    in_epoch_3 = {t: sum(len(ops) for ops in rows[-1]["subspace"][t]) for t in SPACE.cell_types}
    assert all(n <= 112 - 30 for n in in_epoch_3.values())  # 3:shrink=30 left at most 82 pairs


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
    assert max(r["stage_epoch"] for r in rows) == crash_epoch  # epochs 1..crash_epoch finished
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
        assert torch.equal(ours_alg.ucb[t], their_alg.ucb[t])
        assert torch.equal(ours_alg.available[t], their_alg.available[t])
    assert ours_alg.total == their_alg.total == 7
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
    assert [(r["stage_epoch"], r["step"]) for r in rows] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for row in rows:
        edges = row["subspace"]["cell"]
        assert len(edges) == 6 and all(any(op != "none" for op in ops) for ops in edges)
        assert sum(len(ops) - ("none" in ops) for ops in edges) == 10
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
    with pytest.warns(UserWarning, match="14 pairs other than 'none' are available, fewer than L = 30"):
        small.on_epoch_start(1, 3)
    assert all(int(small.available[t][:, 1:].sum()) == 14 for t in SPACE.cell_types)
