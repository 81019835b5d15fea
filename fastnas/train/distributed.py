"""Many processes, one run: ``torchrun --nproc_per_node N -m fastnas search|train ...``.

PyTorch's own stack does the work: ``torchrun`` starts the processes and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`distributed_session` joins the process group
(NCCL on GPUs, gloo on CPUs) and :class:`Distributed` holds what a run needs of it: its rank, the
averaging all-reduce of gradients (the architecture gradients before each architecture step, so the
alphas stay bit-identical on every rank), sums of metrics, a broadcast of small values (the run name)
and the check that the architecture has not diverged between ranks. Weights are wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel` by the runners. Without ``torchrun`` (no
``WORLD_SIZE`` or ``WORLD_SIZE=1``) every call is a no-op on one process, so the single-GPU recipe is
unchanged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from fastnas.errors import ConfigError, DeviceError
from fastnas.train.scaling import BACKENDS

__all__ = ["Distributed", "check_world_size", "distributed_session", "env_world_size", "is_main_process"]


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(
            f"the environment variable {name}={text!r} must be an integer (torchrun sets it)"
        ) from None


def env_world_size() -> int:
    """The number of processes of this run: ``WORLD_SIZE`` as torchrun sets it, else 1."""
    world = _env_int("WORLD_SIZE", 1)
    if world < 1:
        raise ConfigError(f"WORLD_SIZE must be >= 1, got {world}")
    return world


def is_main_process() -> bool:
    """Rank 0 of a torchrun run (or the only process): the one that prints a run's summary."""
    return _env_int("RANK", 0) == 0


def check_world_size(configured: int, dist: Distributed) -> None:
    """A run keeps the number of processes it was configured for (its data shards and effective batch
    depend on it)."""
    if configured != dist.world_size:
        raise ConfigError(
            f"this run was configured for {configured} process(es) but {dist.world_size} are running; "
            + (
                f"resume it with torchrun --nproc_per_node {configured} -m fastnas ..."
                if configured > 1
                else "resume it without torchrun (one process)"
            )
        )


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run (rank 0 of 1 without torchrun) and the collectives it uses."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: one process, no process group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes the run directory."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """``(rank, world_size)``: which share of each epoch's examples this process loads."""
        return self.rank, self.world_size

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def average_(self, tensors: Sequence[torch.Tensor | None]) -> None:
        """Replace every tensor by its mean over the ranks, in place (one all-reduce of a flat buffer;
        None entries are skipped - every rank must pass the same shapes)."""
        present = [t for t in tensors if t is not None]
        if not self.enabled or not present:
            return
        dtype = present[0].dtype
        for t in present[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        flat = torch.cat([t.detach().reshape(-1).to(dtype) for t in present])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(self.world_size)
        offset = 0
        for t in present:
            n = t.numel()
            t.detach().copy_(flat[offset : offset + n].view_as(t))
            offset += n

    def averaged(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The rank-mean of each tensor (new tensors; the inputs are left alone)."""
        copies = [t.detach().clone() for t in tensors]
        self.average_(copies)
        return copies

    def sum(self, values: Sequence[float | int | torch.Tensor], device: torch.device) -> list[float]:
        """Each value summed over the ranks (float64), e.g. the loss sums and counts of an epoch."""
        flat = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        if self.enabled:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        return flat.tolist()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a small picklable object)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def check_identical(self, tensors: Sequence[torch.Tensor], what: str) -> None:
        """Raise when ``tensors`` differ between the ranks (bit for bit): e.g. the architecture after an
        epoch, which the averaged gradients keep identical unless a method samples differently per rank."""
        if not self.enabled or not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
        gathered = [torch.empty_like(flat) for _ in range(self.world_size)]
        dist.all_gather(gathered, flat)
        differing = [r for r, other in enumerate(gathered) if not torch.equal(other, gathered[0])]
        if differing:
            raise RuntimeError(
                f"{what} differs between rank 0 and rank(s) {differing}; every rank must make the same "
                "choices (a method that samples on the host must seed its generator from the run's seed)"
            )

    def device_for(self, name: str) -> str:
        """The device this rank runs on: ``auto``/``cuda`` become ``cuda:LOCAL_RANK`` under torchrun."""
        if not self.enabled:
            return name
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cuda":
            return f"cuda:{self.local_rank}"
        if name.startswith("cuda:"):
            raise ConfigError(
                f"--device {name} names one GPU, but torchrun runs {self.world_size} processes; each uses "
                "cuda:LOCAL_RANK - pass --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES"
            )
        return name

    def wrap(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``module`` under DistributedDataParallel (gradients averaged over the ranks during backward;
        parameters and buffers broadcast from rank 0), or ``module`` itself on one process.
        ``find_unused_parameters``: methods that run a sampled sub-graph leave some weights unused."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def _choose_backend(requested: str, device: str) -> str:
    if requested not in BACKENDS:
        raise ConfigError(f"--dist-backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = ("nccl" if on_gpu else "gloo") if requested == "auto" else requested
    available = {"nccl": dist.is_nccl_available(), "gloo": dist.is_gloo_available()}
    if not dist.is_available() or not available[backend]:
        raise DeviceError(
            f"the torch.distributed backend {backend!r} is not available in this torch build "
            f"(torch {torch.__version__}); use --dist-backend "
            f"{'gloo' if backend == 'nccl' else 'nccl'} or run on one process"
        )
    if backend == "nccl" and not on_gpu:
        raise ConfigError("--dist-backend nccl needs CUDA devices; use gloo for --device cpu")
    return backend


@contextlib.contextmanager
def distributed_session(device: str = "auto", backend: str = "auto") -> Iterator[Distributed]:
    """Join the torchrun process group for the duration of a run (and leave it after); a process group
    that the caller already initialised is used as it is. One process: a plain :class:`Distributed`."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        yield Distributed(rank, world, _env_int("LOCAL_RANK", rank), str(dist.get_backend()))
        return
    world = env_world_size()
    if world == 1:
        yield Distributed()
        return
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} must lie in [0, WORLD_SIZE={world})")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={world} but {' and '.join(missing)} is not set; start many processes with "
            "torchrun --nproc_per_node N -m fastnas ..."
        )
    chosen = _choose_backend(backend, device)
    if chosen == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise DeviceError(
                f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                "start at most that many processes per node (--nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=chosen, init_method="env://", rank=rank, world_size=world)
    try:
        yield Distributed(rank, world, local_rank, chosen)
    finally:
        dist.destroy_process_group()
