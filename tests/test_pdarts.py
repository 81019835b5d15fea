"""Per-edge candidate sets and P-DARTS (Chen, Xie, Wu & Tian, "Progressive Differentiable Architecture
Search: Bridging the Depth Gap between Search and Evaluation", ICCV 2019; Paganucci, "Efficient ConvNet
Architectures: Differentiable Neural Architecture Search", semester thesis, ETH Zurich, 2020)."""

from __future__ import annotations

import json
import math
import warnings
import weakref
from pathlib import Path

import pytest
import torch
from conftest import interrupt_search_at, tiny_search

from fastnas import DartsSpace, SearchConfig, SearchModel, resume_search, run_search
from fastnas.algorithms import PDARTS, PDARTSOptions, derive_darts_cell
from fastnas.algorithms.darts import masked_softmax
from fastnas.algorithms.pdarts import skip_dropout_rate
from fastnas.cli import main
from fastnas.errors import ConfigError
from fastnas.nn import MixedEdge
from fastnas.train.search import SearchRunner

SPACE = DartsSpace()
OPS = list(SPACE.ops)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks: one thread is faster


def random_candidates(seed: int, sizes: tuple[int, ...] = (2, 3, 5)) -> dict[str, list[list[int]]]:
    """Random per-edge subsets (each with a computing op), different for the two cell types."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for t in SPACE.cell_types:
        rows = []
        for _ in range(SPACE.num_edges):
            k = sizes[int(torch.randint(len(sizes), (1,), generator=g))]
            rows.append(sorted(torch.randperm(8, generator=g)[:k].tolist()))
            if rows[-1] == [0]:
                rows[-1] = [0, 4]
        out[t] = rows
    return out


# ------------------------------------------------------------------------------- candidate sets


def test_space_with_candidates_is_data_and_validated() -> None:
    sets = random_candidates(0)
    space = SPACE.with_candidates(sets)
    assert space.restricted and not SPACE.restricted and space.ops == SPACE.ops
    assert [list(space.edge_ops("reduce", e)) for e in range(14)] == sets["reduce"]
    assert space.candidates_json()["normal"][0] == [OPS[k] for k in sets["normal"][0]]
    assert space == SPACE.with_candidates(space.candidates_json())  # names or indices, same space
    assert space.without_ops(["none"]).edge_ops("normal", 0) == tuple(
        space.without_ops(["none"]).op_index(OPS[k]) for k in sets["normal"][0] if k != 0
    )
    with pytest.raises(ConfigError, match="at least one candidate op other than 'none'"):
        SPACE.with_candidates({"normal": [[0]] * 14})
    with pytest.raises(ConfigError, match="candidate sets for 3 edges"):
        SPACE.with_candidates({"normal": [[1]] * 3})
    with pytest.raises(ConfigError, match="unknown cell type"):
        SPACE.with_candidates({"normal_9": [[1]] * 14})


def _copy_restricted_into_full(restricted: torch.nn.Module, full: torch.nn.Module) -> None:
    """Give the full supernet the restricted one's weights (matching ops by their weight column)."""
    full_state = full.state_dict()
    for name, value in restricted.state_dict().items():
        parts = name.split(".")
        if len(parts) > 5 and parts[0] == "cells" and parts[2] == "edges" and parts[4] == "ops":
            edge = restricted.cells[int(parts[1])].edges[int(parts[3])]
            parts[5] = str(edge.columns[int(parts[5])])
        full_state[".".join(parts)] = value
    full.load_state_dict(full_state)


