"""A denoiser of two experts (Wan 2.2 T2V-A14B: ``transformer`` for the high-noise steps, ``transformer_2`` after
the timestep boundary) is one denoiser stage whose steps are numbered per stage (`StageTimer`): whichever expert
runs step i, its calls are step i's, and the run records which expert ran each step (meta.json
``step_components``)."""

from __future__ import annotations

import types

import diffusers
import torch
from torch import nn

from mmchar.analysis import step_structure_table
from mmchar.api import run_config_hash
from mmchar.instrument import StageTimer
from mmchar.runner import ProfileOptions, _step_components_record, run_and_store
from mmchar.target import StageRoot, Target
from mmchar.workloads import get_workload

STEPS = 3


def _experts_by_step(cfg: dict) -> list[str]:
    """The expert WanPipeline picks at each step: ``transformer`` while t >= boundary_ratio * num_train_timesteps."""
    sched = dict(cfg["models"]["scheduler"])
    scheduler = getattr(diffusers, sched.pop("_class_name")).from_config(sched)
    scheduler.set_timesteps(STEPS)
    boundary = cfg["generation"]["boundary_ratio"] * scheduler.config.num_train_timesteps
    return ["transformer" if t >= boundary else "transformer_2" for t in scheduler.timesteps.tolist()]


def test_both_experts_number_their_steps_in_one_sequence(tmp_path):
    w = get_workload("wan2.2-t2v-a14b")
    cfg = w.resolve("tiny", device="cpu", steps=STEPS, height=32, width=32, frames=1)
    expected = _experts_by_step(cfg)
    # the tiny preset's boundary (0.7; t = 999, 857, 600 at flow_shift 3.0): both experts run in 3 steps
    assert set(expected) == {"transformer", "transformer_2"}, expected
    opts = ProfileOptions(repeat=1, profile_steps=STEPS, keep_trace=False)
    run = run_and_store(w.build(cfg), opts, tmp_path, run_config_hash(cfg, opts))
    assert run.meta["status"] == "ok", run.meta.get("error")
    # one sample per step, not one per step of the expert that ran most
    assert run.meta["timings"]["denoiser_step"]["n"] == STEPS
    # Wan runs the conditional and unconditional passes as two calls per step, on the prompt batch each
    assert run.meta["guidance"]["mode"] == "two calls" and run.meta["guidance"]["denoiser_batch"] == 1
    experts = run.meta["step_components"]
    assert experts["per_step"] == expected
    assert experts["counts"] == {c: expected.count(c) for c in dict.fromkeys(expected)}
    assert sum(experts["counts"].values()) == STEPS
    # the profiled steps carry the same numbers: each expert's kernels lie in the steps it ran
    k = run.kernels
    den = k[k["stage"] == "denoiser"]
    for expert in ("transformer", "transformer_2"):
        steps = set(den[den["module_path"].astype(str).str.startswith(f"{expert}.")]["step"])
        assert steps == {i for i, e in enumerate(expected) if e == expert}, (expert, steps)
    assert run.meta["busy"]["denoiser_step"]["kernels"] > 0
    # and the call of its step each kernel ran in: the conditional pass (0), then the unconditional one (1)
    modelled = den[den["module_path"].astype(str) != ""]
    assert set(zip(modelled["step"], modelled["call"])) == {(s, c) for s in range(STEPS) for c in (0, 1)}
    assert (k.loc[k["stage"] != "denoiser", "call"] == -1).all()
    t = step_structure_table([run]).set_index("component")
    assert all(len(str(t.loc[e, "kernel_ms_per_call"]).split(" / ")) == 2 for e in ("transformer", "transformer_2"))


def _hand_target(roots: list[StageRoot], schedule: list[str]) -> Target:
    """A target whose generation calls the models named by ``schedule`` in turn (one entry per call)."""
    pipe = types.SimpleNamespace(a=nn.Linear(4, 4), b=nn.Linear(4, 4))

    def run(steps: int):
        x = torch.randn(2, 4)
        with torch.inference_mode():
            for name in schedule:
                x = getattr(pipe, name)(x)
        return x

    return Target(name="hand", pipe=pipe, run=run, stage_roots=roots, steps=len(schedule),
                  config={"workload": "hand", "params": {"seed": 0}}, device=torch.device("cpu"), dtype=torch.float32)


def _timed(target: Target) -> tuple[list[tuple[str, int]], object]:
    timer = StageTimer(target)
    with timer:
        target.run(target.steps)
    return [(c.component, c.step) for c in timer.calls], timer.resolve(1.0)


def test_calls_per_step_of_one_root_as_before():
    """One root of two calls per step (guidance run as two calls): calls 0, 1 are step 0, calls 2, 3 step 1 ..."""
    calls, timing = _timed(_hand_target([StageRoot("denoiser", "a", calls_per_step=2)], ["a"] * 6))
    assert [s for _, s in calls] == [0, 0, 1, 1, 2, 2]
    assert len(timing.step_ms) == 3 and timing.step_components == ["a"] * 3
    assert _step_components_record([timing]) is None  # one model: meta.json gets no step_components


def test_experts_share_one_step_count():
    """Two roots of the denoiser stage, two calls per step each, the second taking over after two steps."""
    roots = [StageRoot("denoiser", "a", calls_per_step=2), StageRoot("denoiser", "b", calls_per_step=2)]
    calls, timing = _timed(_hand_target(roots, ["a", "a", "a", "a", "b", "b", "b", "b", "b", "b"]))
    assert calls == [("a", 0), ("a", 0), ("a", 1), ("a", 1), ("b", 2), ("b", 2), ("b", 3), ("b", 3), ("b", 4), ("b", 4)]
    assert len(timing.step_ms) == 5 and timing.step_components == ["a", "a", "b", "b", "b"]
    assert _step_components_record([timing]) == {"counts": {"a": 2, "b": 3}, "per_step": ["a", "a", "b", "b", "b"]}


def test_one_denoiser_run_records_no_step_components(tmp_path):
    """A run whose steps one model ran keeps its meta.json as before: no ``step_components``."""
    target = _hand_target([StageRoot("denoiser", "a")], ["a"] * 3)
    run = run_and_store(target, ProfileOptions(repeat=1, profile_steps=1, keep_trace=False), tmp_path, "000000")
    assert run.meta["status"] == "ok", run.meta.get("error")
    assert run.meta["timings"]["denoiser_step"]["n"] == 3
    assert "step_components" not in run.meta
