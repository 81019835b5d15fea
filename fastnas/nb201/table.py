"""The NAS-Bench-201 results table: trained accuracies of the 15,625 cells (Dong & Yang, "NAS-Bench-201:
Extending the Scope of Reproducible Neural Architecture Search", ICLR 2020).

Read from a CSV with the columns of ``nb201.csv`` (``index``, ``arch_str``, ``c10_valid_xvalid``,
``c10_test_nats``, ``c100_test_nats``, ``in16_test_nats``, ``params_M``, ...), or from the official
benchmark file (``.pth``) through the ``nas_201_api`` package. Accuracies are percentages: a NaN,
infinite, negative or > 100 accuracy (or a NaN, infinite or negative ``params_M``) is refused on load,
naming the CSV line and column.
"""

from __future__ import annotations

import csv
import errno
import itertools
import math
import operator
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from fastnas.errors import ConfigError, DataError, MissingDependencyError, MissingPathError
from fastnas.nb201.arch import NB201_EDGES, NB201Arch

_WHERE = (
    "use a CSV with the columns of nb201.csv (index, arch_str, c10_valid_xvalid, c10_test_nats, "
    "c100_test_nats, in16_test_nats, params_M), or the official NAS-Bench-201 file "
    "(NAS-Bench-201-v1_1-096897.pth, see https://github.com/D-X-Y/NAS-Bench-201)"
)

# NB201Result field -> CSV column
CSV_COLUMNS: dict[str, str] = {
    "c10_valid": "c10_valid_xvalid",
    "c10_test": "c10_test_nats",
    "c100_test": "c100_test_nats",
    "in16_test": "in16_test_nats",
    "params_M": "params_M",
}
METRICS: tuple[str, ...] = ("c10_valid", "c10_test", "c100_test", "in16_test")
_FIX_VALUES = "fix or regenerate the table (an empty cell means no value)"