@pytest.mark.parametrize("training", [True, False])
def test_a_restricted_supernet_equals_the_full_one_with_zero_weights_on_removed_ops(training: bool) -> None:
    """Outputs, weight gradients and alpha gradients agree with the full supernet whose removed ops have
    weight exactly 0."""
    space = SPACE.with_candidates(random_candidates(1))
    torch.manual_seed(0)
    restricted = SearchModel.build("darts", space=space, C=4, layers=5, num_classes=3)
    full = SearchModel.build("darts", C=4, layers=5, num_classes=3)
    assert sum(p.numel() for p in restricted.supernet.parameters()) < sum(
        p.numel() for p in full.supernet.parameters()
    )
    _copy_restricted_into_full(restricted.supernet, full.supernet)
    full.supernet.train(training)
    restricted.supernet.train(training)
    alphas = {t: torch.randn(14, 8, requires_grad=True) for t in SPACE.cell_types}
    masks = {t: torch.tensor(space.candidate_mask(t)) for t in SPACE.cell_types}
    weights = {t: masked_softmax(a, masks[t]) for t, a in alphas.items()}
    assert all(float(weights[t].detach()[~masks[t]].abs().sum()) == 0.0 for t in weights)  # removed: 0
    x = torch.randn(2, 3, 8, 8)
    out_r = restricted.supernet(x, weights)
    params_r = [*alphas.values(), *restricted.supernet.parameters()]
    grads_r = torch.autograd.grad(out_r.square().sum(), params_r, retain_graph=True)
    out_f = full.supernet(x, weights)
    names = dict(restricted.supernet.named_parameters())
    full_params = dict(full.supernet.named_parameters())
    grads_f = torch.autograd.grad(out_f.square().sum(), [*alphas.values(), *full_params.values()])
    torch.testing.assert_close(out_r, out_f, rtol=1e-5, atol=1e-6)
    for a_r, a_f in zip(grads_r[:2], grads_f[:2]):
        torch.testing.assert_close(a_r, a_f, rtol=1e-4, atol=1e-7)
    by_full_name = dict(zip(full_params, grads_f[2:]))
    for (name, _), grad in zip(names.items(), grads_r[2:]):
        parts = name.split(".")
        if len(parts) > 5 and parts[0] == "cells" and parts[2] == "edges" and parts[4] == "ops":
            edge = restricted.supernet.cells[int(parts[1])].edges[int(parts[3])]
            parts[5] = str(edge.columns[int(parts[5])])
        torch.testing.assert_close(grad, by_full_name[".".join(parts)], rtol=1e-4, atol=1e-7)


def test_the_darts_algorithm_masks_the_softmax_to_the_candidates() -> None:
    space = SPACE.with_candidates(random_candidates(2))
    model = SearchModel.build("darts", space=space, C=4, layers=3, num_classes=3)
    for t, w in model.arch_weights().items():
        mask = torch.tensor(space.candidate_mask(t))
        assert float(w[~mask].abs().sum()) == 0.0
        torch.testing.assert_close(w.sum(-1), torch.ones(14))


def test_derivation_only_picks_candidates() -> None:
    sets = {t: [[0, 3, 4]] * 14 for t in SPACE.cell_types}  # none, skip, sep_conv_3x3
    space = SPACE.with_candidates(sets)
    w = torch.full((14, 8), 0.01)
    w[:, OPS.index("dil_conv_5x5")] = 0.9  # the largest weight, but not a candidate anywhere
    w[:, OPS.index("skip_connect")] = 0.2
    w[2, OPS.index("sep_conv_3x3")] = 0.5
    cell = derive_darts_cell(w, space, cell_type="normal")
    assert {op for node in cell.nodes for op, _ in node} <= {"skip_connect", "sep_conv_3x3"}
    assert ("sep_conv_3x3", 0) in cell.nodes[1]  # edge 2 = node 1 <- state 0


# --------------------------------------------------------------------------------------- P-DARTS rules


def test_skip_dropout_schedule_is_the_reference_formula() -> None:
    # P-DARTS' schedule: rate * (E - e - 1) / E while weights only, then rate * exp(-(e - 10) * 0.2)
    assert skip_dropout_rate(0.4, 0, 25, 10) == pytest.approx(0.4 * 24 / 25)
    assert skip_dropout_rate(0.4, 9, 25, 10) == pytest.approx(0.4 * 15 / 25)
    assert skip_dropout_rate(0.4, 10, 25, 10) == pytest.approx(0.4)
    assert skip_dropout_rate(0.4, 15, 25, 10) == pytest.approx(0.4 * math.exp(-1.0))
    alg = PDARTS(SPACE)
    assert alg.options.skip_dropout == (0.1, 0.4, 0.7)
    alg.start_stage(2, None)
    assert alg.epoch_settings(12, 25) == {"skip_dropout": pytest.approx(0.7 * math.exp(-0.4))}
    assert not alg.updates_architecture(9) and alg.updates_architecture(10)


