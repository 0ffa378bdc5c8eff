"""Shared fixtures. GPU tests carry the ``gpu`` marker and skip without CUDA; under ``pytest -n N``
(pytest-xdist) the workers share the GPU and the host's cores through `WorkerShare`."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import shutil
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")
# Triton kernels run in Triton's interpreter where there is no GPU (set before anything imports triton).
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# the kernels' GPU tests check correctness, not speed: one config per kernel instead of tuning each new shape
# (kernels/tuning.py: tuning_off); MMCHAR_AUTOTUNE=1 tests the tuned picks
os.environ.setdefault("MMCHAR_AUTOTUNE", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The CLI's output as a pipe gets it (200 columns) whatever terminal ran the tests: pytest-xdist's workers start
# with COLUMNS=80 (execnet's default), CI's terminal is its own, and the tests read content, not layout. The tests
# of narrow terminals set the console's width themselves (tests/cli/test_trust.py: narrow).
os.environ["COLUMNS"] = "200"
os.environ.pop("LINES", None)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")

import pytest  # noqa: E402
import torch  # noqa: E402


class WorkerShare:
    """One resource shared by the workers of ``pytest -n N``: the GPU (``pytest -m gpu -n 8``: compiling kernels is
    most of the GPU suite's time and runs on the host's cores in parallel, but the tests' memory adds up on one
    card) or the host's cores (``make test`` runs two workers: a test that judges the other processes' CPU use,
    the noise guard's, is the one thing that cannot share them). Each test holds the resource shared; a test
    marked ``gpu_alone`` (large fp32 references, the noise guard on the card) or ``host_alone`` holds it alone,
    and a GPU test that ran out of memory beside the others runs once more alone. A writer-preferring
    readers-writer lock from two ``flock``ed files (Linux grants new shared locks while an exclusive one waits, so a
    sharer passes a gate first, which a test waiting to be alone holds). Each worker leaves its pid in the folder:
    the processes a test may see on the card besides its own."""

    def __init__(self, folder: Path, on_release: Callable[[], None] | None = None) -> None:
        """``on_release``: run by a sharer before it lets go (the GPU's: leave nothing cached on the card)."""
        self.folder = folder
        self.on_release = on_release
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"worker-{os.getpid()}").touch()

    def _open(self, name: str):
        return open(self.folder / name, "a+")

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._open("gate") as gate, self._open("card") as card:
            fcntl.flock(gate, fcntl.LOCK_EX)
            fcntl.flock(card, fcntl.LOCK_SH)
            fcntl.flock(gate, fcntl.LOCK_UN)
            try:
                yield
            finally:
                if self.on_release is not None:
                    self.on_release()
                fcntl.flock(card, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        with self._open("gate") as gate, self._open("card") as card:
            fcntl.flock(gate, fcntl.LOCK_EX)  # no new sharer starts ...
            fcntl.flock(card, fcntl.LOCK_EX)  # ... and the running ones finish
            try:
                yield
            finally:
                fcntl.flock(card, fcntl.LOCK_UN)
                fcntl.flock(gate, fcntl.LOCK_UN)

    def workers(self) -> set[int]:
        return {int(p.name.split("-", 1)[1]) for p in self.folder.glob("worker-*")}


def _empty_the_card() -> None:
    gc.collect()
    torch.cuda.empty_cache()


_SHARES: dict[str, WorkerShare] = {}


def _share(resource: str, on_release: Callable[[], None] | None = None) -> WorkerShare | None:
    uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not uid:
        return None  # a single process: nothing to share
    if resource not in _SHARES:
        _SHARES[resource] = WorkerShare(Path(tempfile.gettempdir()) / f"mmchar-{resource}-{uid}", on_release)
    return _SHARES[resource]


def gpu_share() -> WorkerShare | None:
    """The session's share of the GPU under pytest-xdist with a GPU; None in a single process or without one."""
    return _share("gpu", _empty_the_card) if torch.cuda.is_available() else None


def host_share() -> WorkerShare | None:
    """The session's share of the host's cores under pytest-xdist; None in a single process."""
    return _share("host")


def pytest_sessionstart(session):
    gpu_share()  # every worker leaves its pid before any test looks at the card
    host_share()


def pytest_sessionfinish(session):
    """Each worker takes its pid back; the last one out removes the folder (a test that runs pytest in a
    subprocess must drop PYTEST_XDIST_TESTRUNUID from its environment, or it would queue behind its own parent)."""
    for share in _SHARES.values():
        (share.folder / f"worker-{os.getpid()}").unlink(missing_ok=True)
        if not share.workers():
            shutil.rmtree(share.folder, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """The host's share around the whole test, set-up and teardown included (module fixtures that profile)."""
    host = host_share()
    hold = (contextlib.nullcontext() if host is None else host.alone() if "host_alone" in item.keywords
            else host.shared())
    with hold:  # the host before the card, in every test: no two tests wait on each other's
        return (yield)


@pytest.hookimpl(wrapper=True, trylast=True)  # innermost wrapper: a retry runs inside output capture
def pytest_runtest_call(item):
    share = gpu_share()
    if share is None or "gpu" not in item.keywords:
        return (yield)
    if "gpu_alone" in item.keywords:
        with share.alone():
            return (yield)
    try:
        with share.shared():
            return (yield)
    except torch.OutOfMemoryError as e:
        # the failed attempt's frames hold its tensors: the traceback and pytest's sys.last_* copies of it go
        traceback.clear_frames(e.__traceback__)
        for name in ("last_type", "last_value", "last_traceback", "last_exc"):
            if hasattr(sys, name):
                delattr(sys, name)
    gc.collect()
    torch.cuda.empty_cache()
    with share.alone():
        return item.runtest()


@pytest.fixture
def gpu_siblings() -> set[int]:
    """Pids of the other pytest-xdist workers sharing the GPU (empty in a single process)."""
    share = gpu_share()
    return share.workers() - {os.getpid()} if share else set()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def torchrun():
    """Run ``torchrun --nproc-per-node N ARGS...`` on a free port, as the README writes it (``-m mmchar`` from the
    checkout's root works: the checkout's folders are the package's); skips where torchrun is missing."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if exe is None:
        pytest.skip("torchrun not installed beside this Python")

    def run(nproc: int, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**{k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}, "OMP_NUM_THREADS": "1"}
        return subprocess.run([exe, "--nproc-per-node", str(nproc), "--master-port", str(port), *args],
                              capture_output=True, text=True, env=env, timeout=timeout)

    return run
