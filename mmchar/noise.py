"""The noise guard: can a run's timed pass be trusted, and if not, why.

A latency measured while something else competes for the host (another profile, a build, a busy loop) or the
GPU comes out 2-260x too slow and otherwise looks like any other run. So every run records

- the spread of its timed samples (min, median, max, coefficient of variation and the robust spread per timing
  key: the runner's ``_stats``), and
- the load around it: the CPU time other processes used while its passes ran (from ``/proc``, in cores), the
  busiest of them, the load average and the CPU frequency governor, and on CUDA, through NVML when
  ``nvidia-ml-py`` is installed, the SM clock, the clock-slowdown reasons and the other processes on its GPU;

and `verdict` turns them into ``noisy`` with its reasons when the spread or the load passes a threshold
(`THRESHOLDS`; the README and docs/conventions.md state them). The load is measured over the pass itself, not
sampled once: a competitor that starts half-way through is caught.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Documented in the README ("The noise guard") and docs/conventions.md; change them together.
THRESHOLDS: dict[str, float] = {
    # robust spread (1.4826 x median absolute deviation / median) above which a timing key's samples are too
    # spread for their median to stand for them: end to end over the timed generations, and one denoising step
    # over every timed step. Robust because the median is what mmchar reports: one outlier (a page fault, a
    # hypervisor hiccup) cannot move it, and cannot flag a run either; a CV would (one 677 ms sample among four
    # of 31 ms is a CV of 122 %)
    "spread": 0.10,
    # samples needed before the spread is judged (fewer: the spread is recorded, not judged)
    "min_samples": 3,
    # CPU cores other processes may use beyond the ones this run leaves free before they compete with it
    "spare_cores": 0.25,
}

# environment variables that override a threshold (a stricter lab, a noisier shared machine), by threshold name
THRESHOLD_ENV = {"spread": "MMCHAR_NOISE_SPREAD", "spare_cores": "MMCHAR_NOISE_SPARE_CORES"}


def thresholds() -> dict[str, float]:
    """`THRESHOLDS` with the environment's overrides (``MMCHAR_NOISE_SPREAD=0.05`` ...); a run records those it
    was judged by."""
    out = dict(THRESHOLDS)
    for name, var in THRESHOLD_ENV.items():
        value = os.environ.get(var)
        if value:
            try:
                out[name] = float(value)
            except ValueError:
                out[name] = math.nan
            if not (math.isfinite(out[name]) and out[name] >= 0):
                from mmchar.errors import InvalidParameterError

                raise InvalidParameterError(f"{var}={value!r} is not a number of 0 or more; e.g. "
                                            f"{var}={THRESHOLDS[name]}") from None
    return out


# the timing keys whose spread decides the verdict: the whole generation and its repeated unit of work (a token
# model's generator steps mix prefill and decode calls, which differ by design: only its e2e is judged)
JUDGED_KEYS = ("e2e", "denoiser_step", "generator_step")

# NVML clock-event (throttle) reasons that slow the SM below what the workload asks for; the software power cap
# is left out (a GPU-bound kernel at full load sits on it by design)
_SLOWDOWNS = {0x8: "hardware slowdown", 0x20: "software thermal slowdown", 0x40: "hardware thermal slowdown",
              0x80: "hardware power brake"}
_TOP = 5  # busy processes recorded per window


def spread(values: list[float]) -> float | None:
    """Robust spread of ``values``: 1.4826 x median absolute deviation / median (the standard deviation's
    estimate for normal samples, which outliers do not move); None for fewer than two or a zero median."""
    n = len(values)
    if n < 2:
        return None
    ordered = sorted(values)
    med = _median(ordered)
    if med <= 0:
        return None
    return 1.4826 * _median(sorted(abs(v - med) for v in values)) / med


def _median(ordered: list[float]) -> float:
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def cv(values: list[float]) -> float | None:
    """Coefficient of variation of ``values`` (None for fewer than two or a zero mean)."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    if mean <= 0:
        return None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return var ** 0.5 / mean


def _cores() -> float:
    """CPU cores this process may run on (its affinity): the CPUs whose /proc/stat ticks are compared."""
    try:
        return float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return float(os.cpu_count() or 1)


# a container's CPU quota and the time it throttled its processes: (quota file, period file or None, stat file,
# the stat's throttled key, its unit in µs); cgroup v2, then v1
_CGROUPS = (("/sys/fs/cgroup/cpu.max", None, "/sys/fs/cgroup/cpu.stat", "throttled_usec", 1.0),
            ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us",
             "/sys/fs/cgroup/cpu/cpu.stat", "throttled_time", 1e-3))


