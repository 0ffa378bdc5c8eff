"""The run store: ``STORE/<run_id>/`` folders written atomically, read back with a schema check.

A run folder holds ``meta.json``, ``kernels.parquet``, ``breakdown.csv`` and ``trace.pt.trace.json.gz``
(docs/run-schema.md). It is written to a hidden temporary sibling and renamed when complete, so a
reader never sees half a run and an interrupted run leaves nothing that looks finished.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mmchar.errors import MmcharError, RunNotFoundError, SchemaMismatchError
from mmchar.schema import (BREAKDOWN_COLUMNS, BREAKDOWN_FILE, KERNEL_COLUMNS, KERNELS_FILE, META_FILE,
                           OUTSIDE_STAGES, SCHEMA_VERSION, TRACE_FILE)
from mmchar.sub_classes import sub_classes

TMP_PREFIX = ".tmp-"
# what every reader takes from meta.json without asking
REQUIRED_META = ("schema_version", "run_id", "status", "workload", "backend")
# schema versions this mmchar reads: older ones are upgraded in memory when loaded (`_upgrade`)
READABLE_VERSIONS = (1, SCHEMA_VERSION)


class StorePathError(MmcharError):
    """A store or output path that cannot be written (a file where a folder should be, no permission)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _follow_umask(path: Path, mode: int, umask: int) -> None:
    """tempfile makes folders 0700 and files 0600; a team's shared store must be as readable as the user's
    umask allows, like any file they write."""
    try:
        os.chmod(path, mode & ~umask)
    except OSError:
        pass


@dataclass
class Run:
    """One run folder loaded: its metadata and its two tables (empty for failed runs)."""

    meta: dict[str, Any]
    kernels: pd.DataFrame = field(default_factory=lambda: empty_kernels())
    breakdown: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(BREAKDOWN_COLUMNS)))
    path: Path | None = None

    @property
    def run_id(self) -> str:
        return self.meta["run_id"]

    @property
    def status(self) -> str:
        return self.meta["status"]

    @property
    def workload(self) -> str:
        return self.meta["workload"]

    @property
    def backend(self) -> str:
        return self.meta["backend"]

    @property
    def trace_path(self) -> Path | None:
        if self.path is None:
            return None
        p = self.path / TRACE_FILE
        return p if p.exists() else None


def empty_kernels() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in KERNEL_COLUMNS.items()})


def write_run(store: str | os.PathLike[str], run: Run, trace_file: str | os.PathLike[str] | None = None) -> Path:
    """Write ``run`` as ``store/<run_id>/`` atomically and return the folder. ``trace_file`` (gzip JSON) is moved in.

    Two processes writing the same configuration into one store in the same second both keep their run: the
    rename that publishes a folder fails when the name is taken, and the later one takes the next free id.
    """
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + run.run_id + "-", dir=store))
    try:
        umask = _umask()
        _follow_umask(tmp, 0o777, umask)
        kernels = run.kernels if len(run.kernels.columns) else empty_kernels()
        kernels.to_parquet(tmp / KERNELS_FILE, index=False)
        run.breakdown.reindex(columns=list(BREAKDOWN_COLUMNS)).to_csv(tmp / BREAKDOWN_FILE, index=False)
        if trace_file is not None and Path(trace_file).exists():
            shutil.move(str(trace_file), tmp / TRACE_FILE)
            _follow_umask(tmp / TRACE_FILE, 0o666, umask)
        base = run.run_id
        while True:
            meta = dict(run.meta, schema_version=SCHEMA_VERSION)
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=False, default=_json_default))
            final = store / run.run_id
            try:
                if final.exists():
                    raise FileExistsError(errno.EEXIST, "run folder exists", str(final))
                os.rename(tmp, final)
                break
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                run.meta = _renamed(run.meta, unique_run_id(store, base))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    run.path = final
    return final


def _renamed(meta: dict[str, Any], run_id: str) -> dict[str, Any]:
    """``meta`` under a new run id, a compare baseline's pointer to itself included."""
    old, meta = meta["run_id"], dict(meta, run_id=run_id)
    if (meta.get("compare") or {}).get("baseline_run_id") == old:
        meta["compare"] = dict(meta["compare"], baseline_run_id=run_id)
    return meta