def test_skip_dropout_drops_the_identity_output_in_training_only() -> None:
    torch.manual_seed(0)
    edge = MixedEdge(4, 1, ("skip_connect", "none"))
    x = torch.randn(64, 4, 6, 6)
    w = torch.tensor([1.0, 0.0])
    edge.train()
    torch.testing.assert_close(edge(x, w), x)
    edge.skip_dropout = 0.5
    y = edge(x, w)
    zeros = float((y == 0).float().mean())
    assert 0.4 < zeros < 0.6
    torch.testing.assert_close(y[y != 0], (2 * x)[y != 0])  # survivors scaled by 1 / (1 - p)
    edge.eval()
    torch.testing.assert_close(edge(x, w), x)


def test_the_final_normal_cell_keeps_at_most_max_skip_skip_connects() -> None:
    """Hand-set weights: every node's two best edges are skip_connect; the weakest skips are replaced by
    their edge's next best op until two are left (Chen et al. 2019, "Search Space Regularization")."""
    alg = PDARTS(SPACE, max_skip=2)
    skip, sep, dil = OPS.index("skip_connect"), OPS.index("sep_conv_3x3"), OPS.index("dil_conv_3x3")
    logits = torch.full((14, 8), -5.0)
    # skip_connect is every edge's best op, weaker on later edges; sep_conv_3x3 is the next best
    for e in range(14):
        logits[e, skip] = 4.0 - 0.1 * e
        logits[e, sep] = 1.0 + 0.01 * e
        logits[e, dil] = 0.5
    with torch.no_grad():
        alg.alphas["normal"].copy_(logits)
        alg.alphas["reduce"].copy_(logits)
    genotype = alg.derive()
    normal = genotype.cell("normal")
    assert normal.count_op("skip_connect") == 2
    # the strongest skips survive: edges 0 and 1 (node 0); every other edge takes sep_conv_3x3
    assert normal.nodes[0] == (("skip_connect", 0), ("skip_connect", 1))
    assert all(op == "sep_conv_3x3" for node in normal.nodes[1:] for op, _ in node)
    assert genotype.cell("reduce").count_op("skip_connect") == 8  # the reduction cell is not limited
    unlimited = PDARTS(SPACE, max_skip=8)
    with torch.no_grad():
        unlimited.alphas["normal"].copy_(logits)
    assert unlimited.derive().cell("normal").count_op("skip_connect") == 8


