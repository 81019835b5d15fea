"""A supernet together with its search method: the drop-in backend for a user's own loop."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastnas.algorithms import Architecture, MethodOptions, SearchAlgorithm
from fastnas.errors import ConfigError
from fastnas.methods import get_method
from fastnas.nn.sizing import check_supernet_size, estimate_space
from fastnas.nn.skeleton import Stem
from fastnas.nn.supernet_options import SupernetOptions, SupernetShape
from fastnas.spaces import DartsSpace
from fastnas.spaces.base import SearchSpace

__all__ = ["SearchModel"]


class SearchModel(nn.Module):
    """``supernet`` (weights) + ``algorithm`` (architecture parameters).

    ``model(x)`` returns logits under the algorithm's current edge weights; :meth:`loss` is the
    cross-entropy plus, at the architecture level, the method's regulariser; :meth:`genotype`
    derives the discrete architecture.
    """

    def __init__(self, supernet: nn.Module, algorithm: SearchAlgorithm):
        super().__init__()
        if supernet.space != algorithm.space:
            raise ValueError("the supernet and the algorithm must share one search space")
        self.supernet = supernet
        self.algorithm = algorithm

    @classmethod
    def build(
        cls,
        method: str = "darts",
        space: SearchSpace | None = None,
        C: int = 16,
        layers: int = 8,
        num_classes: int = 10,
        in_channels: int = 3,
        executor: str | None = None,
        stem: Stem = "cifar",
        partial_k: int | None = None,
        partial_bypass: str | None = None,
        options: MethodOptions | Mapping[str, Any] | None = None,
        supernet_options: SupernetOptions | Mapping[str, Any] | None = None,
        **option_values: Any,
    ) -> SearchModel:
        """Build the supernet and the method: ``SearchModel.build("darts", order=2)``, or with an options
        object (``options=DARTSOptions(order=2)``). Option names are the method's (``fastnas search
        --method NAME --help`` lists them). The supernet's options (:class:`SupernetOptions`: executor,
        PC-DARTS' partial channels...) come as ``supernet_options`` or, one by one, as ``executor``,
        ``partial_k``, ``partial_bypass`` (None: the method's default, e.g. ``partial_k=4`` for
        ``"pc-darts"``)."""
        spec = get_method(method)
        if options is not None and option_values:
            raise TypeError("give either options= or option values, not both")
        opts = spec.make_options(options if options is not None else option_values)
        given = {
            name: value
            for name, value in (
                ("executor", executor),
                ("partial_k", partial_k),
                ("partial_bypass", partial_bypass),
            )
            if value is not None
        }
        if isinstance(supernet_options, SupernetOptions):
            supernet_options = {**supernet_options.to_json(), **given} if given else supernet_options
        else:
            supernet_options = {**(supernet_options or {}), **given}
        shape = SupernetShape(
            C, layers, num_classes, in_channels, stem, spec.make_supernet_options(supernet_options)
        )
        space = spec.algorithm.prepare_space(space if space is not None else DartsSpace())
        builder = spec.supernet(space, opts)
        builder.check(shape)
        estimate = estimate_space(
            space, C, layers, options=opts, partial_k=shape.options.partial_k, num_classes=num_classes,
            in_channels=in_channels, stem=stem,
        )  # fmt: skip
        sizes = f"C={C}, layers={layers}, {getattr(space, 'num_nodes', '?')} nodes"
        check_supernet_size(estimate, sizes, activations=False)  # before minutes of building
        supernet = builder(space, shape)
        return cls(supernet, spec.algorithm(space, opts))

    @property
    def space(self) -> SearchSpace:
        return self.algorithm.space

    def start_epoch(self, epoch: int, num_epochs: int) -> None:
        """Advance the method's schedules to ``epoch`` (of ``num_epochs`` in the stage) and apply its
        supernet settings (e.g. P-DARTS' skip-connect dropout through ``supernet.set_skip_dropout``)."""
        self.algorithm.on_epoch_start(epoch, num_epochs)
        for name, value in self.algorithm.epoch_settings(epoch, num_epochs).items():
            setter = getattr(self.supernet, f"set_{name}", None)
            if setter is None:
                supernet = type(self.supernet).__name__
                raise ConfigError(f"{self.algorithm.name} sets {name!r}, which the {supernet} does not have")
            setter(value)

    def start_step(self, epoch: int, step: int) -> None:
        """Before each iteration of ``epoch`` (of its stage): the method draws its active sub-graph."""
        self.algorithm.on_step(epoch, step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with(self.supernet, x)

    def forward_with(self, supernet: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``supernet`` - this model's supernet or a wrapper of it, e.g. its
        ``DistributedDataParallel`` - under the algorithm's edge weights and active sub-graph."""
        active = self.algorithm.active_set()
        if active is None:
            return supernet(x, self.algorithm.arch_weights())
        return supernet(x, self.algorithm.arch_weights(), active)

    def criterion(self, logits: torch.Tensor, target: torch.Tensor, level: str = "weights") -> torch.Tensor:
        """Cross-entropy, plus the method's regulariser when ``level == "arch"``."""
        if level not in ("weights", "arch"):
            raise ValueError(f"level must be 'weights' or 'arch', got {level!r}")
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        loss = F.cross_entropy(logits, target)
        if level == "arch":
            extra = self.algorithm.extra_arch_loss()
            if extra is not None:
                loss = loss + extra
        return loss

    def loss(self, x: torch.Tensor, target: torch.Tensor, level: str = "weights") -> torch.Tensor:
        """Training loss of a batch (``level="arch"`` for the architecture step)."""
        return self.criterion(self(x), target, level)

    # DARTS convention: parameters() are the weights, arch_parameters() the architecture ---------------
    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        """The supernet's weights only, as in DARTS (whose alphas are not module parameters): a
        DARTS-era ``SGD(model.parameters())`` trains and clips the weights, not the alphas. Names keep
        the ``supernet.`` prefix of :meth:`state_dict`, which still holds the alphas too;
        :meth:`named_parameters_with_alphas` is the plain ``nn.Module`` listing."""
        inner = f"{prefix}.supernet" if prefix else "supernet"
        yield from self.supernet.named_parameters(inner, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_parameters_with_alphas(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        """Every parameter, the weights and the architecture's (``algorithm.*``)."""
        yield from super().named_parameters(prefix, recurse, remove_duplicate)

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.supernet.parameters())

    def arch_parameters(self) -> list[nn.Parameter]:
        return self.algorithm.arch_parameters()

    def arch_weights(self) -> dict[str, torch.Tensor]:
        return self.algorithm.arch_weights()

    def genotype(self) -> Architecture:
        """The derived architecture (a :class:`~fastnas.Genotype`, or an NB201 cell on that space)."""
        return self.algorithm.derive()
