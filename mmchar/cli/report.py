"""What `profile` and `compare` print about a run they wrote: its stage latencies and busy time, where its step's
kernel time went, its phases and throughput, and the noise guard's verdict on it."""

from __future__ import annotations

from typing import Any

from mmchar.cli.output import print_frame, say, warn
from mmchar.errors import MmcharError


class RunFailed(MmcharError):
    """A run that was measured and stored with a failed status: the command's one error line names it."""

    def __init__(self, run: Any) -> None:
        super().__init__(f"run {run.run_id} failed ({run.status}): {run.meta.get('error')}; stored in {run.path}")


def report_run(run: Any) -> None:
    """The summary of a run just written (nothing for a failed one: the error line at the CLI edge says it)."""
    from mmchar.analysis import stage_table
    from mmchar.analysis.summary import breakdown_lines, step_rows
    from mmchar.schema import step_key

    if run.status != "ok":
        return
    st = stage_table([run])
    cols = [c for c in ("stage", "median_ms", "min_ms", "max_ms", "busy_ms", "idle_ms", "busy_frac", "kernels")
            if c in st.columns]
    unit = "GPU" if run.meta.get("device", {}).get("type") == "cuda" else "CPU op"
    print_frame(st[cols], title=f"{run.run_id}: latency per stage (timed pass) and {unit} busy/idle (light profile)")
    name, _ = step_rows(run.breakdown)
    for line in breakdown_lines(run.breakdown):
        say(line)
    timings = run.meta.get("timings") or {}
    for phase in ("generator_prefill", "generator_decode"):
        if phase in timings:
            say(f"{phase.removeprefix('generator_')}: {timings[phase]['median_ms']:.2f} ms per call (median of "
                f"{timings[phase]['n']})")
    tp = run.meta.get("throughput")
    if tp:
        say(f"decode: {tp['tokens_per_s']:.1f} tokens/s per sequence, {tp['tokens_per_s_batch']:.1f} for the batch")
    den_busy = (run.meta.get("busy") or {}).get(step_key(timings)) or {}
    if run.meta.get("device", {}).get("type") == "cuda" and den_busy.get("busy_frac") is not None:
        frac = den_busy["busy_frac"]
        verdict = ("launch-bound: the host cannot feed the GPU, so faster kernels barely change the step latency"
                   if frac < 0.6 else "GPU-bound")
        say(f"{name} step: GPU busy {den_busy['busy_ms']:.2f} of {den_busy['wall_ms']:.2f} ms ({frac:.0%}): {verdict}")
    unmatched = run.meta.get("unmatched_kernels") or []
    if unmatched:
        total = run.kernels["dur_us"].sum() if len(run.kernels) else 0.0
        t = sum(u["time_us"] for u in unmatched)
        warn(f"{len(unmatched)} kernel names matched no taxonomy rule ({t / total:.1%} of kernel time, class 'other'); "
             f"listed in meta.json 'unmatched_kernels', e.g. {unmatched[0]['kernel'][:80]!r}" if total else "")
    so = run.meta.get("swap_overhead") or {}
    if so.get("pct_of_denoiser_step_estimate") is not None:
        say(f"attention swap overhead (estimate): {so['per_call_us_estimate']:.2f} µs per call, "
            f"{so['pct_of_denoiser_step_estimate']:.2f}% of a {name} step")
    report_noise(run)
    say(f"run folder: {run.path}")


def report_noise(run: Any, prefix: str = "", fmt: str = "table") -> None:
    """The noise guard's verdict: a warning with every reason when flagged, one quiet line when clean (on stderr
    where stdout carries ``fmt`` csv or json)."""
    noise = run.meta.get("noise") or {}
    if noise.get("noisy"):
        warn(f"{prefix}NOISY measurement, do not trust its latencies: " + "; ".join(noise.get("reasons") or [])
             + " (re-run on a quiet machine; `mmchar sweep --retry-noisy N` re-measures such points)")
    elif noise:
        t = (run.meta.get("timings") or {}).get("e2e") or {}
        timed = (noise.get("windows") or {}).get("timed") or {}
        load = timed.get("other_cpu_cores")
        spread = f"e2e spread {t['spread']:.1%}" if t.get("spread") is not None else "one timed generation"
        other = f", other processes {load:.2f} CPU cores" if load is not None else ""
        gpu = ", no other process on the GPU" if timed.get("gpu") else ""
        say(f"{prefix}noise guard: clean ({spread}{other}{gpu})", fmt)
    unchecked = ((noise.get("windows") or {}).get("timed") or {}).get("gpu_unchecked")
    if unchecked:
        warn(f"{prefix}the noise guard did not check the GPU (other processes, clocks): {unchecked}")
