"""WorkerShare (tests/conftest.py): how pytest-xdist workers share one GPU (or the host's cores). Checked with
threads, each with its own open files (flock locks belong to the open file, so two of them in one process exclude
each other as two processes do)."""

from __future__ import annotations

import importlib.util
import os
import threading
import time
import tomllib
from pathlib import Path


def _share_class():
    spec = importlib.util.spec_from_file_location("_mmchar_tests_conftest", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.WorkerShare


def _in_thread(cm, log: list, name: str, hold: threading.Event | None = None) -> threading.Thread:
    def body():
        with cm():
            log.append(f"{name} in")
            if hold is not None:
                hold.wait(5)
            log.append(f"{name} out")
    t = threading.Thread(target=body)
    t.start()
    return t


def test_alone_waits_for_sharers_and_new_sharers_wait_for_alone(tmp_path):
    Share = _share_class()
    log: list[str] = []
    release_first = threading.Event()
    first = _in_thread(Share(tmp_path).shared, log, "sharer", release_first)
    time.sleep(0.2)
    alone = _in_thread(Share(tmp_path).alone, log, "alone")
    time.sleep(0.2)
    late = _in_thread(Share(tmp_path).shared, log, "late sharer")  # arrives while alone waits
    time.sleep(0.2)
    assert log == ["sharer in"]  # alone waits for the running sharer; the late one waits behind alone
    release_first.set()
    for t in (first, alone, late):
        t.join(5)
    assert log == ["sharer in", "sharer out", "alone in", "alone out", "late sharer in", "late sharer out"]


def test_sharers_run_together_and_workers_are_listed(tmp_path):
    Share = _share_class()
    log: list[str] = []
    hold = threading.Event()
    threads = [_in_thread(Share(tmp_path).shared, log, f"s{i}", hold) for i in range(3)]
    time.sleep(0.3)
    assert sorted(log) == ["s0 in", "s1 in", "s2 in"]  # all three hold the card at once
    hold.set()
    for t in threads:
        t.join(5)
    assert Share(tmp_path).workers() == {os.getpid()}


def test_a_sharer_releases_what_it_holds_before_letting_go(tmp_path):
    """The GPU's share empties the card's cache before a test waiting to be alone gets it: on_release runs while
    the sharer still holds the lock."""
    Share = _share_class()
    log: list[str] = []
    sharer = Share(tmp_path, on_release=lambda: log.append("released"))
    with sharer.shared():
        log.append("in")
        alone = _in_thread(Share(tmp_path).alone, log, "alone")
        time.sleep(0.2)
    alone.join(5)
    assert log == ["in", "released", "alone in", "alone out"]


def test_host_alone_is_a_registered_marker_and_the_host_is_shared_per_run(tmp_path, monkeypatch):
    """``host_alone`` is declared (pytest would warn on an unknown mark) and each test run gets its own folder."""
    root = Path(__file__).resolve().parents[1]
    markers = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert any(m.startswith("host_alone:") for m in markers)
    spec = importlib.util.spec_from_file_location("_mmchar_tests_conftest_2", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.delenv("PYTEST_XDIST_TESTRUNUID", raising=False)
    assert module.host_share() is None  # one process: nothing to share
    monkeypatch.setenv("PYTEST_XDIST_TESTRUNUID", "t1")
    monkeypatch.setattr(module.tempfile, "gettempdir", lambda: str(tmp_path))
    share = module.host_share()
    assert share.folder == tmp_path / "mmchar-host-t1" and share is module.host_share()
