"""PC-DARTS (Xu, Xie, Zhang, Chen, Qi, Tian & Xiong, "PC-DARTS: Partial Channel Connections for
Memory-Efficient Architecture Search", ICLR 2020): partial channels and edge normalisation.

- *Partial channel connections*: only ``1/K`` of an edge's channels enter its mixed op (``K = 4``), the
  rest bypass it; the parts are concatenated and channel-shuffled. This is a supernet setting shared by
  every method on the DARTS and NAS-Bench-201 spaces, EnTranNAS included (``--partial-k``,
  :class:`fastnas.nn.PartialChannels`); PC-DARTS only changes its default to 4. A stride-2 edge
  downsamples its bypass with a 2x2 pool the paper does not specify (``--partial-bypass max``, the public
  code's choice, or ``avg``).
- *Edge normalisation* (:mod:`fastnas.algorithms.edge_norm`, a switch of DARTS, P-DARTS, DDSAS and
  EnTranNAS too; on here): per-edge parameters ``beta``; node ``j`` weighs each incoming edge ``(i, j)`` by
  ``softmax_i(beta)`` over its incoming edges, so the weight of op ``k`` on edge ``(i, j)`` is
  ``softmax(beta_j)_i * softmax(alpha_ij)_k``. That product is what the supernet receives (the bypass of a
  partial edge is scaled by the row's sum, i.e. by the edge weight, as the public code scales the whole edge
  output) and what the derivation ranks: the DARTS rule on it multiplies edge weight and op weight.
- The first 15 of 50 epochs train the weights only (``arch_start_epoch``, a count); architecture updates
  start with epoch 16.
- Published CIFAR-10 settings (:attr:`PCDARTS.defaults`): batch 256, SGD lr 0.1 cosine (to 0, the public
  code's ``learning_rate_min``; the paper gives no floor), Adam 6e-4 with weight decay 1e-3, 8 cells, C=16.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from fastnas.algorithms.base import SearchDefaults
from fastnas.algorithms.darts import DARTS, DARTSOptions
from fastnas.algorithms.options import option
from fastnas.errors import ConfigError

__all__ = ["PCDARTS", "PCDARTSOptions"]


@dataclass(frozen=True)
class PCDARTSOptions(DARTSOptions):
    """Options of PC-DARTS (``--partial-k``, ``--partial-bypass``: supernet settings of every method)."""

    edge_norm: bool = option(  # on for PC-DARTS (DARTSOptions' default is off)
        True, "edge normalisation: weigh each node's incoming edges by softmax(beta)"
    )
    arch_start_epoch: int = option(
        15,
        "weight-only epochs before the architecture is updated (ImageNet: 35); must be below --epochs",
        ge=0,
    )

    @classmethod
    def dataset_defaults(cls, dataset: str) -> dict[str, Any]:
        return {"arch_start_epoch": 35} if dataset == "imagenet" else {}


class PCDARTS(DARTS):
    """PC-DARTS: ``PCDARTS(space)``; the supernet is built with ``partial_k`` (default 4)."""

    name = "pc-darts"
    Options = PCDARTSOptions
    defaults = SearchDefaults(
        batch_size=256, lr=0.1, lr_min=0.0, arch_lr=6e-4, arch_weight_decay=1e-3
    )  # Xu et al. (2020), CIFAR-10
    supernet_defaults: ClassVar[Mapping[str, Any]] = {"partial_k": 4}  # K = 4 on CIFAR-10 and ImageNet
    #: the direct ImageNet search (Xu et al., 2020: batch 1024 on 8 GPUs, lr 0.5, arch lr 6e-3, 35
    #: weight-only epochs)
    dataset_defaults: ClassVar[Mapping[str, SearchDefaults]] = {
        "imagenet": defaults.updated(batch_size=1024, lr=0.5, arch_lr=6e-3)
    }
    options: PCDARTSOptions

    @classmethod
    def check_schedule(cls, options: Any, epochs: int) -> None:
        """Weight-only epochs (``arch_start_epoch``) that cover every search epoch would leave the
        architecture at its random initial values: refused."""
        start = options.arch_start_epoch
        if start >= epochs:
            raise ConfigError(
                f"option arch_start_epoch (--arch-start-epoch) {start} is not below --epochs {epochs}: "
                f"{cls.name} would train the weights only and never update the architecture; give "
                f"--arch-start-epoch below {epochs} (the published 15 is for 50 epochs)"
            )

    def updates_architecture(self, epoch: int) -> bool:
        return epoch >= self.options.arch_start_epoch
