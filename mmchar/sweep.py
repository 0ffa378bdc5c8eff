"""`mmchar sweep`: the product of parameter values × backends, each point profiled in a fresh subprocess.

A fresh process per point keeps points independent: an out-of-memory error, a crashed kernel or a leaked CUDA
context in one point cannot change the next one's figures. A point is identified by the config hash that ends
its run id (the resolved configuration plus the attention path), so a re-run finds the points already in the
store, whatever their status, and runs only the missing ones (``--retry-failed`` runs failed points again,
``--retry-noisy N`` re-measures points the noise guard flagged, up to N times). How a point is measured
(``--repeat``, ``--profile-steps``, ``--no-trace``) is not part of its identity: a re-run with other values keeps
the stored points as they are and says so. A child that dies without writing its run (killed, segfault) is
recorded by the parent as a failed run, so every point ends up in the store; a child interrupted by Ctrl-C is
not (the point is simply not done). Under torchrun (``--distributed``) each rank runs its share of the points
(`rank_points`) and rank 0 gathers every rank's folders for the summary (`gather_points`); `mmchar.distributed`
holds the launcher's side. A sweep may name several workloads (`suite_names`: ``sd15,amused`` or ``all``): each is
planned exactly as alone (`plan`), and the plans' points run as one list into one store (`SweepSuite`), so a
suite resumes and shards as one sweep does.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from mmchar import distributed
from mmchar.distributed import Rank
from mmchar.errors import InvalidParameterError, MmcharError, Terminated, UnknownNameError
from mmchar.schema import step_key
from mmchar.store import check_tables, is_run_folder, read_meta

# ProfileOptions fields that say how a point is measured, not what it is: not in its config hash
MEASUREMENT_OPTIONS = ("repeat", "profile_steps", "keep_trace")

# what --vary may name, with the type its values parse to (prompt is not a sweep axis)
VARY_TYPES: dict[str, type] = {"height": int, "width": int, "frames": int, "steps": int, "batch": int,
                               "guidance": float, "seed": int}


def parse_vary(specs: Sequence[str]) -> dict[str, list[Any]]:
    """``["height=256,512", "frames=8"]`` -> ``{"height": [256, 512], "frames": [8]}``, checked."""
    out: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise InvalidParameterError(f"--vary {spec!r}: write NAME=V1,V2,... (e.g. --vary height=256,512)")
        if key not in VARY_TYPES:
            raise UnknownNameError("sweep parameter", key, VARY_TYPES)
        if key in out:
            raise InvalidParameterError(f"--vary {key} is given twice; list all its values in one --vary {key}=...")
        try:
            parsed = [VARY_TYPES[key](v.strip()) for v in values.split(",") if v.strip()]
        except ValueError:
            raise InvalidParameterError(f"--vary {spec!r}: {key} takes {VARY_TYPES[key].__name__} values") from None
        out[key] = list(dict.fromkeys(parsed))
    return out


@dataclass(frozen=True)
class Point:
    """One point of a sweep: parameter overrides, a backend, and the hash its run will carry."""

    params: dict[str, Any]
    backend: str
    config_hash: str
    config: dict[str, Any] = field(default_factory=dict, compare=False)  # the resolved configuration

    def label(self) -> str:
        return " ".join([f"{k}={v}" for k, v in self.params.items()] + [f"backend={self.backend}"])


@dataclass
class SweepPlan:
    workload: str
    preset: str
    points: list[Point]
    fixed: dict[str, Any]  # parameter overrides shared by every point
    options: dict[str, Any]  # ProfileOptions fields shared by every point (backend aside)
    device: str | None
    dtype: str | None
    weights: str | None
    memory: dict[str, bool] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)  # generation settings every point takes (--kv-cache)
    done: dict[str, Path] = field(default_factory=dict)  # config hash -> run folder already in the store
    retry_failed: bool = False  # points whose stored run failed (oom, error) are run again
    retry_noisy: int = 0  # times a point the noise guard flagged is measured again (stored ones included)

    @property
    def todo(self) -> list[Point]:
        return [p for p in self.points if p.config_hash not in self.done or self.redo(self.done[p.config_hash])]

    def redo(self, folder: Path) -> bool:
        """Whether a stored point is measured again: failed with ``retry_failed``, noisy with ``retry_noisy``."""
        meta = read_meta(folder)
        if meta.get("status") != "ok":
            return self.retry_failed
        return self.retry_noisy > 0 and bool((meta.get("noise") or {}).get("noisy"))

    def measured_otherwise(self) -> list[str]:
        """How the stored points were measured where that differs from this sweep's options (``repeat 1 (asked
        3)``): they are kept, and the user is told, since those options are not part of a point's identity."""
        return _measured_otherwise(self.done.values(), self.options)

    def only(self, hashes: Collection[str]) -> SweepPlan:
        """This plan cut to the points of ``hashes`` (rank 0's summary after a rank failed mid-way: the points
        that have a run)."""
        return replace(self, points=[p for p in self.points if p.config_hash in hashes])


