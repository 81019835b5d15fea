"""``fastnas search --cuda-graph``: the first-order bilevel step captured in one CUDA graph.

The step - architecture step then weight step, each with its ``zero_grad``, forward, backward, gradient
clipping and optimiser step - is captured once in a :class:`torch.cuda.CUDAGraph` and replayed every
iteration, so a step costs one graph launch instead of thousands of kernel launches from Python. As the
PyTorch documentation on whole-network capture asks:

- the batches are copied into static input buffers before each replay;
- the first iterations (``warmup``, 3) run eagerly on a side stream (they are real steps of the run) so
  that lazily created state (optimiser moments, cuBLAS workspaces, autograd's streams) exists before
  the capture;
- the optimisers are capturable: Adam with ``capturable=True`` and SGD with ``fused=True``, both with
  their learning rate in a device tensor (:func:`graph_optimizer_options`), so the cosine schedule
  updates it in place and the graph reads the new value;
- autocast runs with ``cache_enabled=False``; fp16 (GradScaler, a host read per step) is refused.

The capture is keyed by the step's host-side settings (:func:`host_settings`: whether the architecture
is updated this epoch, the method's supernet settings such as P-DARTS' skip-connect dropout, and every
Python-valued optimiser setting); when they change at an epoch start the step is captured again. A new
stage (P-DARTS) builds a new supernet and a new :class:`GraphedStep`. A batch whose shape differs from
the captured one (the smaller last batch of an epoch) runs eagerly. Second order (a host read for the
finite-difference step), methods that choose their ops on the host every step (EDAS, DDSAS,
EnTranNAS), CPU runs and several
processes are refused by :func:`check_cuda_graph` before anything is built.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch

from fastnas.algorithms import SearchAlgorithm
from fastnas.errors import ConfigError
from fastnas.train.compiled import check_compilable

__all__ = ["GraphedStep", "check_cuda_graph", "graph_optimizer_options", "host_settings", "tensor_lrs"]

Batch = tuple[torch.Tensor, torch.Tensor]
#: ``step(train_batch, val_batch or None) -> (arch loss or None, weight loss, correct predictions)``
StepFn = Callable[[Batch, Batch | None], tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]]


def check_cuda_graph(
    device: torch.device,
    algorithm: SearchAlgorithm | type[SearchAlgorithm],
    order: int,
    precision: str,
    world_size: int = 1,
) -> None:
    """A :class:`~fastnas.errors.ConfigError` naming what stops ``--cuda-graph`` and how to run instead."""
    if device.type != "cuda":
        raise ConfigError(
            f"--cuda-graph needs a CUDA device, this run is on {device}; use --device cuda on a GPU "
            "machine, or drop --cuda-graph (--compile works on CPUs too)"
        )
    if precision == "fp16":
        raise ConfigError(
            "--cuda-graph cannot capture fp16 loss scaling (GradScaler syncs with the host every step); "
            "use --precision bf16 or fp32 with --cuda-graph"
        )
    if order == 2:
        raise ConfigError(
            f"--cuda-graph captures first-order steps only: second-order {algorithm.name} reads the "
            "finite-difference step size on the host every step; use --order 1 or drop --cuda-graph"
        )
    check_compilable(algorithm, "--cuda-graph")
    if world_size > 1:
        raise ConfigError(
            f"--cuda-graph runs one process, this run has {world_size} (torchrun): the captured step does "
            "not include DistributedDataParallel's gradient all-reduce; drop --cuda-graph under torchrun"
        )


def graph_optimizer_options(device: torch.device, lr: float, arch_lr: float) -> tuple[dict, dict]:
    """Extra keyword arguments of the weight optimiser (SGD) and the architecture optimiser (Adam) that
    make their steps capturable, learning rates included."""
    weights = {"lr": torch.tensor(float(lr), device=device), "fused": True}
    arch = {"lr": torch.tensor(float(arch_lr), device=device), "capturable": True}
    return weights, arch


def tensor_lrs(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Put every group's learning rate in a 0-d tensor on ``device`` (after loading a state dict, which
    may hold floats or tensors elsewhere)."""
    for group in optimizer.param_groups:
        lr = group["lr"]
        if not (isinstance(lr, torch.Tensor) and lr.device == device and lr.dim() == 0):
            group["lr"] = torch.tensor(float(lr), device=device)