def _quota() -> tuple[float | None, float | None]:
    """(the cgroup's CPU quota in cores or None, its throttled time so far in µs or None)."""
    for quota_file, period_file, stat_file, key, to_us in _CGROUPS:
        try:
            fields = Path(quota_file).read_text().split()
        except OSError:
            continue
        try:
            period = float(Path(period_file).read_text()) if period_file else float(fields[1])
            cores = None if fields[0] in ("max", "-1") else float(fields[0]) / period
            stat = dict(line.split() for line in Path(stat_file).read_text().splitlines() if line.strip())
            return cores, float(stat[key]) * to_us if key in stat else None
        except (OSError, ValueError, IndexError):
            return None, None
    return None, None


def _cpu_times() -> dict[int, tuple[int, str]] | None:
    """CPU ticks (user + system) and command name of every process, from /proc; None where there is no /proc."""
    root = Path("/proc")
    if not (root / "self" / "stat").exists():
        return None
    out: dict[int, tuple[int, str]] = {}
    for entry in os.scandir(root):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                raw = f.read().decode(errors="replace")
        except OSError:  # the process ended meanwhile
            continue
        name = raw[raw.find("(") + 1:raw.rfind(")")]
        fields = raw[raw.rfind(")") + 2:].split()
        try:
            out[int(entry.name)] = (int(fields[11]) + int(fields[12]), name)  # utime, stime
        except (IndexError, ValueError):
            continue
    return out


def _allowed_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _cpu_stat(cpus: set[int] | None) -> tuple[int, int] | None:
    """(busy ticks, steal ticks) of the CPUs this process may run on, from /proc/stat: busy is every tick not idle
    nor waiting on I/O, whoever spent it (processes that ended meanwhile, the kernel, the hypervisor's steal)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = steal = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or (cpus is not None and int(name[3:]) not in cpus):
            continue
        f = [int(x) for x in rest.split()]
        # user nice system idle iowait irq softirq steal (guest time is inside user)
        busy += f[0] + f[1] + f[2] + f[5] + f[6] + f[7]
        steal += f[7]
    return busy, steal


def _own_ticks() -> int | None:
    try:
        raw = Path("/proc/self/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def _governors() -> list[str]:
    found = set()
    for p in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_governor"):
        try:
            found.add(p.read_text().strip())
        except OSError:
            pass
    return sorted(found)


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


class _Nvml:
    """The GPU's side through NVML (``pynvml``, from ``nvidia-ml-py``); every call may fail on some drivers."""

    def __init__(self, device: Any) -> None:
        import pynvml  # the caller catches ImportError

        self.nv = pynvml
        pynvml.nvmlInit()
        self.handle = None
        try:
            import torch

            uuid = str(getattr(torch.cuda.get_device_properties(device), "uuid", "") or "")
            if uuid:
                self.handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        except Exception:  # noqa: BLE001 (an old torch without uuid, an NVML without the call)
            self.handle = None
        if self.handle is None:
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(getattr(device, "index", None) or 0)

    def _try(self, fn: str, *args: Any) -> Any:
        try:
            return getattr(self.nv, fn)(self.handle, *args)
        except Exception:  # noqa: BLE001
            return None

    def sample(self) -> dict[str, Any]:
        nv = self.nv
        reasons = self._try("nvmlDeviceGetCurrentClocksEventReasons")
        if reasons is None:
            reasons = self._try("nvmlDeviceGetCurrentClocksThrottleReasons")
        procs = self._try("nvmlDeviceGetComputeRunningProcesses") or []
        return {"sm_clock_mhz": self._try("nvmlDeviceGetClockInfo", nv.NVML_CLOCK_SM),
                "sm_clock_max_mhz": self._try("nvmlDeviceGetMaxClockInfo", nv.NVML_CLOCK_SM),
                "slowdowns": [name for bit, name in _SLOWDOWNS.items() if reasons is not None and reasons & bit],
                "temperature_c": self._try("nvmlDeviceGetTemperature", nv.NVML_TEMPERATURE_GPU),
                "processes": [{"pid": int(p.pid), "memory_mb": round((p.usedGpuMemory or 0) / 2**20)} for p in procs],
                "timestamp_us": int(time.time() * 1e6)}

    def busy_pids(self, since_us: int) -> dict[int, int] | None:
        """SM utilisation (%) per process since ``since_us``, or None where the driver does not say."""
        try:
            samples = self.nv.nvmlDeviceGetProcessUtilization(self.handle, since_us)
        except Exception as e:  # noqa: BLE001
            # "not found": no process used the SM since then; anything else: this driver does not say
            return {} if "NotFound" in type(e).__name__ else None
        out: dict[int, int] = {}
        for s in samples:
            out[int(s.pid)] = max(out.get(int(s.pid), 0), int(s.smUtil))
        return out


