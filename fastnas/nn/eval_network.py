"""Evaluation (retraining) networks built from a genotype (the networks of Liu, Simonyan & Yang, "DARTS:
Differentiable Architecture Search", ICLR 2019, and its public code).

:class:`NetworkCIFAR` and :class:`NetworkImageNet` follow the DARTS evaluation networks: a stem,
``layers`` :class:`EvalCell` s with reductions at ``layers // 3`` and ``2 * layers // 3`` (where the
channel count doubles), global average pooling and a linear classifier, plus an optional auxiliary
head after cell ``2 * layers // 3``. Every BN is affine and pooling ops carry no BN.

Any valid :class:`~fastnas.genotype.Genotype` builds: nodes may have any number of inputs (their op
outputs are summed; EnTranNAS-DST: Yang, You, Li, Wang, Qian & Lin, "Towards Improving the Consistency,
Efficiency, and Flexibility of Differentiable Neural Architecture Search", CVPR 2021, Eq. 10) and a
genotype with several normal-cell types uses type ``s`` in stage ``s`` (after ``s`` reductions;
Paganucci, "Efficient ConvNet Architectures: Differentiable Neural Architecture Search", semester
thesis, ETH Zurich, 2020, section 3.3.2).

``forward`` returns ``(logits, logits_aux)``; ``logits_aux`` is None unless the network has an
auxiliary head and is in training mode. During training every op output that is not an identity skip
goes through :func:`drop_path` with probability :attr:`drop_path_prob` (set it each epoch, e.g.
``drop_path * epoch / epochs``). Parameter counts "without the auxiliary head" follow DARTS: parameters
whose name does not contain ``auxiliary`` (:func:`count_parameters_without_auxiliary`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fastnas.errors import ConfigError
from fastnas.genotype import CellGenotype, Genotype, load_genotype
from fastnas.nn.counting import count_parameters_without_auxiliary
from fastnas.nn.skeleton import CellPlan, DartsSkeleton, Stem, preprocessors
from fastnas.ops import build_op, get_op_spec

__all__ = [
    "AuxiliaryHeadCIFAR",
    "AuxiliaryHeadImageNet",
    "EvalCell",
    "NetworkCIFAR",
    "NetworkImageNet",
    "build_eval_network",
    "count_parameters_without_auxiliary",
    "drop_path",
]


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples of ``x`` with probability ``drop_prob`` and scale survivors by
    ``1 / (1 - drop_prob)`` (per-sample drop path, as in Liu et al., 2019). Returns ``x`` itself when
    ``drop_prob`` is 0. The mask is drawn on ``x``'s device from the global generator (no host sync)."""
    if drop_prob <= 0.0:
        return x
    if drop_prob >= 1.0:
        raise ValueError(f"drop path probability must be < 1, got {drop_prob}")
    keep = 1.0 - drop_prob
    mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype)
    mask.bernoulli_(keep)
    return x * mask.div_(keep)


class EvalCell(nn.Module):
    """One cell of an evaluation network, built from a :class:`CellGenotype`.

    The two inputs are preprocessed to ``plan.channels`` (:func:`~fastnas.nn.skeleton.preprocessors`,
    affine BN). Each ``(op, input)`` pair is one op with stride 2 in a reduction cell when it reads a cell
    input (index < 2); a node is the sum of its ops' outputs; the cell output concatenates the states
    ``cell.concat`` (``multiplier = len(concat)`` of them). Drop path applies to every op that is not an
    identity (a stride-2 ``skip_connect`` is a FactorizedReduce, so it is dropped too).
    """

    def __init__(self, cell: CellGenotype, plan: CellPlan) -> None:
        super().__init__()
        reduction = plan.reduction
        if reduction and any(i < 2 for i in cell.concat):
            raise ConfigError(
                f"reduction cell concat {list(cell.concat)} includes a cell input (index 0 or 1); its "
                "spatial size is not reduced, so only intermediate nodes (>= 2) may be concatenated"
            )
        self.reduction = reduction
        self.concat: tuple[int, ...] = tuple(cell.concat)
        self.multiplier = len(self.concat)
        self.preprocess0, self.preprocess1 = preprocessors(plan, affine=True)
        self.ops = nn.ModuleList()
        inputs: list[int] = []
        droppable: list[bool] = []
        node_sizes: list[int] = []
        for node in cell.nodes:
            node_sizes.append(len(node))
            for op_name, index in node:
                stride = plan.edge_stride(index)
                self.ops.append(build_op(op_name, plan.channels, stride, affine=True))
                inputs.append(index)
                droppable.append(not (get_op_spec(op_name).kind == "skip" and stride == 1))
        self._inputs = tuple(inputs)
        self._droppable = tuple(droppable)
        self._node_sizes = tuple(node_sizes)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        apply_drop = self.training and drop_prob > 0.0
        k = 0
        for size in self._node_sizes:
            total: torch.Tensor | None = None
            for _ in range(size):
                h = self.ops[k](states[self._inputs[k]])
                if apply_drop and self._droppable[k]:
                    h = drop_path(h, drop_prob)
                total = h if total is None else total + h
                k += 1
            assert total is not None
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


