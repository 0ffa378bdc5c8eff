"""Sharded sweeps: `torchrun --nproc-per-node N -m mmchar sweep ... --distributed`.

PyTorch's own launcher and process group, nothing home-made: torchrun starts N ranks and sets RANK, WORLD_SIZE
and LOCAL_RANK; each rank plans the same sweep (same order, same config hashes), takes every N-th missing point
and profiles it in a fresh child process pinned to its own GPU (CUDA_VISIBLE_DEVICES, so the child's device string
and the point's config hash stay what a one-GPU sweep would write). Run folders are written atomically under
unique names, so ranks never clobber each other in the shared store; a rank that dies leaves the finished folders
of every rank intact, and a re-run (any number of ranks) finds them and runs only the missing points. The process
group (gloo: coordination only, whatever the device) carries one barrier and the gather of the summary rows, which
rank 0 prints once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from mmchar.errors import InvalidParameterError


@dataclass(frozen=True)
class Rank:
    rank: int
    world: int
    local_rank: int

    def shard(self, items: Sequence[Any], key: Any = None) -> list[Any]:
        """This rank's share: every ``world``-th item from position ``rank`` after ordering by ``key`` (a sweep
        passes the config hash: backends and sizes mix across ranks instead of one rank taking every point of
        one backend), the same order on every rank."""
        ordered = sorted(items, key=key) if key is not None else list(items)
        return ordered[self.rank::self.world]

    @property
    def leader(self) -> bool:
        return self.rank == 0


def rank_from_env(flag: str = "--distributed", command: str = "sweep") -> Rank:
    """The rank torchrun gave this process; a one-line error outside torchrun."""
    try:
        return Rank(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    except (KeyError, ValueError):
        raise InvalidParameterError(f"{flag} needs torchrun's RANK and WORLD_SIZE; launch with "
                                    f"`torchrun --nproc-per-node N -m mmchar {command} ... {flag}`") from None


def init(timeout_s: float = 6 * 3600) -> Rank:
    """Join torchrun's process group (gloo: the ranks only coordinate; each point's child owns its GPU)."""
    import torch.distributed as dist

    rank = rank_from_env()
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    return rank


def init_sequence_parallel(device: str | None, timeout_s: float = 1800) -> Rank:
    """Join torchrun's process group for one sequence-parallel run: NCCL with GPU ``LOCAL_RANK`` as this rank's
    device (the ranks exchange activations), gloo on the CPU.

    Raises:
        InvalidParameterError: outside torchrun, a ``cuda:N`` device (each rank takes its own), or more ranks on
            this node than GPUs.
    """
    import torch
    import torch.distributed as dist

    rank = rank_from_env("--sequence-parallel", "profile WORKLOAD")
    if device not in (None, "cpu", "cuda"):
        raise InvalidParameterError(f"--device {device} with --sequence-parallel: each rank takes GPU LOCAL_RANK; "
                                    "pass --device cuda or cpu")
    cuda = device == "cuda" or (device is None and torch.cuda.is_available())
    if cuda:
        if rank.local_rank >= torch.cuda.device_count():
            raise InvalidParameterError(f"rank {rank.rank} is local rank {rank.local_rank} but this node has "
                                        f"{torch.cuda.device_count()} GPU(s); launch at most that many processes")
        torch.cuda.set_device(rank.local_rank)  # "cuda" means this rank's GPU from here on
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return rank


def gather_to_leader(obj: Any, rank: Rank) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (``None`` elsewhere), after all ranks arrive."""
    import torch.distributed as dist

    out: list[Any] | None = [None] * rank.world if rank.leader else None
    dist.gather_object(obj, out, dst=0)
    return out


def finish() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def child_env(rank: Rank, device: str | None) -> dict[str, str]:
    """The environment of this rank's profiling children: its own GPU as the only visible one.

    Raises:
        InvalidParameterError: more ranks on this node than GPUs (two ranks sharing a GPU skew each other's
            timings; a rank with none would profile on the CPU under a CUDA sweep's hashes).
    """
    if device is not None and not device.startswith("cuda"):
        return {}
    import torch

    if not torch.cuda.is_available():
        return {}  # no GPU on this node: the children run where --device says (cpu) or fail with its message
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = [g.strip() for g in visible.split(",") if g.strip()] if visible else \
        [str(i) for i in range(torch.cuda.device_count())]
    if rank.local_rank >= len(gpus):
        raise InvalidParameterError(f"rank {rank.rank} is local rank {rank.local_rank} but this node has "
                                    f"{len(gpus)} GPU(s); launch at most {len(gpus)} processes per node")
    return {"CUDA_VISIBLE_DEVICES": gpus[rank.local_rank]}
