"""The noise guard: a run measured while something competes for the host comes out flagged, with its reason; a
lone run's single outlier does not flag it; two profiles into one store at once each come out clean or flagged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmchar import noise
from mmchar.schema import META_FILE

BUSY = "import time\nend = time.time() + {s}\nwhile time.time() < end: pass\n"


def _busy_loops(n: int, seconds: float) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY.format(s=seconds)]) for _ in range(n)]


def _timing(values: list[float]) -> dict:
    return {"median_ms": sorted(values)[len(values) // 2], "min_ms": min(values), "max_ms": max(values),
            "n": len(values), "cv": noise.cv(values), "spread": noise.spread(values)}


def _window(other: float, cores: float = 2.0, needed: float = 2.0, gpu: dict | None = None) -> dict:
    w = {"cores": cores, "needed_cores": needed, "other_cpu_cores": other,
         "busy_processes": [{"pid": 7, "name": "make", "cores": other}]}
    if gpu is not None:
        w["gpu"] = gpu
    return w


def test_spread_is_robust_to_one_outlier_but_not_to_a_slow_half():
    lone = [31.0, 31.5, 31.9, 32.0, 677.0]  # one hypervisor hiccup: the median stands
    assert noise.cv(lone) > 1.0 and noise.spread(lone) < 0.05
    contended = [31.0, 45.0, 62.0, 33.0, 70.0]
    assert noise.spread(contended) > noise.THRESHOLDS["spread"]
    assert noise.spread([5.0]) is None and noise.cv([5.0]) is None


def test_verdict_names_each_reason_and_passes_a_quiet_run():
    quiet = noise.verdict({"e2e": _timing([100, 101, 99]), "denoiser_step": _timing([10, 10.1, 9.9, 10.2])},
                          {"timed": _window(0.05), "profiles": _window(0.0)}, on_gpu=False)
    assert quiet == {"noisy": False, "reasons": [], "thresholds": noise.thresholds()}

    spread = noise.verdict({"e2e": _timing([100, 180, 260])}, {"timed": _window(0.0)}, on_gpu=False)
    assert spread["noisy"] and "e2e spread" in spread["reasons"][0] and "threshold 10%" in spread["reasons"][0]
    # a step's spread leaves each generation's first step out: the reason counts the samples it is of
    steps = {**_timing([10, 20, 30, 40, 50, 60]), "spread_n": 4}
    assert "over 4 timed samples" in noise.verdict({"denoiser_step": steps}, {}, on_gpu=False)["reasons"][0]

    loaded = noise.verdict({"e2e": _timing([100, 101, 99])}, {"timed": _window(1.0)}, on_gpu=False)
    assert loaded["noisy"] and "other processes used 1.00 of 2 CPU cores during the timed pass" in loaded["reasons"][0]
    assert "make (pid 7)" in loaded["reasons"][0]
    # a GPU run that leaves cores free is not disturbed by them; its profiles' host gaps are not judged
    roomy = noise.verdict({"e2e": _timing([100, 101, 99])}, {"timed": _window(3.0, cores=16, needed=1),
                                                             "profiles": _window(15.0, cores=16, needed=1)}, on_gpu=True)
    assert not roomy["noisy"]
    gpu = {"other_processes": [41, 42], "other_processes_sm_pct": {"41": 0, "42": 37}, "slowdowns": ["hardware slowdown"],
           "sm_clock_mhz": [1980, 1200], "sm_clock_max_mhz": 1980}
    shared = noise.verdict({"e2e": _timing([100, 101, 99])}, {"timed": _window(0.0, gpu=gpu)}, on_gpu=True)
    assert shared["noisy"] and "on the GPU during the timed pass: pids 42" in shared["reasons"][0]  # 41 idle
    assert "GPU clocks slowed" in shared["reasons"][1]
    # a token model's generator steps mix prefill and decode by design: only its e2e is judged
    token = noise.verdict({"e2e": _timing([100, 101, 99]), "generator_step": _timing([50, 1, 1, 1]),
                           "generator_decode": _timing([1, 1, 1])}, {}, on_gpu=False)
    assert not token["noisy"]


def test_a_containers_quota_is_judged_by_its_throttling_not_by_host_ticks():
    """With a CPU quota below its CPUs, other tenants' ticks on shared cores say nothing (the container cannot see
    them): the quota's own throttling of the run flags it."""
    w = _window(30.0, cores=64, needed=2)
    w.update(quota_cores=2.0, seconds=1.0, throttled_ms=0.0)
    assert not noise.verdict({"e2e": _timing([100, 101, 99])}, {"timed": w}, on_gpu=False)["noisy"]
    w["throttled_ms"] = 120.0
    v = noise.verdict({"e2e": _timing([100, 101, 99])}, {"timed": w}, on_gpu=False)
    assert v["noisy"] and "CPU quota (2 cores) throttled it 120 ms" in v["reasons"][0]


