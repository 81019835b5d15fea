"""``fastnas search --compile``: both levels of the search step through ``torch.compile``.

Each level's forward and loss is one compiled function (``dynamic=False``); its backward is compiled
with it (AOTAutograd). What changes from step to step is never a Python constant of the traced code:
the alphas are parameters, candidate masks and temperatures are buffers, and the learning rates live in
the optimisers, which run outside the compiled region. So each level compiles once, on its first step,
and later steps replay the compiled code (``tests/test_compile.py`` counts recompilations). Each level
runs with the other level's parameters frozen (``requires_grad`` off during its forward pass, restored
at once), so the compiled backward of the architecture step computes no weight gradients and that of
the weight step no alpha gradients - what ``backward(inputs=...)`` saves in eager mode.

What still recompiles: a new input shape (a smaller last batch of an epoch: once per shape, as
``dynamic=False`` asks), a new supernet (each P-DARTS stage), and supernet settings that are Python
floats (P-DARTS' skip-connect dropout rate, which changes every epoch: one recompile per epoch while it
changes). Second-order DARTS compiles the weight step only; its unrolled architecture step (virtual
weights through ``functional_call``, a host read for the finite-difference step) stays eager. Methods
that choose the ops of each step on the host (``samples_subgraphs``: EDAS and DDSAS draw an active set,
EnTranNAS' Transit-cells read the current weights) are refused: each new choice would be a new graph
(measured: EnTranNAS breaks the graph 12-14 times a step on those host reads).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from fastnas.algorithms import SearchAlgorithm
from fastnas.backend import force_reference
from fastnas.errors import ConfigError
from fastnas.kernels._common import model_uses_kernels
from fastnas.search_model import SearchModel

__all__ = ["CompiledLevels", "check_compilable"]


def check_compilable(algorithm: SearchAlgorithm | type[SearchAlgorithm], flag: str = "--compile") -> None:
    """A :class:`~fastnas.errors.ConfigError` for a method whose step graph changes every step."""
    if algorithm.samples_subgraphs:
        raise ConfigError(
            f"{flag} does not support {algorithm.name}: it chooses the ops of every step on the host (a "
            f"new sub-graph each step, so each step would be a new graph); run {algorithm.name} without "
            f"{flag}"
        )


@contextlib.contextmanager
def _frozen(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """``params`` do not require gradients inside the block (restored after it)."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


class CompiledLevels:
    """The compiled forward + loss of each level of a search step on ``model``.

    ``weight_net`` is the module the weight step calls (the supernet, or its DDP wrapper under
    torchrun). ``freeze`` (default: on unless ``weight_net`` wraps the supernet, since DDP must keep
    the ``requires_grad`` flags it was built with) freezes the other level's parameters during each
    level's forward. ``backend`` is ``torch.compile``'s (``"inductor"``; tests may pass ``"eager"``).
    """

    def __init__(
        self,
        model: SearchModel,
        weight_net: nn.Module,
        backend: str = "inductor",
        freeze: bool | None = None,
    ) -> None:
        check_compilable(model.algorithm)
        self.model = model
        self.weight_net = weight_net
        self.freeze = weight_net is model.supernet if freeze is None else freeze
        self._arch = torch.compile(self._arch_loss, dynamic=False, backend=backend)
        self._weights = torch.compile(self._weight_loss, dynamic=False, backend=backend)

    # the traced functions: two code objects, so each level keeps its own compiled graph
    def _arch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model.loss(x, y, level="arch")

    def _weight_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model.forward_with(self.weight_net, x)
        loss = self.model.criterion(logits, y, "weights")
        return loss, (logits.argmax(1) == y).sum()

    def _dispatch(self, x: torch.Tensor) -> contextlib.AbstractContextManager:
        """The kernels' dispatch rule of model code, entered outside the traced region: CPU models run
        the PyTorch references (the fast executor would otherwise set that context variable inside the
        graph, which breaks it)."""
        return contextlib.nullcontext() if model_uses_kernels(x) else force_reference()

    def arch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The upper-level loss of a batch (cross-entropy plus the method's regulariser)."""
        frozen = _frozen(self.model.weight_parameters()) if self.freeze else contextlib.nullcontext()
        with frozen, self._dispatch(x):
            return self._arch(x, y)

    def weight_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The lower-level loss of a batch and its number of correct predictions."""
        frozen = _frozen(self.model.arch_parameters()) if self.freeze else contextlib.nullcontext()
        with frozen, self._dispatch(x):
            return self._weights(x, y)