def test_every_one_of_three_normal_cell_types_keeps_at_most_max_skip_skip_connects() -> None:
    """Paganucci 2020, section 3.3.2 (three normal-cell types) with the P-DARTS skip limit (Chen et al.
    2019; thesis section 3.2.2): each normal-cell type is limited on its own. In every type skip_connect is
    every edge's best op (8 skips by the DARTS rule); a different pair of edges per type holds the
    strongest skips and keeps them, every other chosen edge takes its next best op, sep_conv_3x3."""
    space = DartsSpace(num_normal_types=3)
    assert space.normal_types == ("normal", "normal_2", "normal_3")
    alg = PDARTS(space, max_skip=2)
    skip, sep = OPS.index("skip_connect"), OPS.index("sep_conv_3x3")
    edge_of = {(e.node, e.source): e.index for e in space.edges}
    kept = {  # per type: the node and the two sources whose skips are the strongest
        "normal": (0, {0, 1}),
        "normal_2": (2, {2, 3}),
        "normal_3": (3, {2, 4}),
    }
    with torch.no_grad():
        for t, (node, sources) in kept.items():
            logits = torch.full((14, 8), -5.0)
            for e in range(14):
                logits[e, skip] = 3.0 - 0.05 * e
                logits[e, sep] = 1.0 + 0.01 * e
            for source in sources:
                logits[edge_of[(node, source)], skip] = 4.0
            alg.alphas[t].copy_(logits)
            unlimited = derive_darts_cell(masked_softmax(logits, None), space, cell_type=t)
            assert unlimited.count_op("skip_connect") == 8  # above max_skip before the limit
        alg.alphas["reduce"].copy_(torch.full((14, 8), -5.0).index_fill_(1, torch.tensor([skip]), 4.0))
    genotype = alg.derive()
    assert genotype.num_normal_types == 3
    for stage, (t, (node, sources)) in enumerate(kept.items()):
        cell = genotype.cell("normal", stage)
        assert cell.count_op("skip_connect") == 2, t
        assert {(op, i) for op, i in cell.nodes[node]} == {("skip_connect", i) for i in sources}, t
        others = [op for n, pairs in enumerate(cell.nodes) if n != node for op, _ in pairs]
        assert others == ["sep_conv_3x3"] * 6, t
    assert genotype.cell("reduce").count_op("skip_connect") == 8  # the reduction cell is not limited


def test_next_candidates_keep_the_best_ops_of_every_edge() -> None:
    alg = PDARTS(SPACE)
    torch.manual_seed(3)
    with torch.no_grad():
        for a in alg.alphas.values():
            a.copy_(torch.randn(14, 8))
    kept = alg.next_candidates()
    for t in SPACE.cell_types:
        w = alg.arch_weights()[t]
        for e in range(14):
            expected = sorted(torch.topk(w[e], 5).indices.tolist())
            assert kept[t][e] == expected


# ------------------------------------------------------------------------------------------ searches


def pdarts_config(tmp_path: Path, **overrides: object) -> SearchConfig:
    options = {"stage_epochs": (1, 1, 1), "stage_layers": (3, 4, 5), "warmup_epochs": 0}
    values = {"method_options": options, "layers": None, "epochs": None, "seed": 3, **overrides}
    return tiny_search(tmp_path, "pdarts", **values)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A finished 3-stage search and what each stage's supernet looked like."""
    folder = tmp_path_factory.mktemp("pdarts")
    shapes: list[tuple[int, set[int]]] = []
    released: list[bool] = []
    earlier: list[weakref.ref] = []
    build = SearchRunner._build_stage

    def recording(self, index, space, previous):  # type: ignore[no-untyped-def]
        build(self, index, space, previous)
        net = self.model.supernet
        shapes.append((len(net.cells), {len(edge.ops) for cell in net.cells for edge in cell.edges}))
        released.append(all(ref() is None for ref in earlier))  # no earlier supernet is still alive
        earlier.append(weakref.ref(net))

    with pytest.MonkeyPatch.context() as m:
        m.setattr(SearchRunner, "_build_stage", recording)
        result = run_search(pdarts_config(folder), progress=False)
    return {"result": result, "shapes": shapes, "released": released, "dir": folder / "run"}


def test_a_three_stage_search_deepens_and_narrows_the_supernet(uninterrupted: dict[str, object]) -> None:
    run = uninterrupted["dir"]
    assert isinstance(run, Path)
    assert uninterrupted["shapes"] == [(3, {8}), (4, {5}), (5, {3})]
    assert all(uninterrupted["released"])
    stages = json.loads((run / "stages.json").read_text())
    assert [s["layers"] for s in stages] == [3, 4, 5] and [s["epochs"] for s in stages] == [
        [1, 1],
        [2, 2],
        [3, 3],
    ]
    assert all(len(ops) == 8 for ops in stages[0]["candidates"]["normal"])
    assert all(len(ops) == 5 for ops in stages[1]["candidates"]["reduce"])
    assert stages[0]["kept"] == stages[1]["candidates"] and stages[1]["kept"] == stages[2]["candidates"]
    assert all(s["peak_memory_mb"] > 0 for s in stages)
    genotype = uninterrupted["result"].genotype  # type: ignore[attr-defined]
    assert stages[2]["genotype"] == genotype.to_literal()
    final = stages[2]["candidates"]
    edge_of = {(e.node, e.source): e.index for e in SPACE.edges}
    for t in ("normal", "reduce"):
        for n, node in enumerate(genotype.cell(t).nodes):
            for op, i in node:
                assert op in final[t][edge_of[(n, i)]] and op != "none"  # from the last candidates
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["stage_epoch"]) for r in rows] == [(1, 1), (2, 1), (3, 1)]
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 3 and config["method_options"]["keep_ops"] == [5, 3, 1]