def test_thresholds_follow_the_environment(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MMCHAR_NOISE_SPREAD", "0.01")
    assert noise.thresholds()["spread"] == 0.01
    assert noise.verdict({"e2e": _timing([100, 103, 97])}, {}, on_gpu=False)["noisy"]
    from mmchar.errors import InvalidParameterError

    for bad in ("lots", "nan", "-1"):
        monkeypatch.setenv("MMCHAR_NOISE_SPREAD", bad)
        with pytest.raises(InvalidParameterError, match=f"MMCHAR_NOISE_SPREAD='{bad}' is not a number of 0 or more"):
            noise.thresholds()
    from mmchar.cli import main

    capsys.readouterr()
    assert main(["profile", "sd15", "--store", str(tmp_path / "s")]) == 1  # refused before anything is built
    assert "MMCHAR_NOISE_SPREAD='-1'" in capsys.readouterr().err and not (tmp_path / "s").exists()


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@pytest.mark.host_alone  # its busy loops must get their cores: no other test's processes beside them
@pytest.mark.skipif(not Path("/proc/self/stat").exists() or _cpus() < 2, reason="reads /proc, needs 2 CPUs")
def test_probe_measures_other_processes_cpu_over_its_window():
    """A competitor still running at the end is named; one that ended inside the window still counts."""
    probe = noise.HostProbe(device=None, needed_cores=1.0)
    probe.start()
    (gone,) = _busy_loops(1, 0.6)
    (alive,) = _busy_loops(1, 30)
    try:
        gone.wait()
        time.sleep(0.6)
        w = probe.stop()
    finally:
        alive.kill()
    assert w["other_cpu_cores"] > 1.0, w  # ~0.5 cores from the one that ended, up to 1 from the live one
    mine = [b for b in w["busy_processes"] if b["pid"] == alive.pid]
    assert mine and mine[0]["cores"] > 0.3, w["busy_processes"]
    assert w["start_epoch"] < w["end_epoch"] and w["loadavg_end"] is not None and "steal_cores" in w


@pytest.mark.host_alone  # it is the load: busy loops on every core would starve the other worker's tests
def test_a_profile_beside_busy_loops_is_stored_noisy_with_its_reason(tmp_path):
    """In process, on the CPU: busy loops on every core during the whole measurement flag the run."""
    from mmchar.cli import main
    from mmchar.workloads import get_workload

    # the libraries the profile imports, imported before the loops start (as any earlier test in the process has):
    # the loops compete with the measurement itself, which is what the guard judges
    get_workload("sd15").build(get_workload("sd15").resolve("tiny", device="cpu"))
    loops = _busy_loops(_cpus(), 60)
    try:
        code = main(["profile", "sd15", "--steps", "1", "--repeat", "3", "--no-trace", "--store", str(tmp_path)])
    finally:
        for p in loops:
            p.kill()
    assert code == 0
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    meta = json.loads((run / META_FILE).read_text())
    assert meta["noise"]["noisy"] is True
    assert any("other processes used" in r and "python" in r for r in meta["noise"]["reasons"]), meta["noise"]
    assert meta["timings"]["e2e"]["cv"] is not None and meta["timings"]["e2e"]["spread"] is not None


@pytest.mark.host_alone  # two profiles at once: the load, and the judge of it
def test_two_profiles_into_one_store_at_once_come_out_clean_or_flagged(tmp_path):
    """A long profile and a short one started together into one store: the short one runs entirely while the long
    one is busy, so it must be flagged; neither run is lost (same configuration, same second), and each run whose
    timed pass overlapped the other process's life is flagged."""
    store = tmp_path / "store"
    common = ["-m", "mmchar", "profile", "sd15", "--steps", "1", "--no-trace", "--store", str(store)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs, life = {}, {}
    procs["long"] = subprocess.Popen([sys.executable, "-P", *common, "--repeat", "40"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    life["long"] = [time.time(), None]
    procs["short"] = subprocess.Popen([sys.executable, "-P", *common, "--repeat", "3"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    life["short"] = [time.time(), None]
    while any(v[1] is None for v in life.values()):
        for name, p in procs.items():
            if life[name][1] is None and p.poll() is not None:
                life[name][1] = time.time()
        time.sleep(0.05)
    assert all(p.returncode == 0 for p in procs.values())
    metas = [json.loads((r / META_FILE).read_text()) for r in sorted(store.iterdir()) if r.is_dir()]
    assert len(metas) == 2 and len({m["run_id"] for m in metas}) == 2
    by_repeat = {m["passes"]["repeat"]: m for m in metas}
    for mine, other in ((by_repeat[3], "long"), (by_repeat[40], "short")):
        w = mine["noise"]["windows"]["timed"]
        overlapped = w["start_epoch"] < life[other][1] and w["end_epoch"] > life[other][0]
        if overlapped:
            assert mine["noise"]["noisy"], (mine["noise"], life)
    assert by_repeat[3]["noise"]["noisy"], "the short run measured wholly inside the long one's life"