def _measured_otherwise(folders: Iterable[Path], options: dict[str, Any]) -> list[str]:
    """`SweepPlan.measured_otherwise` over any stored folders (a suite's, all plans taking the same options)."""
    differ: dict[str, set[str]] = {}
    for folder in folders:
        stored = read_meta(folder).get("options") or {}
        for k in MEASUREMENT_OPTIONS:
            if k in options and k in stored and stored[k] != options[k]:
                differ.setdefault(k, set()).add(str(stored[k]))
    return [f"{k.replace('_', '-')} {'/'.join(sorted(v))} (asked {options[k]})" for k, v in differ.items()]


@dataclass
class SweepSuite:
    """A sweep over one or more workloads: a plan per workload, each planned exactly as a sweep of that workload
    alone (same preset, flags and --vary), whose points run as one list into one store. The CLI always sweeps a
    suite, a single workload being a suite of one plan, so resuming, sharding over ranks and the summary have one
    path; what only a suite of several shows (the workload of each point) is added where ``several`` is true.

    Points are told apart by config hash across the whole suite (the hash covers the workload), so a point finds
    its plan (`plan_of`) without carrying it, and stored runs, rank shards and gathered folders stay keyed by hash.
    """

    plans: list[SweepPlan]
    _plan_of: dict[str, SweepPlan] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._plan_of = {}
        for sweep in self.plans:
            for p in sweep.points:
                other = self._plan_of.setdefault(p.config_hash, sweep)
                if other is not sweep:  # one workload twice (an alias and its name): it would run twice
                    raise InvalidParameterError(f"{other.workload} and {sweep.workload} resolve to the same "
                                                "configuration (one workload named twice?)")

    @property
    def several(self) -> bool:
        return len(self.plans) > 1

    @property
    def workloads(self) -> list[str]:
        return [sweep.workload for sweep in self.plans]

    @property
    def name(self) -> str:
        """What the plan line and the summary title call the sweep: its workload, or its workloads in order."""
        return ", ".join(self.workloads)

    @property
    def points(self) -> list[Point]:
        return [p for sweep in self.plans for p in sweep.points]

    @property
    def done(self) -> dict[str, Path]:
        return {h: f for sweep in self.plans for h, f in sweep.done.items()}

    @property
    def todo(self) -> list[Point]:
        return [p for sweep in self.plans for p in sweep.todo]

    def plan_of(self, point: Point) -> SweepPlan:
        """The plan a point belongs to: how its child process is started and what its run records."""
        return self._plan_of[point.config_hash]

    def label(self, point: Point) -> str:
        """How progress and notes name a point: `Point.label`, led by its workload where several are swept."""
        return (f"workload={self.plan_of(point).workload} " if self.several else "") + point.label()

    def measured_otherwise(self) -> list[str]:
        """`SweepPlan.measured_otherwise` over every plan's stored points (the plans share their options)."""
        return _measured_otherwise(self.done.values(), self.plans[0].options) if self.plans else []

    def only(self, hashes: Collection[str]) -> SweepSuite:
        """Every plan cut to the points of ``hashes`` (see `SweepPlan.only`)."""
        return SweepSuite([sweep.only(hashes) for sweep in self.plans])

    def summary_row(self, point: Point, folder: Path) -> dict[str, Any]:
        """`summary_row`, led by a ``workload`` column where several workloads are swept."""
        row = summary_row(point, folder)
        return {"workload": self.plan_of(point).workload, **row} if self.several else row