def host_settings(
    update_arch: bool, supernet_settings: dict[str, float], optimizers: tuple[torch.optim.Optimizer, ...]
) -> Hashable:
    """What a captured step bakes in from the host: a new value needs a new capture. Tensor-valued
    settings count by identity (the graph reads the tensor it was captured with)."""

    def value(v: Any) -> Hashable:
        if isinstance(v, torch.Tensor):
            return ("tensor", id(v))
        if isinstance(v, list | tuple):
            return tuple(value(x) for x in v)
        return v if isinstance(v, Hashable) else repr(v)

    groups = tuple(
        tuple(sorted((k, value(v)) for k, v in group.items() if k != "params"))
        for optimizer in optimizers
        for group in optimizer.param_groups
    )
    return update_arch, tuple(sorted(supernet_settings.items())), groups


def _shapes(*batches: Batch | None) -> tuple:
    return tuple(None if b is None else tuple((t.shape, t.dtype) for t in b) for b in batches)


class GraphedStep:
    """Runs ``step`` eagerly ``warmup`` times on a side stream, then captures it and replays the graph.

    Call it as ``graphed(train_batch, val_batch, key)`` (``val_batch`` None: no architecture step this
    epoch); ``key`` is :func:`host_settings`: a new key captures the step again. Returns what ``step``
    returns, copied out of the graph's static outputs.
    """

    def __init__(self, step: StepFn, device: torch.device, warmup: int = 3) -> None:
        if device.type != "cuda":
            raise ConfigError(f"CUDA graphs need a CUDA device, got {device}")
        self.step = step
        self.device = device
        self.warmup = warmup
        self.warmed = 0
        self.captures = 0  # how many times the step was captured (tests, logs)
        self.replays = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: Hashable = None
        self.shapes: tuple = ()
        self.static_train: Batch | None = None
        self.static_val: Batch | None = None
        self.outputs: tuple[torch.Tensor | None, torch.Tensor, torch.Tensor] | None = None

    def _on_side_stream(self, train: Batch, val: Batch | None) -> tuple:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = self.step(train, val)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def _capture(self, train: Batch, val: Batch | None, key: Hashable) -> None:
        self.graph = None  # the old graph's memory goes back before the new capture
        self.static_train = (train[0].clone(), train[1].clone())
        self.static_val = None if val is None else (val[0].clone(), val[1].clone())
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.outputs = self.step(self.static_train, self.static_val)
        self.graph, self.key, self.shapes = graph, key, _shapes(train, val)
        self.captures += 1

    def __call__(
        self, train: Batch, val: Batch | None, key: Hashable
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        if self.warmed < self.warmup:
            self.warmed += 1
            return self._on_side_stream(train, val)
        if self.graph is not None and _shapes(train, val) != self.shapes:
            return self.step(train, val)  # a ragged batch: eager (the captured buffers keep their shape)
        if self.graph is None or key != self.key:
            self._capture(train, val, key)  # records the step; the replay below runs it
        assert self.graph is not None and self.static_train is not None and self.outputs is not None
        for static, batch in zip(self.static_train, train, strict=True):
            static.copy_(batch)
        if self.static_val is not None and val is not None:
            for static, batch in zip(self.static_val, val, strict=True):
                static.copy_(batch)
        self.graph.replay()
        self.replays += 1
        arch_loss, loss, correct = self.outputs
        return None if arch_loss is None else arch_loss.clone(), loss.clone(), correct.clone()
