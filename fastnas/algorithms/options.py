"""Options declared once as a typed, frozen dataclass: a method's (:class:`MethodOptions`) and the
supernet's (:class:`fastnas.nn.supernet_options.SupernetOptions`), both :class:`OptionGroup` subclasses.

Each field is made with :func:`option` (default, help text, optional flag name and bounds). From that
one declaration the command line builds the method's ``--help`` section and flags, values from the
command line, a sweep spec (``darts:order=2``) or ``config.json`` are type-checked and range-checked,
and the run's ``config.json`` records every option with its default filled in::

    @dataclass(frozen=True)
    class DARTSOptions(MethodOptions):
        order: Literal[1, 2] = option(1, "architecture gradient: 1 = first order, 2 = second order")
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from fastnas.errors import ConfigError
from fastnas.fields import check_value, describe_type, field_types, parse_text

__all__ = ["MethodOptions", "OptionGroup", "OptionSpec", "option"]

T = TypeVar("T")
O = TypeVar("O", bound="OptionGroup")

_BOUNDS: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "gt": (operator.gt, ">"),
    "ge": (operator.ge, ">="),
    "lt": (operator.lt, "<"),
    "le": (operator.le, "<="),
}


def option(
    default: T,
    help: str,
    *,
    flag: str | None = None,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    reason: str = "",
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
) -> T:
    """An option: its default, the help text of its flag (``--name-with-dashes`` unless ``flag``
    is given) and numeric bounds (``gt``: value must be > gt, ``ge``: >=, ``lt``: <, ``le``: <=);
    ``reason``, if given, says why the bounds are what they are (appended to the out-of-bounds error);
    ``choices``, the allowed values (or a function that lists them when asked, e.g. a registry's names)."""
    bounds = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}
    metadata = {"help": help, "flag": flag, "bounds": bounds, "reason": reason, "choices": choices}
    field: Any = dataclasses.field(default=default, metadata=metadata)
    return field  # typed as T so that `x: int = option(...)` type-checks


@dataclass(frozen=True)
class OptionSpec:
    """One declared option, as the command line and the validators see it."""

    name: str
    type: Any
    default: Any
    help: str
    flag: str
    bounds: Mapping[str, float]
    reason: str = ""  # why the bounds (part of the out-of-bounds error)
    choices_of: Sequence[Any] | Callable[[], Sequence[Any]] | None = None

    @property
    def choices(self) -> tuple[Any, ...] | None:
        """The allowed values (None: any value of the type); a registry's names as they are now."""
        if self.choices_of is None:
            return None
        return tuple(self.choices_of() if callable(self.choices_of) else self.choices_of)

    def describe(self) -> str:
        """The help text with the type, bounds and default appended."""
        limits = ", ".join(f"{_BOUNDS[k][1]} {v:g}" for k, v in self.bounds.items())
        extra = f"{describe_type(self.type)}{', ' + limits if limits else ''}; default {self.default!r}"
        return f"{self.help} ({extra})"


@dataclass(frozen=True)
class OptionGroup:
    """Base class of a group of options (no options of its own). Subclasses add :func:`option` fields
    and may override :meth:`validate` for checks that involve several options. Every default and every
    check of an option is in its declaration: the one place it exists."""

    owner = "this method"  # whose options these are (error messages)

    def __post_init__(self) -> None:
        for spec in self.specs():
            where = f"option {spec.name} ({spec.flag})"
            value = check_value(getattr(self, spec.name), spec.type, where)
            object.__setattr__(self, spec.name, value)  # e.g. an int given for a float option
            choices = spec.choices
            if choices is not None and value not in choices:
                raise ConfigError(
                    f"{where} must be one of {', '.join(map(str, choices))}, got {value!r}"
                )
            for key, bound in spec.bounds.items():
                compare, symbol = _BOUNDS[key]
                if not compare(value, bound):
                    why = f": {spec.reason}" if spec.reason else ""
                    raise ConfigError(f"{where} must be {symbol} {bound:g}, got {value!r}{why}")
        self.validate()

    def validate(self) -> None:
        """Checks across options (raise :class:`~fastnas.errors.ConfigError`); none by default."""

    @classmethod
    def dataset_defaults(cls, dataset: str) -> dict[str, Any]:
        """Published option values that depend on the dataset searched (they yield to values the user
        sets); none by default."""
        return {}

    @classmethod
    def specs(cls) -> tuple[OptionSpec, ...]:
        types_of = field_types(cls)
        out = []
        for f in dataclasses.fields(cls):
            meta = f.metadata
            flag = meta.get("flag") or "--" + f.name.replace("_", "-")
            out.append(
                OptionSpec(
                    f.name,
                    types_of[f.name],
                    f.default,
                    meta.get("help", ""),
                    flag,
                    meta.get("bounds", {}),
                    meta.get("reason", ""),
                    meta.get("choices"),
                )
            )
        return tuple(out)

    @classmethod
    def spec(cls, name: str) -> OptionSpec:
        for s in cls.specs():
            if s.name == name:
                return s
        raise ConfigError(cls._unknown(name))

    @classmethod
    def _unknown(cls, name: str) -> str:
        names = [s.name for s in cls.specs()]
        known = ", ".join(names) if names else "none"
        return f"{name!r} is not an option of {cls.owner}; its options are: {known}"

    @classmethod
    def from_mapping(cls: type[O], values: Mapping[str, Any]) -> O:
        """Options from a mapping of typed values (Python or JSON); unknown names are an error."""
        if not isinstance(values, Mapping):
            raise ConfigError(
                f"options of {cls.owner} must be a mapping of names to values, got {values!r:.80}"
            )
        known = {s.name for s in cls.specs()}
        for name in values:
            if name not in known:
                raise ConfigError(cls._unknown(name))
        return cls(**values)

    @classmethod
    def from_text(cls: type[O], values: Mapping[str, str]) -> O:
        """Options from command-line text (``{"order": "2"}``), converted by each option's type."""
        parsed = {}
        for name, text in values.items():
            spec = cls.spec(name)
            parsed[name] = parse_text(text, spec.type, f"option {name} ({spec.flag})")
        return cls(**parsed)

    def to_json(self) -> dict[str, Any]:
        """Every option with its value (defaults included)."""
        return {s.name: getattr(self, s.name) for s in self.specs()}

    def changed(self) -> dict[str, Any]:
        """The options whose value differs from the default."""
        return {s.name: getattr(self, s.name) for s in self.specs() if getattr(self, s.name) != s.default}


@dataclass(frozen=True)
class MethodOptions(OptionGroup):
    """Base class of a search method's options."""


@dataclass(frozen=True)
class SecondOrderOptions(MethodOptions):
    """The option of methods that offer DARTS' second-order step (``order=2``)."""

    arch_step_bn: Literal["update", "frozen"] = option(
        "update",
        "order 2: BatchNorm running statistics in the architecture step: update (the DARTS code: the "
        "training-mode forwards at w, w+ and w- each update them) or frozen (only real steps do)",
    )


def check_arch_step_bn(order: int, arch_step_bn: str) -> None:
    """``arch_step_bn`` is a choice of the second-order step only."""
    if arch_step_bn != "update" and order != 2:
        raise ConfigError(f"option arch_step_bn (--arch-step-bn) {arch_step_bn!r} applies to --order 2 only")