def check_writable(path: str | os.PathLike[str], flag: str = "--store") -> None:
    """Fail now, not after a measurement, when ``path`` (a folder, made if missing) cannot be written: a file in
    its place, a read-only or missing-permission parent. Probes by writing, which is what counts (root ignores
    mode bits; a read-only file system does not)."""
    path = Path(path)
    check_outside_runs(path, flag)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        where = "" if probe == path else f" ({probe} is a file)"
        raise StorePathError(f"{flag} {str(path)!r} is not a folder{where}; pass a folder path")
    try:
        fd, name = tempfile.mkstemp(prefix=".mmchar-probe-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise StorePathError(f"{flag} {str(path)!r} cannot be written ({e.strerror or e}: {probe}); pass a "
                             "folder you can write to") from None


def check_outside_runs(path: str | os.PathLike[str], flag: str) -> None:
    """A run folder holds its own files only: an output written into one replaced them (an export over its
    meta.json left the run unreadable; a study over its breakdown.csv fed every later reader five runs' rows as
    one run's), and a store inside one hid its runs from the store's readers."""
    path = Path(path)
    absolute = Path(os.path.abspath(path))
    run = next((p for p in (absolute, *absolute.parents) if is_run_folder(p)), None)
    if run is None:
        return
    shown = run if path.is_absolute() else Path(os.path.relpath(run))  # as the user wrote the path
    if run == absolute and flag == "--store":
        raise StorePathError(f"--store {str(path)!r} is a run folder, not a store; pass its store: --store "
                             f"{shown.parent}")
    where = "is a run folder" if run == absolute else f"is inside the run folder {shown}"
    raise StorePathError(f"{flag} {str(path)!r} {where}, which holds only that run's own files; pass a path "
                         "outside it")


def unique_run_id(store: str | os.PathLike[str], run_id: str) -> str:
    """``run_id``, or ``run_id-2``, ``-3`` ... when the store has it already (the same configuration twice in
    one second: `profile` always adds a run)."""
    store, candidate, n = Path(store), run_id, 1
    while (store / candidate).exists():
        n += 1
        candidate = f"{run_id}-{n}"
    return candidate


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def read_meta(folder: str | os.PathLike[str]) -> dict[str, Any]:
    folder = Path(folder)
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except FileNotFoundError:
        raise RunNotFoundError(f"{folder} is not a run folder (no {META_FILE})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunNotFoundError(f"{folder / META_FILE} is not valid JSON ({getattr(e, 'msg', e)}); delete the folder "
                               "and re-run") from None
    missing = [k for k in REQUIRED_META if k not in meta] if isinstance(meta, dict) else list(REQUIRED_META)
    if missing:
        raise RunNotFoundError(f"{folder / META_FILE} does not hold a run's metadata (no {', '.join(missing)}); "
                               "delete the folder and re-run")
    version = meta.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise SchemaMismatchError(f"run {folder} has schema_version {version}, this mmchar reads "
                                  f"{', '.join(map(str, READABLE_VERSIONS))}; re-run it with this version, or read "
                                  "it with the mmchar that wrote it")
    return _upgrade(meta)


def _upgrade(meta: dict[str, Any]) -> dict[str, Any]:
    """Version 1 called the time outside every stage ``scheduler``; version 2 calls it ``host`` (``scheduler`` is
    now the scheduler's own calls). A version-1 run is read as version 2, and says so in ``upgraded_from``."""
    if meta.get("schema_version") == 1:
        for table in ("timings", "busy"):
            if isinstance(meta.get(table), dict) and "scheduler" in meta[table]:
                meta[table][OUTSIDE_STAGES] = meta[table].pop("scheduler")
        meta["upgraded_from"], meta["schema_version"] = 1, SCHEMA_VERSION
    return meta


def _upgrade_stages(frame: pd.DataFrame, meta: dict[str, Any]) -> pd.DataFrame:
    """The ``stage`` column of a version-1 run's tables under version 2's names (see `_upgrade`)."""
    if meta.get("upgraded_from") != 1 or "stage" not in frame.columns:
        return frame
    categorical = isinstance(frame["stage"].dtype, pd.CategoricalDtype)
    stage = frame["stage"].astype(str).replace({"scheduler": OUTSIDE_STAGES})
    frame["stage"] = stage.astype("category") if categorical else stage
    return frame