def suite_names(spec: str) -> list[str]:
    """The workloads a sweep's WORKLOAD argument names: one, several comma-separated (``sd15,amused``) in the
    order given, or ``all``: every registered workload in the registry's order (`mmchar workloads`). Each name is
    checked here, so an unknown one fails with the registry's one-line error before any workload is planned; a
    workload named twice (or by an alias and its name) is swept once."""
    from mmchar.workloads import get_workload, workload_names

    names: list[str] = []
    seen: set[str] = set()
    for item in (s.strip() for s in spec.split(",")):
        for name in workload_names() if item == "all" else [item] if item else []:
            canonical = get_workload(name).name
            if canonical not in seen:
                seen.add(canonical)
                names.append(name)
    if not names:
        raise InvalidParameterError(f"workload {spec!r} names no workload; e.g. sd15, sd15,amused or all")
    return names


def plan_suite(workloads: Sequence[str], vary: dict[str, list[Any]], backends: Sequence[str],
               store: str | os.PathLike[str], **plan_args: Any) -> SweepSuite:
    """A `plan` per workload (``plan_args``: `plan`'s keywords, the same for each), all before anything runs: a
    --vary value or an option one workload refuses fails the suite up front, its error naming that workload."""
    return SweepSuite([plan(w, vary, backends, store, name_errors=len(workloads) > 1, **plan_args)
                       for w in workloads])


@contextmanager
def _naming(workload: str, on: bool) -> Iterator[None]:
    """Lead an error that does not name ``workload`` with it (``on``: in a suite, where the plain message
    would leave the user guessing which workload refused); the error keeps its type, so the CLI still prints
    one line."""
    try:
        yield
    except MmcharError as e:
        if on and workload not in str(e):
            e.args = (f"{workload}: {e}", *e.args[1:])
        raise


def plan(workload: str, vary: dict[str, list[Any]], backends: Sequence[str], store: str | os.PathLike[str], *,
         preset: str = "tiny", fixed: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
         device: str | None = None, dtype: str | None = None, weights: str | None = None,
         memory: dict[str, bool] | None = None, generation: dict[str, Any] | None = None,
         retry_failed: bool = False, retry_noisy: int = 0, name_errors: bool = False) -> SweepPlan:
    """Resolve and check every point before anything runs (a bad value fails the sweep up front, not at point 7).
    ``name_errors``: an error of the workload's own checks names the workload (a suite's plans; see `_naming`)."""
    from mmchar.api import run_config_hash
    from mmchar.backends import require_backend
    from mmchar.devices import resolve_device
    from mmchar.projections import DEFAULT_LINEAR_BACKEND, require_projection_backend
    from mmchar.runner import ProfileOptions
    from mmchar.workloads import get_workload

    fixed = {k: v for k, v in (fixed or {}).items() if v is not None}
    clash = set(fixed) & set(vary)
    if clash:
        raise InvalidParameterError(f"--{sorted(clash)[0]} is fixed and varied at once; give it only as --vary")
    if not backends:
        raise InvalidParameterError("--backends names no backend; e.g. --backends sdpa,math")
    with _naming(workload, name_errors):
        w = get_workload(workload)
    dev = resolve_device(device)
    for b in backends:
        require_backend(b, dev)
    options = dict(options or {})
    from mmchar.step_cache import NO_CACHE, check_cache_architecture

    with _naming(workload, name_errors):  # every point would fail the same way at run time
        check_cache_architecture(options.get("cache") or NO_CACHE, w.name, w.architecture)
    from mmchar.modes import check_modes

    check_modes(bool(options.get("cuda_graphs")), dev, memory)
    for extra in (options.get("fallback"), options.get("cross_backend")):
        if extra:
            require_backend(extra, dev)
    require_projection_backend(options.get("linear_backend") or DEFAULT_LINEAR_BACKEND, dev)
    keys = list(vary)
    points = []
    for values in itertools.product(*(vary[k] for k in keys)):
        params = dict(zip(keys, values))
        with _naming(workload, name_errors):
            config = w.resolve(preset, dtype=dtype, device=str(dev), weights=weights, memory=memory,
                               generation=generation, **fixed, **params)
        for b in backends:
            opts = ProfileOptions(backend=b, **options)
            points.append(Point(params, b, run_config_hash(config, opts), config))
    if len({p.config_hash for p in points}) != len(points):
        raise InvalidParameterError("two points of this sweep resolve to the same configuration (a repeated value?)")
    memory = {k: True for k, v in (memory or {}).items() if v}
    generation = {k: v for k, v in (generation or {}).items() if v is not None}
    sweep = SweepPlan(workload, preset, points, fixed, options, device, dtype, weights, memory, generation,
                      retry_failed=retry_failed, retry_noisy=retry_noisy)
    sweep.done = stored_points(store, {p.config_hash for p in points})
    return sweep