@dataclass
class _Start:
    wall: float
    epoch: float
    throttled_us: float | None
    cpu: dict[int, tuple[int, str]] | None
    stat: tuple[int, int] | None
    own: int | None
    loadavg: list[float] | None
    gpu: dict[str, Any] | None


@dataclass
class HostProbe:
    """Measures the load on the host (and the GPU) over a window: ``start()`` before a pass, ``stop()`` after.

    Args:
        device: the run's torch device (NVML is asked about its GPU).
        needed_cores: cores the run itself keeps busy (its intra-op threads on the CPU, the launching thread on
            CUDA): other processes may use the rest without competing with it.
    """

    device: Any
    needed_cores: float
    _start: _Start | None = None
    _nvml: Any = field(default=None, repr=False)
    _no_nvml: str | None = None  # why a CUDA run's GPU side goes unchecked

    def __post_init__(self) -> None:
        if getattr(self.device, "type", "cpu") == "cuda":
            try:
                self._nvml = _Nvml(self.device)
            except ImportError:
                self._no_nvml = "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
            except Exception as e:  # noqa: BLE001 (no driver library, an NVML error)
                self._no_nvml = f"NVML failed: {type(e).__name__}: {e}"

    def start(self) -> None:
        cpus = _allowed_cpus()
        self._start = _Start(time.monotonic(), time.time(), _quota()[1], _cpu_times(), _cpu_stat(cpus), _own_ticks(),
                             _loadavg(),
                             self._nvml.sample() if self._nvml is not None else None)

    def stop(self) -> dict[str, Any]:
        """The window's load: seconds, other processes' CPU in cores (and the busiest), load average at start and
        end, governor, and the GPU's clocks, slowdowns and other processes."""
        if self._start is None:
            raise RuntimeError("HostProbe.stop() before start()")
        s, self._start = self._start, None
        seconds = max(time.monotonic() - s.wall, 1e-9)
        end_stat, end_own = _cpu_stat(_allowed_cpus()), _own_ticks()
        quota, throttled = _quota()
        end_cpu = _cpu_times()
        out: dict[str, Any] = {"start_epoch": round(s.epoch, 3), "end_epoch": round(time.time(), 3),
                               "seconds": round(seconds, 3), "cores": round(_cores(), 2),
                               "needed_cores": self.needed_cores, "quota_cores": quota, "loadavg_start": s.loadavg,
                               "loadavg_end": _loadavg(), "governor": _governors() or None}
        if throttled is not None and s.throttled_us is not None:
            out["throttled_ms"] = round((throttled - s.throttled_us) / 1e3, 3)
        tick = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
        if None not in (s.stat, end_stat, s.own, end_own):
            # what this process's cores did for anyone else: every busy tick there but this process's own
            other = (end_stat[0] - s.stat[0]) - (end_own - s.own)
            out["other_cpu_cores"] = round(max(other, 0) / tick / seconds, 3)
            out["steal_cores"] = round((end_stat[1] - s.stat[1]) / tick / seconds, 3)
        if s.cpu is not None and end_cpu is not None:  # who they were (those still alive at the end)
            me = os.getpid()
            busy = []
            for pid, (ticks, name) in end_cpu.items():
                if pid == me:
                    continue
                used = (ticks - s.cpu.get(pid, (0, name))[0]) / tick / seconds
                if used > 0:
                    busy.append({"pid": pid, "name": name, "cores": round(used, 3)})
            busy.sort(key=lambda b: -b["cores"])
            out.setdefault("other_cpu_cores", round(sum(b["cores"] for b in busy), 3))
            out["busy_processes"] = busy[:_TOP]
        if self._no_nvml is not None:
            out["gpu_unchecked"] = self._no_nvml
        if self._nvml is not None and s.gpu is not None:
            end = self._nvml.sample()
            me = os.getpid()
            busy_sm = self._nvml.busy_pids(s.gpu["timestamp_us"])
            # every process seen on the GPU: at either end, or using its SMs in between (one that came and went)
            pids = ({p["pid"] for p in end["processes"]} | {p["pid"] for p in s.gpu["processes"]}
                    | set(busy_sm or {}))
            visible = me in pids or not pids
            others = sorted(p for p in pids if p != me)
            gpu = {"sm_clock_mhz": [s.gpu["sm_clock_mhz"], end["sm_clock_mhz"]],
                   "sm_clock_max_mhz": end["sm_clock_max_mhz"], "temperature_c": end["temperature_c"],
                   "slowdowns": sorted(set(s.gpu["slowdowns"]) | set(end["slowdowns"])),
                   "other_processes": others, "pids_visible": visible}
            if busy_sm is not None:
                gpu["other_processes_sm_pct"] = {str(p): busy_sm.get(p, 0) for p in others}
            out["gpu"] = gpu
        return out


