"""Sharded sweeps: `torchrun --nproc-per-node N -m mmchar sweep ... --distributed`.

PyTorch's own launcher and process group, nothing home-made: torchrun starts N ranks and sets RANK, WORLD_SIZE
and LOCAL_RANK; each rank plans the same sweep (same order, same config hashes), takes every N-th missing point
and profiles it in a fresh child process pinned to its own GPU (CUDA_VISIBLE_DEVICES, so the child's device string
and the point's config hash stay what a one-GPU sweep would write). Run folders are written atomically under
unique names, so ranks never clobber each other in the shared store; a rank that dies leaves the finished folders
of every rank intact, and a re-run (any number of ranks) finds them and runs only the missing points. The process
group (gloo: coordination only, whatever the device) carries one barrier and the gather of the summary rows, which
rank 0 prints once.

Sequence-parallel runs (`torchrun ... -m mmchar profile WORKLOAD --sequence-parallel`, and `--cfg-parallel`: the guided
step's two passes on two halves of the ranks) use the same launcher the other way round: the ranks measure one run
together, in lockstep, and rank 0 writes it (`measure_once`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from mmchar.errors import InvalidParameterError, MmcharError, first_line

T = TypeVar("T")


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


def leads(rank: Rank | None) -> bool:
    """Whether this process speaks for the run: rank 0 under torchrun, the only process otherwise."""
    return rank is None or rank.leader


def sweep_rank(device: str | None) -> Rank:
    """The rank of a sharded sweep (``--distributed``); each rank takes its own GPU, so a ``cuda:N`` device,
    which would put every rank's points on one GPU, is refused."""
    rank = rank_from_env()
    if device is not None and device.startswith("cuda:"):
        raise InvalidParameterError(f"--device {device} with --distributed: each rank takes its own GPU; "
                                    "pass --device cuda (or leave it out)")
    return rank


def init(timeout_s: float = 6 * 3600) -> Rank:
    """Join torchrun's process group (gloo: the ranks only coordinate; each point's child owns its GPU)."""
    import torch.distributed as dist

    rank = rank_from_env()
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    return rank


def init_sequence_parallel(device: str | None, timeout_s: float = 900, flag: str = "--sequence-parallel") -> Rank:
    """Join torchrun's process group for one sequence-parallel (or CFG-parallel: ``flag`` ``--cfg-parallel``) run:
    NCCL with GPU ``LOCAL_RANK`` as this rank's device (the ranks exchange activations), gloo on the CPU.

    Raises:
        InvalidParameterError: outside torchrun, a ``cuda:N`` device (each rank takes its own), more ranks on
            this node than GPUs, or (``--cfg-parallel``) an odd number of ranks.
    """
    import torch
    import torch.distributed as dist

    rank = rank_from_env(flag, "profile WORKLOAD")
    if flag == "--cfg-parallel":  # before joining: every rank refuses alike, and none waits for a group
        from mmchar.cfg_parallel import check_rank_count

        check_rank_count(rank.world)
    if device not in (None, "cpu", "cuda"):
        raise InvalidParameterError(f"--device {device} with {flag}: each rank takes GPU LOCAL_RANK; "
                                    "pass --device cuda or cpu")
    cuda = device == "cuda" or (device is None and torch.cuda.is_available())
    if cuda:
        if rank.local_rank >= torch.cuda.device_count():
            raise InvalidParameterError(f"rank {rank.rank} is local rank {rank.local_rank} but this node has "
                                        f"{torch.cuda.device_count()} GPU(s); launch at most that many processes")
        torch.cuda.set_device(rank.local_rank)  # "cuda" means this rank's GPU from here on
    global _coordination, _timeout_s
    # a collective whose peer failed raises on this rank after the timeout (torchrun's default, 1 = TearDown,
    # would kill the process instead, and the failed rank's error would never be recorded)
    os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "2"  # CleanUpOnly
    _timeout_s = timeout_s
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    # a group of its own, even on the CPU: a collective that timed out leaves the default group's pairs closed
    # (and twice its timeout: a rank that failed on its own waits here while the others' collective times out)
    _coordination = dist.new_group(backend="gloo", timeout=timedelta(seconds=2 * timeout_s + 30))
    return rank