@pytest.mark.parametrize("crash_epoch", [1, 2], ids=["in-stage-2", "stage-3-before-its-checkpoint"])
def test_resume_in_any_stage_gives_the_uninterrupted_genotype(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted: dict[str, object], crash_epoch: int
) -> None:
    interrupt_search_at(monkeypatch, crash_epoch, pdarts_config(tmp_path))
    result = resume_search(tmp_path / "run", progress=False)
    expected = uninterrupted["result"]
    assert result.genotype == expected.genotype  # type: ignore[attr-defined]
    ours = (tmp_path / "run" / "alphas.jsonl").read_text()
    theirs = (uninterrupted["dir"] / "alphas.jsonl").read_text()  # type: ignore[operator]
    assert ours == theirs


def test_dataset_presets_and_options_reach_the_run(tmp_path: Path) -> None:
    assert pdarts_config(tmp_path, dataset="cifar100").resolved().options.skip_dropout == (0.1, 0.2, 0.3)
    resolved = pdarts_config(tmp_path).resolved()
    assert resolved.arch_grad_clip == 5.0 and resolved.batch_size == 16 and resolved.lr_min == 0.0
    assert resolved.layers == 5 and resolved.epochs == 3
    assert PDARTSOptions().stage_layers == (5, 11, 17) and PDARTSOptions().keep_ops == (5, 3, 1)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--stage-layers", "5,11"], "stage_layers (--stage-layers) has 2 entries but there are 3 stages"),
        (["--keep-ops", "9,3,1"], "keeps 9 ops after stage 1, but the edges have only 8 candidates"),
        (["--keep-ops", "5,3,2"], "must end with 1"),
        (["--max-skip", "-1"], "max_skip (--max-skip) must be >= 0"),
        (["--epochs", "10"], "set --stage-epochs instead of --epochs"),
        (["--skip-dropout", "0.1,1.5,0.2"], "rates must be in [0, 1)"),
    ],
)
def test_bad_pdarts_options_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    base = ["search", "--method", "pdarts", "--dataset", "digits", "--limit", "32", "--batch-size", "16"]
    base += ["--C", "4", "--stage-epochs", "1,1,1", "--stage-layers", "3,3,3", "--warmup-epochs", "0"]
    base += ["--out-dir", str(tmp_path), "--no-progress", "--device", "cpu"]
    if args[0] == "--stage-layers":
        base = base[: base.index("--stage-layers")] + base[base.index("--stage-layers") + 2 :]
    assert main([*base, *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def test_pdarts_with_three_nodes_and_three_normal_cell_types_retrains(tmp_path: Path) -> None:
    """Paganucci 2020's variants (sections 3.3.1, 3.3.2): 3 intermediate nodes, one normal-cell type per
    stage; the genotype retrains."""
    options = {"stage_epochs": (1, 1), "stage_layers": (5, 5), "keep_ops": (4, 1), "skip_dropout": (0.1, 0.4)}
    options["warmup_epochs"] = 0
    config = pdarts_config(tmp_path, nodes=3, normal_types=3, method_options=options)
    result = run_search(config, progress=False)
    genotype = result.genotype
    assert genotype.num_normal_types == 3
    assert all(c.num_nodes == 3 and c.concat == (2, 3, 4) for _, c in genotype.cells)
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert set(stages[1]["candidates"]) == {"normal", "normal_2", "normal_3", "reduce"}
    assert all(len(ops) == 4 for ops in stages[1]["candidates"]["normal_3"])
    args = ["train", "--genotype", str(tmp_path / "run"), "--dataset", "digits", "--epochs", "1", "--C", "4"]
    args += ["--layers", "5", "--limit", "32", "--batch-size", "16", "--device", "cpu", "--no-progress"]
    assert main([*args, "--out-dir", str(tmp_path / "train")]) == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--ops", "sep_conv_3x3,conv_9x9"], "unknown op 'conv_9x9'"),
        (["--ops", "thesis,none"], "one preset"),
        (["--exclude-ops", "dil_conv_3x3_dd"], "not in the space's ops"),
        (["--normal-types", "2"], "--normal-types must be 1 or 3"),
    ],
)
def test_bad_space_options_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    base = ["search", "--dataset", "digits", "--out-dir", str(tmp_path), "--no-progress", "--epochs", "1"]
    assert main([*base, *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())


def test_space_options_reach_the_supernet_and_the_config(tmp_path: Path) -> None:
    config = SearchConfig(dataset="digits", ops=("thesis",), exclude_ops=("none", "dil_conv_5x5")).resolved()
    space = config.build_space()
    assert "deep_sep_conv_3x3" in space.ops and "none" not in space.ops and len(space.ops) == 12
    assert json.loads(json.dumps(config.to_json()))["ops"] == ["thesis"]
    three = SearchConfig(dataset="digits", nodes=3).resolved().build_space()
    assert three.num_nodes == 3 and three.multiplier == 3 and three.num_edges == 9


def test_the_fast_executor_runs_per_edge_candidate_sets_itself() -> None:
    """Cells whose edges hold different candidates run batched (no fallback to the reference loop) and
    give the reference loop's output."""
    space = SPACE.with_candidates(random_candidates(4))
    torch.manual_seed(0)
    model = SearchModel.build("darts", space=space, C=4, layers=3, num_classes=3, executor="fast")
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast = model(x)
    assert not [w for w in caught if "reference loop" in str(w.message)]
    model.supernet.set_executor("reference")
    torch.testing.assert_close(fast, model(x))


# ---------------------------------------------------------------------------------- published presets


def test_the_published_pdarts_hyper_parameters_resolve_from_the_config() -> None:
    """Chen et al. 2019 (search settings): batch 96, SGD lr 0.025 cosine to 0, architecture Adam lr 6e-4
    with weight decay 1e-3 and gradients clipped to 5, three stages of 25 epochs on 5, 11, 17 cells of
    C=16 - the numbers typed in, not read from the code."""
    resolved = SearchConfig(method="pdarts").resolved()
    assert resolved.batch_size == 96
    assert resolved.lr == 0.025 and resolved.lr_min == 0.0
    assert resolved.arch_lr == 6e-4 and resolved.arch_weight_decay == 1e-3
    assert resolved.arch_grad_clip == 5.0
    assert resolved.epochs == 75 and resolved.layers == 17 and resolved.C == 16
    options = resolved.options
    assert isinstance(options, PDARTSOptions)
    assert options.stage_epochs == (25, 25, 25) and options.stage_layers == (5, 11, 17)
    assert options.max_skip == 2 and options.warmup_epochs == 10


@pytest.mark.parametrize(
    ("dataset", "rates"),
    [
        ("cifar10", (0.1, 0.4, 0.7)),  # the authors' public search command (chenxin061/pdarts README)
        ("cifar100", (0.1, 0.2, 0.3)),  # the paper's text (Chen et al. 2019)
    ],
)
def test_the_skip_dropout_preset_of_each_dataset_has_its_published_rates(
    dataset: str, rates: tuple[float, ...]
) -> None:
    resolved = SearchConfig(method="pdarts", dataset=dataset).resolved()
    assert isinstance(resolved.options, PDARTSOptions)
    assert resolved.options.skip_dropout == rates