def verdict(timings: Mapping[str, Mapping[str, Any]], windows: Mapping[str, Mapping[str, Any] | None],
            on_gpu: bool, limits: Mapping[str, float] | None = None) -> dict[str, Any]:
    """``{"noisy": bool, "reasons": [...], "thresholds": ...}`` for a run's timings and the load of its passes.

    Args:
        timings: ``meta["timings"]`` (``median_ms``, ``min_ms``, ``max_ms``, ``n``, ``cv``, ``spread`` per key).
        windows: `HostProbe.stop` results by pass name: ``timed`` (the latencies) and ``profiles`` (the kernel
            and op times the breakdown comes from); None for a pass not probed.
        on_gpu: a CUDA run: competition for the CPU during its profiles stretches host gaps, not the kernel
            times the breakdown holds, so only the GPU side of that window is judged.
        limits: the thresholds: `thresholds()` (the default) or a caller's own.
    """
    limits = thresholds() if limits is None else limits
    reasons: list[str] = []
    for key in JUDGED_KEYS:
        t = timings.get(key) or {}
        if key == "generator_step" and "generator_decode" in timings:
            continue  # prefill and decode calls differ by design
        c, n = t.get("spread"), int(t.get("spread_n") or t.get("n") or 0)
        if c is not None and n >= limits["min_samples"] and c > limits["spread"]:
            reasons.append(f"{key} spread {c:.1%} over {n} timed samples (robust spread, threshold "
                           f"{limits['spread']:.0%}; min {t['min_ms']:.3g}, median {t['median_ms']:.3g}, max "
                           f"{t['max_ms']:.3g} ms)")
    for name, w in windows.items():
        if not w:
            continue
        other = w.get("other_cpu_cores")
        free = max(w["cores"] - w["needed_cores"], 0.0)
        judge_cpu = name == "timed" or not on_gpu
        quota = w.get("quota_cores")
        if quota is not None and quota < w["cores"]:
            # a container with a CPU quota: its cores are shared with tenants it cannot see, so other processes'
            # ticks say nothing; the quota's own throttling is what slows it
            throttled = w.get("throttled_ms") or 0.0
            if judge_cpu and throttled > 0.01 * w["seconds"] * 1e3:
                reasons.append(f"the container's CPU quota ({quota:g} cores) throttled it {throttled:.0f} ms of the "
                               f"{w['seconds'] * 1e3:.0f} ms {name} pass")
        elif judge_cpu and other is not None and other > free + limits["spare_cores"]:
            top = [f"{b['name']} (pid {b['pid']}) {b['cores']:.2f}" for b in w.get("busy_processes", [])[:3]]
            if (w.get("steal_cores") or 0) >= 0.05:
                top.append(f"the hypervisor's steal {w['steal_cores']:.2f}")
            reasons.append(f"other processes used {other:.2f} of {w['cores']:g} CPU cores during the {name} pass, "
                           f"which needs {w['needed_cores']:g}" + (f" ({', '.join(top)})" if top else ""))
        gpu = w.get("gpu") or {}
        if gpu.get("other_processes"):
            busy = gpu.get("other_processes_sm_pct")
            active = [p for p in gpu["other_processes"] if busy is None or busy.get(str(p), 0) > 0]
            if not gpu.get("pids_visible", True):
                # a container sees the host's pids, this process among them under another number: only a
                # second process using the SMs is someone else
                active = active if busy is not None and len(active) > 1 else []
            if active:
                reasons.append(f"other processes on the GPU during the {name} pass: pids {', '.join(map(str, active))}")
        if gpu.get("slowdowns"):
            reasons.append(f"GPU clocks slowed during the {name} pass: {', '.join(gpu['slowdowns'])} (SM "
                           f"{gpu['sm_clock_mhz']} of {gpu.get('sm_clock_max_mhz')} MHz)")
    return {"noisy": bool(reasons), "reasons": reasons, "thresholds": dict(limits)}
