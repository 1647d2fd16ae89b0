"""Data-parallel training on PyTorch's own engine (``torch.distributed``), launched by ``torchrun``.

    torchrun --standalone --nproc-per-node 2 -m ctrlab.cli train --dataset frappe_x1_subset --model DCNv2
    torchrun --nnodes 2 --node-rank 0 --rdzv-endpoint host0:29500 --nproc-per-node 8 -m ctrlab.cli train ...

Under torchrun (``WORLD_SIZE`` > 1 in the environment) a run is data-parallel: every rank holds the
whole model (dense part in :class:`~torch.nn.parallel.DistributedDataParallel`), reads its own shard
of every epoch's seeded shuffle, and the gradients are averaged. ``trainer.batch_size`` stays the
*global* batch: each rank takes ``batch_size / world_size`` rows of it, so with ``W`` ranks step
``b`` sees exactly the rows of a one-process step ``b``. Validation rows are sharded too and the
predictions gathered, so AUC and logloss are computed over the whole validation set (not averaged
over ranks) and every rank takes the same early-stopping decision. Only rank 0 writes the run
folder (logs, checkpoints, metrics); resume reads the same checkpoint on every rank.

Backend: ``gloo`` on CPU, ``nccl`` on CUDA (each rank uses ``cuda:LOCAL_RANK``).
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..config import ConfigError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel job (``world_size`` 1: a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


SINGLE = DistContext()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(requested: bool | None = None, device: str = "auto") -> DistContext:
    """Join the torchrun job described by the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``). ``requested``: True = must be under torchrun, False = never
    distributed, None = whenever torchrun started this process. A CUDA ``device`` this machine
    lacks is a :class:`ConfigError` here, before any data is prepared."""
    check_device(device)
    if requested is False or (requested is None and not launched_by_torchrun()):
        return SINGLE
    if not launched_by_torchrun():
        raise ConfigError(
            "--distributed needs torchrun's environment (WORLD_SIZE > 1); launch with e.g. "
            "torchrun --standalone --nproc-per-node 2 -m ctrlab.cli train ... (see docs/scaling.md)")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"torchrun started local rank {local_rank}, but only {torch.cuda.device_count()} GPU(s) "
                              "are visible; start one process per GPU (--nproc-per-node) or set trainer.device=cpu")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank, world, local_rank, backend)


def check_device(device: str, key: str = "trainer.device") -> None:
    """A :class:`ConfigError` naming ``key`` and the fix when ``device`` is a CUDA device this machine
    lacks (torch itself fails later with an AssertionError deep inside its CUDA initialisation)."""
    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{key}: {device!r} is not a torch device ({exc}); use auto, cpu, cuda or cuda:N") from None
    if dev.type != "cuda":
        return
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ConfigError(f"{key}: {device!r} needs CUDA, but {why} (torch {torch.__version__}); set {key}=auto "
                          f"(CUDA when available, else CPU) or {key}=cpu")
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        raise ConfigError(f"{key}: {device!r} asks for GPU {dev.index}, but only {n} GPU(s) are visible; "
                          f"use cuda:0{f' ... cuda:{n - 1}' if n > 1 else ''} or cuda")


def rank_device(ctx: DistContext, device: str) -> str:
    """The device a rank trains on: ``cuda:LOCAL_RANK`` for CUDA jobs, else the configured one."""
    if ctx.active and ctx.backend == "nccl":
        return f"cuda:{ctx.local_rank}"
    return device


def _device(ctx: DistContext) -> torch.device:
    """Where this rank's collectives run: its GPU for NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if ctx.backend == "nccl" else torch.device("cpu")


def all_sum(ctx: DistContext, value: torch.Tensor) -> torch.Tensor:
    """Sum of a scalar tensor over ranks, as float64 on the CPU (identity in a single process)."""
    if not ctx.active:
        return value
    out = value.detach().clone().to(torch.float64)
    comm = out.cuda() if ctx.backend == "nccl" else out
    dist.all_reduce(comm)
    return comm.cpu()


def all_mean(ctx: DistContext, value: torch.Tensor) -> torch.Tensor:
    """Mean of a scalar tensor over ranks (identity in a single process)."""
    return all_sum(ctx, value) / ctx.world_size if ctx.active else value


def gather_rows(ctx: DistContext, local: np.ndarray) -> np.ndarray:
    """Every rank's rows of a strided shard (rank ``r`` holds rows ``r, r + W, ...``) -> all rows in the
    original order, on every rank (tensor collectives: shards are padded to the longest)."""
    if not ctx.active:
        return local
    device = _device(ctx)
    mine = torch.from_numpy(np.ascontiguousarray(local)).to(device)
    count = torch.tensor([mine.shape[0]], dtype=torch.long, device=device)
    counts = [torch.zeros_like(count) for _ in range(ctx.world_size)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *mine.shape[1:]), dtype=mine.dtype, device=device)
    padded[: mine.shape[0]] = mine
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    out = np.empty((sum(int(c.item()) for c in counts), *local.shape[1:]), dtype=local.dtype)
    for r, (part, c) in enumerate(zip(parts, counts)):
        out[r::ctx.world_size] = part[: int(c.item())].cpu().numpy()
    return out


def all_gather_ints(ctx: DistContext, value: int) -> list[int]:
    """Every rank's ``value``, in rank order (``[value]`` in a single process)."""
    if not ctx.active:
        return [int(value)]
    mine = torch.tensor([int(value)], dtype=torch.long, device=_device(ctx))
    parts = [torch.zeros_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(parts, mine)
    return [int(p.item()) for p in parts]


def all_gather_bytes(ctx: DistContext, data: bytes) -> list[bytes]:
    """Every rank's ``data``, in rank order, sent as uint8 tensors (no pickle, unlike
    ``all_gather_object``)."""
    if not ctx.active:
        return [data]
    lengths = all_gather_ints(ctx, len(data))
    mine = torch.zeros(max(lengths), dtype=torch.uint8)
    if data:
        mine[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    mine = mine.to(_device(ctx))
    parts = [torch.empty_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(parts, mine)
    return [p[:n].cpu().numpy().tobytes() for p, n in zip(parts, lengths)]


def broadcast_buffers(ctx: DistContext, module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (e.g. BatchNorm running statistics, which each rank updates from its own
    share of the batch) to every rank."""
    if not ctx.active:
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)


def teardown(ctx: DistContext, finished: bool = True) -> None:
    """Leave the process group. After a clean finish every rank first meets the others at a barrier, so
    that no rank closes its connections while a peer's last collective is still in flight (a gloo rank
    then aborted at exit with "terminate called without an active exception"); after an error the
    barrier is skipped, since a peer may be gone. The garbage collection frees whatever still holds the
    group (a DDP reducer in a dropped trainer) while the interpreter is fully alive."""
    if ctx.active and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()
        gc.collect()