class _AuxiliaryHead(nn.Module):
    """ReLU, AvgPool(5, ``pool_stride``, no padding, count_include_pad=False), Conv1x1 -> 128, BN, ReLU,
    Conv2x2 -> 768, [BN], ReLU, Linear (the DARTS auxiliary heads).

    Inputs smaller than the 5x5 window (tiny images such as the 8x8 digits) are pooled adaptively to
    2x2 instead; at the published sizes (8x8 CIFAR, 7x7 ImageNet features) the head is exactly DARTS'.
    """

    def __init__(self, channels: int, num_classes: int, pool_stride: int, bn_after_768: bool) -> None:
        super().__init__()
        self.pool_stride = pool_stride
        layers: list[nn.Module] = [
            nn.Conv2d(channels, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
        ]
        if bn_after_768:
            layers.append(nn.BatchNorm2d(768))
        layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        if min(x.shape[-2:]) >= 5:
            x = F.avg_pool2d(x, 5, stride=self.pool_stride, padding=0, count_include_pad=False)
        else:
            x = F.adaptive_avg_pool2d(x, 2)
        x = self.features(x)
        return self.classifier(x.flatten(1))


class AuxiliaryHeadCIFAR(_AuxiliaryHead):
    """The CIFAR auxiliary head on 8x8 features: AvgPool 5 stride 3 gives 2x2."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__(channels, num_classes, pool_stride=3, bn_after_768=True)


class AuxiliaryHeadImageNet(_AuxiliaryHead):
    """The ImageNet auxiliary head on 7x7 features: AvgPool 5 stride 2 gives 2x2.

    As in the DARTS ImageNet code (and its published results), there is no BN after the 768-channel conv.
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__(channels, num_classes, pool_stride=2, bn_after_768=False)


class _EvalNetwork(DartsSkeleton):
    """The evaluation network of a genotype: the DARTS skeleton with :class:`EvalCell` s (the cell of
    each layer's type) and, optionally, the auxiliary head of the stem's dataset family (a subclass sets
    both: :attr:`family` and :attr:`auxiliary_head_cls`)."""

    #: the stem of the dataset family (:data:`~fastnas.nn.skeleton.Stem`)
    family: ClassVar[Stem]
    #: the auxiliary head of the dataset family
    auxiliary_head_cls: ClassVar[type[AuxiliaryHeadCIFAR] | type[AuxiliaryHeadImageNet]]

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        auxiliary: bool,
        genotype: Genotype | str,
        in_channels: int = 3,
    ) -> None:
        genotype = load_genotype(genotype)
        if genotype.num_normal_types not in (1, 3):
            raise ConfigError(
                f"a genotype with several normal-cell types needs one per stage (3), "
                f"got {genotype.num_normal_types}"
            )

        aux_cls = self.auxiliary_head_cls

        def make_cell(plan: CellPlan) -> EvalCell:
            return EvalCell(genotype.cell("reduce" if plan.reduction else "normal", plan.stage), plan)

        super().__init__(
            C,
            layers,
            num_classes,
            in_channels,
            make_cell,
            num_normal_types=genotype.num_normal_types,
            stem=self.family,
            auxiliary_head=(lambda channels: aux_cls(channels, num_classes)) if auxiliary else None,
        )
        self.genotype = genotype
        self.auxiliary = auxiliary
        self.drop_path_prob = 0.0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(logits, logits_aux)``; ``logits_aux`` only in training mode with an auxiliary head."""
        s0, s1 = self.stem_states(x)
        logits_aux = None
        drop_prob = float(self.drop_path_prob) if self.training else 0.0
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, drop_prob)
            if i == self.aux_position and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        return self.classify(s1), logits_aux


class NetworkCIFAR(_EvalNetwork):
    """DARTS ``NetworkCIFAR`` (Liu et al., 2019): stem Conv3x3(in -> 3C) + BN, reduction_prev
    False for the first cell; published size C=36, 20 layers, auxiliary head on."""

    family = "cifar"
    auxiliary_head_cls = AuxiliaryHeadCIFAR


class NetworkImageNet(_EvalNetwork):
    """DARTS ``NetworkImageNet`` (Liu et al., 2019): stem0 = Conv3x3 s2 (3 -> C/2) + BN + ReLU +
    Conv3x3 s2 (C/2 -> C) + BN, stem1 = ReLU + Conv3x3 s2 (C -> C) + BN; the first cell sees
    reduction_prev=True; published size C=48, 14 layers. The final 7x7 average pool is written as a
    global average pool (identical at 224x224, and it also accepts other input sizes)."""

    family = "imagenet"
    auxiliary_head_cls = AuxiliaryHeadImageNet


def build_eval_network(
    genotype: Genotype | str,
    network: str,
    C: int,
    layers: int,
    num_classes: int,
    auxiliary: bool = True,
    in_channels: int = 3,
) -> NetworkCIFAR | NetworkImageNet:
    """:class:`NetworkCIFAR` (``network="cifar"``) or :class:`NetworkImageNet` (``"imagenet"``)."""
    if network == "cifar":
        return NetworkCIFAR(C, num_classes, layers, auxiliary, genotype, in_channels=in_channels)
    if network == "imagenet":
        return NetworkImageNet(C, num_classes, layers, auxiliary, genotype, in_channels=in_channels)
    raise ConfigError(f"unknown evaluation network {network!r}; use 'cifar' or 'imagenet'")
