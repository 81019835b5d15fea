"""The shape of the code: the package layering of DESIGN.md, no import cycles, methods as one module.

Imports are read from the source with :mod:`ast`, all of them: module level, inside functions and under
``TYPE_CHECKING`` (an import hidden in a function still ties two packages together).
"""

from __future__ import annotations

import ast
import dataclasses
import os
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


def _python_files() -> dict[str, Path]:
    """Every Python module of the tree by its import name, from every top-level folder. A file reached
    through a link (``fastnas/kernels`` is the top-level ``kernels/``) is named by its deepest path, the
    one it is imported by."""
    by_file: dict[Path, Path] = {}
    for top in sorted(p for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for folder, _, names in os.walk(top, followlinks=True):
            for name in names:
                if name.endswith(".py"):
                    path = Path(folder, name)
                    rel, real = path.relative_to(ROOT), path.resolve()
                    if real not in by_file or len(rel.parts) > len(by_file[real].parts):
                        by_file[real] = rel
    modules = {}
    for real, rel in by_file.items():
        parts = list(rel.with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = real
    return modules


MODULES = _python_files()


def _imported_modules(module: str, path: Path) -> set[str]:
    """The modules of the tree that ``module`` imports: every import (module level, in functions, under
    ``TYPE_CHECKING``); ``from package import name`` counts as the module ``package.name`` where that is
    one; a bare name next to the importer (``from conftest import``, tests/ is no package) as that module."""
    folder = module.split(".")[0]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]

    def known(name: str) -> str | None:
        while name:
            if name in MODULES:
                return name
            name = name.rpartition(".")[0]
        return None

    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for name in names:
            target = known(name) or (
                f"{folder}.{name.split('.')[0]}" if f"{folder}.{name.split('.')[0]}" in MODULES else None
            )
            if target is not None and target != module:
                out.add(target)
    return out


MODULE_GRAPH = {module: _imported_modules(module, path) for module, path in MODULES.items()}


def _unit(module: str) -> str:
    """The layering unit of a module: a subpackage or top-level module of fastnas, else the module."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "fastnas" and len(parts) > 1 else module


def _import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, targets in MODULE_GRAPH.items():
        if module == "fastnas":
            continue  # the package's own __init__ re-exports every unit
        edges = graph.setdefault(_unit(module), set())
        edges |= {_unit(t) for t in targets if t != "fastnas" and _unit(t) != _unit(module)}
    return graph


GRAPH = _import_graph()


def _reaches(start: str, goal: str, graph: dict[str, set[str]] = GRAPH) -> list[str] | None:
    """An import path from ``start`` to ``goal``, or None."""
    stack, seen = [[start]], {start}
    while stack:
        path = stack.pop()
        for nxt in graph.get(path[-1], ()):
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


def test_graph_covers_every_top_level_python_folder() -> None:
    tops = {p.name for p in ROOT.iterdir() if p.is_dir() and any(p.glob("*.py"))} - {"kernels"}
    assert {m.split(".")[0] for m in MODULES} == tops == {"fastnas", "benchmarks", "tests"}
    assert "fastnas.kernels.pointwise_conv" in MODULES  # kernels/, by the name it is imported with
    assert "fastnas.nn.supernet_options" in MODULE_GRAPH["fastnas.search_model"]


def test_no_import_cycles_between_units() -> None:
    cycles = [path for unit in GRAPH for path in [_reaches(unit, unit)] if path]
    assert not cycles, f"import cycles: {cycles}"


def test_no_import_cycles_between_modules() -> None:
    """Not even inside a package (a package's ``__init__`` re-exporting its modules is no cycle: a module
    that needs a name imports the module that defines it)."""
    cycles = [path for module in MODULE_GRAPH for path in [_reaches(module, module, MODULE_GRAPH)] if path]
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