def stored_points(store: str | os.PathLike[str], hashes: set[str]) -> dict[str, Path]:
    """The run folder of ``store`` standing for each config hash of ``hashes`` (any status: a point is run once).
    Where a point was measured more than once (a retry), the best run stands for it: ok and clean before ok and
    noisy before failed, the newest first within each."""
    found: dict[str, tuple[tuple, Path]] = {}
    root = Path(store)
    if not root.is_dir():
        return {}
    for folder in sorted(root.iterdir()):
        h = _hash_of(folder.name)
        if h not in hashes or not is_run_folder(folder):
            continue
        try:
            meta = read_meta(folder)
            check_tables(folder)
        except Exception:  # noqa: BLE001 (a damaged folder stands for nothing: the point runs again)
            continue
        if meta.get("config_hash") != h:
            continue
        rank = (meta.get("status") == "ok", not (meta.get("noise") or {}).get("noisy"), meta.get("created") or "")
        if h not in found or rank >= found[h][0]:
            found[h] = (rank, folder)
    return {h: folder for h, (_, folder) in found.items()}


_RUN_NAME = re.compile(r"-\d{8}-\d{6}-([0-9a-f]{6})(?:-\d+)?$")


def _hash_of(folder_name: str) -> str | None:
    """The config hash in a run folder's name: ``...-<YYYYmmdd>-<HHMMSS>-<hash>``, or ``...-<hash>-2`` for a second
    run of one configuration in one second (a hash may be all digits: only the position tells)."""
    m = _RUN_NAME.search(folder_name)
    return m.group(1) if m else None


def child_command(sweep: SweepPlan, point: Point, store: str | os.PathLike[str]) -> list[str]:
    """The `mmchar profile` command line of one point."""
    # -P: the child must import the installed mmchar, not a source folder that happens to be the working directory
    cmd = [sys.executable, "-P", "-m", "mmchar", "profile", sweep.workload, "--preset", sweep.preset,
           "--backend", point.backend, "--store", str(store), "--sweep-point"]
    for k, v in {**sweep.fixed, **point.params}.items():
        cmd += [f"--{k}", str(v)]
    for opt in ("device", "dtype", "weights"):
        if getattr(sweep, opt) is not None:
            cmd += [f"--{opt}", str(getattr(sweep, opt))]
    o = sweep.options
    for k in ("fallback", "cross_backend", "scope", "linear_backend", "linear_scope", "repeat", "profile_steps",
              "cache", "cache_schedule"):
        if o.get(k) is not None and (k, o[k]) != ("cache", "none"):
            cmd += ["--" + k.replace("_", "-"), str(o[k])]
    if o.get("keep_trace") is False:
        cmd.append("--no-trace")
    for mode in ("compile", "channels_last", "cuda_graphs"):  # the runtime modes: flags without a value
        if o.get(mode):
            cmd.append("--" + mode.replace("_", "-"))
    cmd += [f"--{k.replace('_', '-')}" for k in sweep.memory]
    for k, v in sweep.generation.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    return cmd