class NB201LookupError(KeyError):
    """An architecture or index that the table does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class NB201Result:
    """Results of one cell; ``None`` where the table has no value.

    ``c10_valid``: CIFAR-10 accuracy on the held-out half of its training set (``c10_valid_xvalid``);
    ``c10_test``, ``c100_test``, ``in16_test``: test accuracy on CIFAR-10, CIFAR-100, ImageNet16-120
    (200 epochs); ``params_M``: parameters in millions of the 10-class network.
    """

    index: int
    arch_str: str
    c10_valid: float | None = None
    c10_test: float | None = None
    c100_test: float | None = None
    in16_test: float | None = None
    params_M: float | None = None

    @property
    def arch(self) -> NB201Arch:
        return NB201Arch.parse(self.arch_str)

    def metric(self, name: str) -> float | None:
        return getattr(self, _metric_field(name))


def _metric_field(name: str) -> str:
    """Field name of ``name`` (a field such as ``c10_test`` or its CSV column ``c10_test_nats``)."""
    if name in CSV_COLUMNS:
        return name
    for field_name, column in CSV_COLUMNS.items():
        if name == column:
            return field_name
    options = ", ".join(f"{f} ({c})" for f, c in CSV_COLUMNS.items())
    raise ConfigError(f"unknown NB201 metric {name!r}; available: {options}")


def _missing_file(path: Path) -> MissingPathError:
    return MissingPathError(errno.ENOENT, f"NAS-Bench-201 table not found: {path}; {_WHERE}", str(path))


def _float_or_none(text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    return float(text)


def _bad_value(name: str, value: float | None) -> str | None:
    """Why ``value`` of field ``name`` cannot be a table value (an accuracy must be a finite percentage
    in [0, 100], a parameter count finite and >= 0), or None when it can (or is absent)."""
    if value is None:
        return None
    if not math.isfinite(value):
        return f"{value} is not a finite number"
    if name in METRICS and not 0.0 <= value <= 100.0:
        return f"{value} is not an accuracy in percent (0 to 100)"
    if value < 0:
        return f"{value} is negative"
    return None


class NB201Table:
    """Lookup of NAS-Bench-201 results by arch string, :class:`NB201Arch` or benchmark index."""

    def __init__(self, results: Iterable[NB201Result], source: str = "<memory>"):
        self.source = source
        self._results: list[NB201Result] = []
        self._by_arch: dict[str, NB201Result] = {}
        self._by_index: dict[int, NB201Result] = {}
        for result in results:
            try:
                literal = NB201Arch.parse(result.arch_str).to_literal()
            except (TypeError, ValueError) as err:
                raise DataError(f"{source}: entry with index {result.index}: {err}") from None
            if literal in self._by_arch:
                raise DataError(f"{source}: architecture {literal} appears twice")
            if result.index in self._by_index:
                raise DataError(f"{source}: index {result.index} appears twice")
            for name in CSV_COLUMNS:
                bad = _bad_value(name, getattr(result, name))
                if bad:
                    raise DataError(
                        f"{source}: entry with index {result.index}, {name}: {bad}; {_FIX_VALUES}"
                    )
            self._results.append(result)
            self._by_arch[literal] = result
            self._by_index[result.index] = result

    # ------------------------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NB201Table:
        """Load ``path`` by its suffix: ``.csv`` (:meth:`from_csv`) or ``.pth`` (:meth:`from_official`)."""
        path = Path(path)
        if not path.is_file():
            raise _missing_file(path)
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return cls.from_csv(path)
        if suffix == ".pth":
            return cls.from_official(path)
        raise DataError(f"cannot read NAS-Bench-201 table {path}: unknown suffix {suffix!r}; {_WHERE}")

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> NB201Table:
        """Read a CSV with the columns of ``nb201.csv``; metric columns may be absent or empty."""
        path = Path(path)
        if not path.is_file():
            raise _missing_file(path)
        try:
            with path.open(newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                header = reader.fieldnames or []
                missing = [c for c in ("index", "arch_str") if c not in header]
                if missing:
                    raise DataError(f"{path}: missing column(s) {missing}; found {header[:10]}; {_WHERE}")
                present = {f: c for f, c in CSV_COLUMNS.items() if c in header}
                results = []
                for line, row in enumerate(reader, start=2):
                    try:
                        values = {f: _float_or_none(row[c]) for f, c in present.items()}
                        results.append(NB201Result(int(row["index"]), row["arch_str"], **values))
                    except (TypeError, ValueError) as err:
                        raise DataError(f"{path}, line {line}: {err}") from None
                    for f, c in present.items():
                        bad = _bad_value(f, values[f])
                        if bad:
                            raise DataError(f"{path}, line {line}, column {c}: {bad}; {_FIX_VALUES}")
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{path} is not a CSV table ({type(exc).__name__}: {exc}); {_WHERE}") from None
        if not results:
            raise DataError(f"{path} has a header but no rows; {_WHERE}")
        return cls(results, source=str(path))

    @classmethod
    def from_official(cls, path: str | os.PathLike[str]) -> NB201Table:
        """Read the official benchmark file through ``nas_201_api`` (200-epoch results).

        Not exercised by the tests (the package and the 2 GB file are not available here).
        """
        path = Path(path)
        if not path.is_file():
            raise _missing_file(path)
        try:
            from nas_201_api import NASBench201API
        except ImportError as err:
            raise MissingDependencyError(
                f"reading the official NAS-Bench-201 file {path} needs the nas_201_api package: "
                "pip install nas-bench-201 (or convert it to a CSV with the columns of nb201.csv)"
            ) from err
        try:
            api = NASBench201API(str(path), verbose=False)

            def info(index: int, dataset: str, key: str) -> float | None:
                value = api.get_more_info(index, dataset, hp="200", is_random=False).get(key)
                return None if value is None else float(value)

            results = []
            for index in range(len(api)):
                cost = api.get_cost_info(index, "cifar10-valid", hp="200")
                results.append(
                    NB201Result(
                        index=index,
                        arch_str=api.arch(index),
                        c10_valid=info(index, "cifar10-valid", "valid-accuracy"),
                        c10_test=info(index, "cifar10", "test-accuracy"),
                        c100_test=info(index, "cifar100", "test-accuracy"),
                        in16_test=info(index, "ImageNet16-120", "test-accuracy"),
                        params_M=None if cost.get("params") is None else float(cost["params"]),
                    )
                )
        except Exception as exc:  # nas_201_api fails in many ways on a file that is not the benchmark
            raise DataError(
                f"{path} is not a NAS-Bench-201 benchmark file nas_201_api can read ({type(exc).__name__}: "
                f"{str(exc)[:200]}); {_WHERE}"
            ) from None
        return cls(results, source=str(path))

    # ------------------------------------------------------------------------------------ queries

    def __len__(self) -> int:
        return len(self._results)

    def __iter__(self) -> Iterator[NB201Result]:
        return iter(self._results)

    def __contains__(self, arch: object) -> bool:
        try:
            self.lookup(arch)  # type: ignore[arg-type]
        except (KeyError, ValueError, TypeError):
            return False
        return True

    def lookup(self, arch: str | NB201Arch | int) -> NB201Result:
        """Results of ``arch`` (arch string, :class:`NB201Arch`, or benchmark index).

        A malformed arch string raises ``ValueError``; a well-formed one that the table does not
        hold, or an unknown index, raises :class:`NB201LookupError` (a ``KeyError``).
        """
        if isinstance(arch, bool):
            raise TypeError(
                "NB201Table.lookup takes an arch string, an NB201Arch or an int index, not a bool"
            )
        if isinstance(arch, NB201Arch):
            literal = arch.to_literal()
        elif isinstance(arch, str):
            literal = NB201Arch.parse(arch).to_literal()
        else:
            try:
                index = operator.index(arch)  # int and numpy integers
            except TypeError:
                raise TypeError(
                    f"NB201Table.lookup takes an arch string, an NB201Arch or an int index, "
                    f"got {type(arch).__name__}"
                ) from None
            try:
                return self._by_index[index]
            except KeyError:
                raise NB201LookupError(
                    f"index {index} is not in the NAS-Bench-201 table {self.source} ({len(self)} entries)"
                ) from None
        try:
            return self._by_arch[literal]
        except KeyError:
            raise NB201LookupError(
                f"architecture {literal} is not in the NAS-Bench-201 table {self.source} "
                f"({len(self)} entries)"
            ) from None

    def missing(self, ops: Sequence[str]) -> list[NB201Arch]:
        """The cells made of ``ops`` (every op on every edge) that the table does not hold: a search on
        a space with these ops can derive any of them."""
        return [
            arch
            for arch in (NB201Arch(combo) for combo in itertools.product(ops, repeat=len(NB201_EDGES)))
            if arch.to_literal() not in self._by_arch
        ]

    def best(self, metric: str = "c10_test") -> NB201Result:
        """The entry with the highest ``metric`` (ties: the lowest index); entries without it are skipped."""
        name = _metric_field(metric)
        best: NB201Result | None = None
        for result in self._results:
            value = getattr(result, name)
            if value is None:
                continue
            if best is None:
                best = result
                continue
            current = getattr(best, name)  # never None: only results with a value are kept
            if value > current or (value == current and result.index < best.index):
                best = result
        if best is None:
            raise DataError(f"the NAS-Bench-201 table {self.source} has no values for {name!r}")
        return best


__all__ = ["CSV_COLUMNS", "METRICS", "NB201LookupError", "NB201Result", "NB201Table"]