@contextmanager
def sequence_parallel_ranks(device: str | None, enabled: bool = True,
                            flag: str = "--sequence-parallel") -> Iterator[Rank | None]:
    """This process's rank in a sequence-parallel (or CFG-parallel: ``flag``) run for the block (``None`` when not
    ``enabled``: one process measures alone); the process group is ended on the way out, whatever happened in the
    block."""
    rank = init_sequence_parallel(device, flag=flag) if enabled else None
    try:
        yield rank
    finally:
        if rank is not None:
            finish()


def measure_once(rank: Rank | None, measure: Callable[[bool], Any], store: Callable[[Any], T]) -> T | None:
    """One run measured by every rank together: ``measure(leads)`` on each rank in lockstep (``leads``: whether
    this rank keeps its trace), the outcome agreed (failed on every rank if any rank failed), ``store(outcome)``
    on rank 0 alone; the other ranks wait until it is written, since torchrun ends the group when one exits.

    Returns:
        What ``store`` returned on rank 0 (and on a lone process), ``None`` on the other ranks.

    Raises:
        MmcharError: on a rank other than 0 whose run failed (its own failure or another rank's), so that it
            exits 1 too, after rank 0 has recorded the failure.
    """
    lead = leads(rank)
    outcome = measure(lead)
    if rank is None:
        return store(outcome)
    outcome = agree_on_outcome(outcome, rank)
    written = store(outcome) if lead else None
    leader_done(rank)
    if not lead and isinstance(outcome, BaseException):
        raise MmcharError(f"rank {rank.rank}: {first_line(outcome)}")
    return written


_coordination: Any = None  # the gloo group of a sequence-parallel run (host-side agreement, no GPU kernels)
_timeout_s: float | None = None  # the process group's timeout, set by init_sequence_parallel


def group_timeout() -> timedelta | None:
    """The timeout `init_sequence_parallel` gave the process group (None outside one): host-side groups made
    later use it, so they give up before the coordination group (twice as long) does."""
    return None if _timeout_s is None else timedelta(seconds=_timeout_s)


def agree_on_outcome(outcome: Any, rank: Rank) -> Any:
    """Every rank's measurement outcome shared: this rank's own, or, where it succeeded and another rank failed,
    that rank's failure (so rank 0 records the run as failed, with the rank and its error). Measurements are
    kept for the leader to store; a failure replaces them (and their temporary trace is removed)."""
    import torch.distributed as dist

    from mmchar.runner import discard, is_oom

    failed = isinstance(outcome, BaseException)
    mine = (f"rank {rank.rank}: {type(outcome).__name__}: {first_line(outcome)}", is_oom(outcome),
            _waited_on_peer(outcome)) if failed else None
    every: list[Any] = [None] * rank.world
    dist.all_gather_object(every, mine, group=_coordination)
    # the cause, not its echo: a rank that failed on its own beats one whose collective timed out waiting for it
    causes = sorted((f for f in every if f is not None), key=lambda f: f[2])
    if not causes or (failed and not mine[2]) or (failed and causes[0][2]):
        return outcome
    discard(outcome)
    message, oom, _ = causes[0]
    return _oom(message) if oom else RankFailed(message)


def _waited_on_peer(exc: BaseException) -> bool:
    """A collective that failed because another rank never came (timeout, closed connection)."""
    import torch.distributed as dist

    text = str(exc).lower()
    return isinstance(exc, dist.DistError) or any(s in text for s in ("timed out", "timeout", "connection closed",
                                                                      "connection reset", "broken pipe"))


class RankFailed(InvalidParameterError):
    """Another rank of a sequence-parallel run failed: this run is recorded with its error."""


def _oom(message: str) -> BaseException:
    import torch

    return torch.OutOfMemoryError(f"out of memory on {message}")


def leader_done(rank: Rank) -> None:
    """All ranks wait here until rank 0 has written the run."""
    import torch.distributed as dist

    dist.barrier(group=_coordination)


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