def run_point(sweep: SweepPlan, point: Point, store: str | os.PathLike[str],
              command: Callable[[SweepPlan, Point, str | os.PathLike[str]], list[str]] = child_command,
              env: dict[str, str] | None = None) -> Path:
    """Profile one point in a fresh process; returns its run folder (written by the parent if the child died
    without writing one). ``env``: extra environment of the child (a sharded sweep's GPU pinning)."""
    before = set(os.listdir(store)) if Path(store).is_dir() else set()
    stdout, stderr, code = _child(command(sweep, point, store), {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    new = [Path(store) / n for n in sorted(set(os.listdir(store)) - before)] if Path(store).is_dir() else []
    written = [f for f in new if is_run_folder(f) and _meta_hash(f) == point.config_hash]
    if written:
        return written[-1]
    if code in (130, -signal.SIGINT):  # Ctrl-C reached the child: the point is not done, nor failed
        raise KeyboardInterrupt
    lines = [ln for ln in (stderr + stdout).splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else "no output"
    # SIGKILL is what the kernel's out-of-memory killer sends (a child never prints "Killed": a shell does)
    killed = code == -signal.SIGKILL
    if killed:
        last = f"killed by SIGKILL (most often the out-of-memory killer); last output: {last}"
    elif code in (143, -signal.SIGTERM):  # the point alone was stopped (a hung one, killed by hand): it failed,
        last = f"terminated by SIGTERM; last output: {last}"  # and the sweep goes on (--retry-failed)
    return record_dead_child(sweep, point, store, code, last, oom=killed or "out of memory" in last.lower())


# how long an interrupted child may take to clean up (its profiler, temporary traces, a half-written run folder)
CHILD_CLEANUP_S = 60


def _child(cmd: list[str], env: dict[str, str]) -> tuple[str, str, int]:
    """Run one point's process; on Ctrl-C (which the terminal sends the child too) wait for it to clean up before
    giving up on it, then interrupt the sweep. SIGTERM sent to the sweep alone is passed on (a process group's
    reaches the child twice: its CLI acts on the first only)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate()
    except KeyboardInterrupt as e:
        if isinstance(e, Terminated):  # it was left running, its parent gone
            proc.terminate()
        try:  # the child got the terminal's SIGINT too (one process group); a second would cut its cleanup
            proc.wait(timeout=CHILD_CLEANUP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    return out, err, proc.returncode


def _meta_hash(folder: Path) -> str | None:
    try:
        return read_meta(folder).get("config_hash")
    except Exception:  # noqa: BLE001 (a damaged folder stands for no point)
        return None


def record_dead_child(sweep: SweepPlan, point: Point, store: str | os.PathLike[str], code: int, last: str,
                      oom: bool) -> Path:
    from mmchar.devices import resolve_device
    from mmchar.runner import ProfileOptions, base_meta, new_run_id
    from mmchar.store import Run, unique_run_id, write_run

    options = ProfileOptions(backend=point.backend, **sweep.options)
    run_id = unique_run_id(store, new_run_id(sweep.workload, point.backend, point.config_hash))
    meta = base_meta(point.config, resolve_device(sweep.device), options, run_id, point.config_hash)
    meta.update(status="oom" if oom else "error", sweep=True,
                error=f"the profiling process exited with code {code} without writing its run: {last[:300]}")
    return write_run(store, Run(meta=meta))


def measure_point(sweep: SweepPlan, point: Point, store: str | os.PathLike[str], env: dict[str, str] | None = None,
                  note: Callable[[str], None] = lambda line: None, label: str | None = None) -> Path:
    """One point in a fresh process, measured again while the noise guard flags it, ``retry_noisy`` times at
    most (a stored noisy point's first measurement here is already one of them); the best of its runs stands.
    ``note`` hears each retry and the point's result, one line each, the point named ``label`` (`Point.label`
    unless given: a suite's `SweepSuite.label` names the workload too).

    Returns:
        The point's run folder that stands for it (ok and clean first, then newest).
    """
    label = point.label() if label is None else label
    stored = sweep.done.get(point.config_hash)
    retries = sweep.retry_noisy - (1 if stored is not None and summary_row(point, stored)["noisy"] == "yes" else 0)
    row = summary_row(point, run_point(sweep, point, store, env=env))
    for attempt in range(max(retries, 0)):
        if row["noisy"] != "yes":
            break
        note(f"{label}: noisy ({row['noise']}); measuring again ({attempt + 1} of {retries})")
        row = summary_row(point, run_point(sweep, point, store, env=env))
    folder = stored_points(store, {point.config_hash})[point.config_hash]
    row = summary_row(point, folder)
    note(f"{label}: {row['status']}" + (
        f", {row['e2e_ms']} ms per generation" + (" (noisy)" if row["noisy"] == "yes" else "")
        if row["status"] == "ok" else f" ({row['error']})"))
    return folder


def rank_points(points: list[Point], rank: Rank | None) -> list[Point]:
    """This process's share of ``points``: all of them alone; under torchrun, after joining the ranks' group,
    every ``world``-th point ordered by config hash (so backends and sizes mix across ranks; a suite passes the
    points of all its workloads as one list, so workloads mix too and no rank waits on one big workload)."""
    if rank is None:
        return points
    distributed.init()
    return rank.shard(points, key=lambda p: p.config_hash)


_Sweep = TypeVar("_Sweep", SweepPlan, SweepSuite)


def gather_points(sweep: _Sweep, folders: dict[str, Path], store: str | os.PathLike[str],
                  rank: Rank) -> tuple[_Sweep, dict[str, Path]] | None:
    """Every rank's finished points on rank 0, once all ranks arrive (so all points are stored before the
    summary); the ranks' group ends here. Every rank calls it, a failed one too, or the others would wait.
    ``sweep``: one workload's plan or a suite's (every point of every workload).

    Returns:
        On rank 0: the plan cut to the points that have a run, and their folders (a point of a rank that failed
        mid-way counts where its run is in the store); ``None`` on the other ranks.
    """
    shards = distributed.gather_to_leader({h: str(f) for h, f in folders.items()}, rank)
    distributed.finish()
    if shards is None:  # not rank 0
        return None
    folders = {h: Path(f) for shard in shards for h, f in shard.items()}
    missing = [p for p in sweep.points if p.config_hash not in folders]
    if missing:
        folders.update(stored_points(store, {p.config_hash for p in missing}))
        sweep = sweep.only(folders)
    return sweep, folders


def summary_row(point: Point, folder: Path) -> dict[str, Any]:
    """What the summary table shows of one point's run."""
    meta = read_meta(folder)
    t = meta.get("timings") or {}
    key = step_key(t)  # a denoiser step, or a token model's generator step
    e2e, step = (t.get("e2e") or {}).get("median_ms"), (t.get(key) or {}).get("median_ms")
    busy = ((meta.get("busy") or {}).get(key) or {}).get("busy_frac")
    noise = meta.get("noise") or {}
    return {**point.params, "backend": point.backend, "status": meta["status"],
            "noisy": None if noise.get("noisy") is None else ("yes" if noise["noisy"] else "no"),
            "e2e_ms": None if e2e is None else round(e2e, 2),
            "step_ms": None if step is None else round(step, 3),
            "step_busy": None if busy is None else round(busy, 3),
            "run": folder.name, "error": meta.get("error") or "",
            "noise": "; ".join(noise.get("reasons") or [])}