def check_tables(folder: Path, *, kernels: bool = True) -> None:
    """Every run is written with both tables (empty ones for a failed run): a missing one is damage, not a run
    without kernels (read as one, `diff` silently dropped its per-module rows; a sweep took it for a measured
    point and never ran it again).

    Raises:
        RunNotFoundError: a table is missing.
    """
    for table in (BREAKDOWN_FILE, KERNELS_FILE) if kernels else (BREAKDOWN_FILE,):
        if not (folder / table).is_file():
            raise RunNotFoundError(f"{folder / table} is missing; every run folder holds {BREAKDOWN_FILE} and "
                                   f"{KERNELS_FILE}: profile the run again")


def load_run(folder: str | os.PathLike[str], *, kernels: bool = True) -> Run:
    """Load one run folder (``kernels=False`` skips the per-kernel table, the one large file)."""
    folder = Path(folder)
    meta = read_meta(folder)
    run = Run(meta=meta, path=folder)
    bd = folder / BREAKDOWN_FILE
    check_tables(folder, kernels=kernels)
    if bd.stat().st_size:
        run.breakdown = _upgrade_stages(pd.read_csv(bd, keep_default_na=False,
                                                    na_values={"time_us": [""], "share": [""]}), meta)
    if kernels:
        run.kernels = with_added_columns(_upgrade_stages(pd.read_parquet(folder / KERNELS_FILE), meta))
    return run


# kernels.parquet columns added within a schema version: the value every row of an older run holds, or the function
# of the older table that derives them (from columns it has)
ADDED_KERNEL_COLUMNS: dict[str, Any] = {
    "phase": "",  # no run mmchar profiles has a backward pass
    "call": -1,  # not recorded: which call of its step a kernel ran in
    "sub_class": sub_classes,  # the rule table reads only stored columns: an older run gets what attribution writes
}


def with_added_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """A kernel table written (or built) before a column of `ADDED_KERNEL_COLUMNS` existed, with it (its default,
    or derived from the table), in the schema's order; the table itself when it has them all."""
    missing = [c for c in ADDED_KERNEL_COLUMNS if c not in frame.columns]
    if not missing:
        return frame

    def added(c: str) -> pd.Series:
        how = ADDED_KERNEL_COLUMNS[c]
        values = how(frame) if callable(how) else pd.Series(how, index=frame.index)
        return pd.Series(values, index=frame.index).astype(KERNEL_COLUMNS[c])

    frame = frame.assign(**{c: added(c) for c in missing})
    order = [c for c in KERNEL_COLUMNS if c in frame.columns]
    return frame[order + [c for c in frame.columns if c not in KERNEL_COLUMNS]]


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(TMP_PREFIX) and (path / META_FILE).is_file()


def run_folders(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Run folders named by ``paths``: each a run folder or a store (a folder of run folders), mixed."""
    found: list[Path] = []
    for p in map(Path, paths):
        if is_run_folder(p):
            found.append(p)
        elif p.is_dir():
            subs = sorted(q for q in p.iterdir() if is_run_folder(q))
            if not subs:
                raise RunNotFoundError(f"{p} holds no runs; pass a store written by `mmchar profile` or a run folder")
            found += subs
        elif p.exists():
            raise RunNotFoundError(f"{p} is a file, not a store or a run folder; pass a store written by `mmchar "
                                   "profile` or a run folder")
        else:
            raise RunNotFoundError(f"{p} does not exist; pass a store written by `mmchar profile` or a run folder")
    return list(dict.fromkeys(found))


def load_runs(paths: Iterable[str | os.PathLike[str]], *, kernels: bool = True,
              on_damaged: Callable[[Path, str], None] | None = None) -> list[Run]:
    """Every run under ``paths``. A run folder that cannot be read (a truncated table, corrupted meta.json, another
    schema) raises, unless ``on_damaged(folder, why)`` is given: then it is reported there and skipped, so one
    damaged run does not take a whole store's analysis down with it."""
    runs = []
    for folder in run_folders(paths):
        try:
            runs.append(load_run(folder, kernels=kernels))
        except Exception as e:  # noqa: BLE001 (pyarrow, pandas and json each raise their own)
            if on_damaged is None:
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            # mmchar's own errors say what is wrong; a library's (pyarrow, pandas) is named to be looked up
            on_damaged(folder, first if isinstance(e, MmcharError) else f"{type(e).__name__}: {first}")
    return runs
