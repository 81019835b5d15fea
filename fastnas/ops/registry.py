"""Registry from candidate-operation name to constructor.

An op is registered once under its name together with its *kind*, which the supernet needs to know:
``"zero"`` (contributes nothing, e.g. ``none``), ``"pool"`` (parameter-free pooling, followed by a
BN(affine=False) inside the search supernet, as in DARTS: Liu, Simonyan & Yang, "DARTS: Differentiable
Architecture Search", ICLR 2019), ``"skip"`` (identity when stride 1) or ``"conv"`` (everything with
weights). Other modules add ops (the extended 13-op space, the thesis ops) with :func:`register_op`;
nothing here is a global mutable op *list*: spaces name the ops they use, the registry only builds them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import nn

from fastnas.errors import FastnasError

OpKind = Literal["zero", "pool", "skip", "conv"]
OpFactory = Callable[[int, int, bool], nn.Module]
"""``factory(channels, stride, affine) -> nn.Module`` mapping C channels to C channels."""


@dataclass(frozen=True)
class OpSpec:
    """A registered candidate operation."""

    name: str
    kind: OpKind
    factory: OpFactory


_REGISTRY: dict[str, OpSpec] = {}


class UnknownOpError(FastnasError, KeyError, ValueError):
    """Raised for an op name that is not registered; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def register_op(name: str, kind: OpKind) -> Callable[[OpFactory], OpFactory]:
    """Decorator registering ``factory`` under ``name``; re-registering a name is an error."""

    def decorator(factory: OpFactory) -> OpFactory:
        if name in _REGISTRY:
            raise ValueError(f"op {name!r} is already registered; pick another name")
        _REGISTRY[name] = OpSpec(name, kind, factory)
        return factory

    return decorator


def get_op_spec(name: str) -> OpSpec:
    """The spec of op ``name``, or :class:`UnknownOpError` naming the known ops."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownOpError(f"unknown op {name!r}; known ops are: {known}") from None


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def available_ops() -> list[str]:
    """Names of all registered ops, in registration order."""
    return list(_REGISTRY)


def build_op(name: str, channels: int, stride: int, affine: bool) -> nn.Module:
    """Instantiate op ``name`` for ``channels`` channels and the given stride."""
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    return get_op_spec(name).factory(channels, stride, affine)
