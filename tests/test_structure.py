"""The shape of the code: the package layering of DESIGN.md, no import cycles, methods as one module.

Imports are read from the source with :mod:`ast`, all of them: module level, inside functions and under
``TYPE_CHECKING`` (an import hidden in a function still ties two packages together).
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest

import fastnas
from fastnas.algorithms import MethodOptions, SearchDefaults
from fastnas.cli import main
from fastnas.methods import METHODS
from fastnas.nn import EnTranNASSupernet, NetworkCIFAR, NetworkImageNet, Supernet
from fastnas.nn.skeleton import DartsSkeleton
from fastnas.train.retrain_config import RECIPES, ResolvedTrainConfig, TrainConfig
from fastnas.train.search_config import ResolvedSearchConfig, SearchConfig

ROOT = Path(__file__).resolve().parents[1]

#: For each unit, the units it must never import (a unit is a subpackage or a top-level module).
FORBIDDEN: dict[str, set[str]] = {
    "fastnas.spaces": {"fastnas.nn", "fastnas.algorithms", "fastnas.train", "fastnas.methods"},
    "fastnas.algorithms": {"fastnas.nn", "fastnas.train", "fastnas.methods", "fastnas.search_model"},
    "fastnas.nn": {"fastnas.train", "fastnas.methods", "fastnas.search_model", "fastnas.cli", "fastnas.info"},
    "fastnas.ops": {"fastnas.nn", "fastnas.algorithms", "fastnas.spaces", "fastnas.train"},
    "fastnas.kernels": {"fastnas.nn", "fastnas.algorithms", "fastnas.ops", "fastnas.train"},
    "fastnas.methods": {"fastnas.train", "fastnas.cli"},
    "fastnas.train": {"fastnas.cli", "fastnas.info"},
}
LEAVES = {"fastnas.errors", "fastnas.fileio", "fastnas.fields", "fastnas.backend", "fastnas.genotype_zoo"}


def _unit_of_file(path: Path) -> str:
    rel = path.relative_to(ROOT)
    if rel.parts[0] == "kernels":
        return "fastnas.kernels"
    if len(rel.parts) == 2:  # fastnas/<module>.py
        return "fastnas." + rel.stem
    return "fastnas." + rel.parts[1]


def _unit_of_module(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "fastnas" or len(parts) == 1:
        return None
    return "fastnas." + parts[1]


def _import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    files = [
        p for p in (ROOT / "fastnas").rglob("*.py") if p.name != "__init__.py" or p.parent.name != "fastnas"
    ]
    files += list((ROOT / "kernels").glob("*.py"))
    for path in files:
        unit = _unit_of_file(path)
        edges = graph.setdefault(unit, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "fastnas":
                    names = [f"fastnas.{a.name}" for a in node.names]
                else:
                    names = [node.module]
            for name in names:
                target = _unit_of_module(name)
                if target is not None and target != unit:
                    edges.add(target)
    return graph


GRAPH = _import_graph()


def _reaches(start: str, goal: str) -> list[str] | None:
    """An import path from ``start`` to ``goal``, or None."""
    stack, seen = [[start]], {start}
    while stack:
        path = stack.pop()
        for nxt in GRAPH.get(path[-1], ()):
            if nxt == goal:
                return [*path, nxt]
            if nxt not in seen:
                seen.add(nxt)
                stack.append([*path, nxt])
    return None


def test_graph_covers_the_packages() -> None:
    for unit in ("fastnas.spaces", "fastnas.algorithms", "fastnas.nn", "fastnas.train", "fastnas.methods"):
        assert GRAPH.get(unit), f"{unit} not found: the import graph is not being read"
    assert "fastnas.algorithms" in GRAPH["fastnas.nn"]  # nn may use the derivation rules


@pytest.mark.parametrize("unit", sorted(FORBIDDEN))
def test_layering(unit: str) -> None:
    bad = {target: _reaches(unit, target) for target in FORBIDDEN[unit]}
    assert not {k: v for k, v in bad.items() if v}, (
        f"{unit} imports (directly or not) what it must not: {bad}"
    )


def test_no_import_cycles() -> None:
    cycles = [path for unit in GRAPH for path in [_reaches(unit, unit)] if path]
    assert not cycles, f"import cycles: {cycles}"


def test_leaf_modules_import_no_other_fastnas_unit() -> None:
    for leaf in LEAVES:
        assert GRAPH.get(leaf, set()) <= {"fastnas.errors"}, (leaf, GRAPH.get(leaf))


def test_every_darts_network_is_built_by_the_one_skeleton() -> None:
    for cls in (Supernet, EnTranNASSupernet, NetworkCIFAR, NetworkImageNet):
        assert issubclass(cls, DartsSkeleton), cls
    # no copy of the macro loop is left: the reduction positions (x // 3) are computed in one place
    for path in (ROOT / "fastnas").rglob("*.py"):
        if path.name == "skeleton.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.FloorDiv):
                assert not (isinstance(node.right, ast.Constant) and node.right.value == 3), (
                    f"{path.name}:{node.lineno} computes reduction positions; use fastnas.nn.skeleton"
                )


# --------------------------------------------------------------------------------- configs are typed


def _hyper_names() -> list[str]:
    return [f.name for f in dataclasses.fields(SearchDefaults)]


def test_resolved_configs_have_no_unresolved_defaults() -> None:
    search_types = typing.get_type_hints(ResolvedSearchConfig)
    for name in _hyper_names():
        assert type(None) not in typing.get_args(search_types[name]), name
        # the request form takes None for "published default"
        assert type(None) in typing.get_args(typing.get_type_hints(SearchConfig)[name]), name
    recipe_fields = [f.name for f in dataclasses.fields(type(RECIPES["cifar10"])) if f.name != "network"]
    train_types = typing.get_type_hints(ResolvedTrainConfig)
    for name in recipe_fields:
        assert type(None) not in typing.get_args(train_types[name]), name
    request = {f.name for f in dataclasses.fields(TrainConfig)}
    # the effective batch resolves into the per-process batch and the world size; the resolved config
    # also records how the run's files number epochs
    assert request - {"global_batch_size"} | {"world_size", "epoch_base", "run_id"} == {
        f.name for f in dataclasses.fields(ResolvedTrainConfig)
    }


def test_resolved_search_config_round_trips_through_json() -> None:
    resolved = SearchConfig(method="entrannas-dst", method_options={"lam": 0.2}, dataset="digits").resolved()
    assert resolved.epochs == METHODS["entrannas-dst"].defaults.epochs
    data = resolved.to_json()
    assert data["method_options"]["lam"] == 0.2 and data["method_options"]["tau0"] == 5.0  # all recorded
    assert ResolvedSearchConfig.from_json(data) == resolved


# ---------------------------------------------------------------------- methods declare their options


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_option_is_documented_and_on_the_command_line(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    method = METHODS[name]
    assert issubclass(method.Options, MethodOptions)
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--method", name, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"{name} options" in text
    for spec in method.Options.specs():
        assert spec.help, f"{name}.{spec.name} has no help text"
        assert spec.flag in text, f"{spec.flag} missing from `fastnas search --method {name} --help`"


def test_a_new_method_needs_no_change_to_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Register a method with an option of its own: the CLI offers the flag, validates it and the run's
    config records it, without any change to cli.py."""

    @dataclasses.dataclass(frozen=True)
    class ToyOptions(MethodOptions):
        knob: int = fastnas.algorithms.option(3, "a toy option", ge=1)

    class Toy(fastnas.algorithms.DARTS):
        name = "toy"
        Options = ToyOptions  # type: ignore[assignment]

        def __init__(self, space, options=None, **values):  # type: ignore[no-untyped-def]
            fastnas.algorithms.SearchAlgorithm.__init__(self, space, options, **values)
            self.alphas = fastnas.algorithms.darts.init_alphas(self.space, 1e-3)

    toy = dataclasses.replace(METHODS["darts"], name="toy", algorithm=Toy, summary="a toy method")
    monkeypatch.setitem(METHODS, "toy", toy)
    seen: dict[str, object] = {}

    def fake_run(config, progress=True, overwrite=False):  # type: ignore[no-untyped-def]
        seen["resolved"] = config.resolved()
        raise KeyboardInterrupt

    monkeypatch.setattr("fastnas.train.run_search", fake_run)
    assert main(["search", "--method", "toy", "--knob", "5", "--dataset", "digits"]) == 130
    resolved = seen["resolved"]
    assert resolved.options == ToyOptions(knob=5)  # type: ignore[attr-defined]
    assert resolved.to_json()["method_options"] == {"knob": 5}  # type: ignore[attr-defined]
    with pytest.raises(SystemExit):
        main(["search", "--method", "toy", "--knob", "zero"])
    assert main(["search", "--method", "toy", "--knob", "0", "--dataset", "digits"]) == 2  # ge=1


def test_missing_shared_data_fails_unless_skipping_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import ALLOW_MISSING_SHARED, require_shared

    missing = ROOT / "no-such-shared-file.csv"
    monkeypatch.delenv(ALLOW_MISSING_SHARED, raising=False)
    with pytest.raises(pytest.fail.Exception, match=ALLOW_MISSING_SHARED):
        require_shared(missing)
    monkeypatch.setenv(ALLOW_MISSING_SHARED, "1")
    with pytest.raises(pytest.skip.Exception):
        require_shared(missing)
    assert require_shared(Path(__file__)) == Path(__file__)
