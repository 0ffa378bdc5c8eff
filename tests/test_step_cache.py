"""Step caching (`mmchar.step_cache`, ``--cache``): diffusers' cache hooks installed on the denoiser, First Block
Cache driven by an assumed schedule on random weights, what each step computed counted below the hooks, the model
left as it was after, and the refusals (a UNet, a method that hooks nothing, an unscheduled data-dependent method)
as one-line errors."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from mmchar.analysis.tables import backend_label
from mmchar.api import run_config_hash
from mmchar.cli import main
from mmchar.errors import InvalidParameterError, UnknownNameError
from mmchar.runner import ProfileOptions
from mmchar.step_cache import StepCache, parse_schedule, skip_evenly
from mmchar.store import load_runs
from mmchar.workloads import get_workload

QUICK = ["--device", "cpu", "--repeat", "1", "--profile-steps", "1", "--no-trace"]


def cli(args: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def test_a_share_skips_evenly_after_the_first_step_and_a_pattern_is_taken_as_written():
    assert skip_evenly(0.5, 8) == [True, False, True, False, True, False, True, False]
    assert skip_evenly(0.0, 5) == [True] * 5
    assert skip_evenly(0.99, 3) == [True, False, False]  # never the first step
    flags = skip_evenly(0.3, 50)
    assert flags[0] and flags.count(False) == 15
    assert parse_schedule("ccsscs", 6) == [True, True, False, False, True, False]
    assert parse_schedule("0.25", 8).count(False) == 2
    for bad, why in (("scc", "first step must be computed"), ("1.5", r"in \[0, 1\)"), ("often", "share of steps"),
                     ("ccs", "has 3 steps")):
        with pytest.raises(InvalidParameterError, match=why):
            parse_schedule(bad, 4)


def test_refusals_are_one_line_and_name_the_choices():
    with pytest.raises(UnknownNameError, match="first-block, none, pab, taylorseer"):
        ProfileOptions(cache="deepcache")
    with pytest.raises(InvalidParameterError, match="name one with --cache"):
        ProfileOptions(cache_schedule="0.3")
    with pytest.raises(InvalidParameterError, match="takes no --cache-schedule"):
        ProfileOptions(cache="pab", cache_schedule="0.3")
    for flag, kw in (("--cuda-graphs", {"cuda_graphs": True}), ("--compile", {"compile": True})):
        with pytest.raises(InvalidParameterError, match=f"--cache and {flag} do not combine"):
            ProfileOptions(cache="pab", **kw)
    # random weights and a data-dependent method: refused before any model is built
    code, out, err = cli(["profile", "wan2.1-1.3b", *QUICK, "--cache", "first-block", "--store", "/nonexistent/x"])
    assert code != 0 and "Traceback" not in err and "give --cache-schedule" in err and len(err.strip().splitlines()) == 1


def test_a_cache_is_other_work_in_the_hash_and_the_label():
    cfg = get_workload("wan2.1-1.3b").resolve("tiny", device="cpu", steps=4)
    plain = run_config_hash(cfg, ProfileOptions())
    cached = run_config_hash(cfg, ProfileOptions(cache="first-block", cache_schedule="0.5"))
    assert plain != cached != run_config_hash(cfg, ProfileOptions(cache="first-block", cache_schedule="0.25"))
    assert backend_label({"backend": "sdpa", "options": {"cache": "pab"}}) == "sdpa+cache-pab"
    assert backend_label({"backend": "sdpa", "options": {"cache": "none"}}) == "sdpa"


def test_first_block_cache_follows_the_assumed_schedule_end_to_end(tmp_path, monkeypatch):
    """The planned pattern is what ran: skipped steps ran the first block only (counted below the hooks), and the
    run says the schedule was assumed; the validator's step for a cache (the mean) is in the timings. Its steps'
    spread is not judged by the noise guard (computed and skipped steps differ by design: every cached run was
    flagged noisy), its generation's is."""
    monkeypatch.setenv("MMCHAR_NOISE_SPREAD", "0")  # every spread judged is too much
    code, out, err = cli(["profile", "wan2.1-1.3b", *QUICK, "--steps", "6", "--cache", "first-block",
                          "--cache-schedule", "ccscss", "--store", tmp_path])
    assert code == 0, err
    (run,) = load_runs([tmp_path])
    sc = run.meta["step_cache"]
    assert sc["planned"] == sc["pattern"] == "ccscss" and sc["schedule_assumed"] and sc["schedule"].startswith("assumed")
    assert sc["steps"] == {"computed": 3, "skipped": 3, "partial": 0}
    calls_per_step = 2  # Wan runs the conditional and unconditional passes apart
    assert sc["calls"] == {"computed": 3 * calls_per_step, "skipped": 3 * calls_per_step, "partial": 0}
    blocks = get_workload("wan2.1-1.3b").preset_config("tiny")["models"]["transformer"]["num_layers"]
    assert sc["blocks_run_share"] == pytest.approx((3 * blocks + 3 * 1) / (6 * blocks))
    assert run.meta["options"]["cache"] == "first-block" and run.meta["options"]["cache_schedule"] == "ccscss"
    assert run.meta["timings"]["denoiser_step"]["n"] == 6 and "mean_ms" in run.meta["timings"]["denoiser_step"]
    assert run.meta["timings"]["denoiser_step"]["spread_n"] == 5  # the generation's first step left out
    assert run.meta["step_cache_support"] == "ok"
    assert not any("denoiser_step spread" in r for r in run.meta["noise"]["reasons"]), run.meta["noise"]


def test_the_model_is_left_as_it_was_and_what_cannot_cache_is_refused():
    w = get_workload("wan2.1-1.3b")
    target = w.build(w.resolve("tiny", device="cpu", steps=4))
    tr, scheduler = target.pipe.transformer, target.pipe.scheduler
    cache = StepCache(target, "pab", None, weights=False)
    with cache:
        assert "forward" in vars(tr.blocks[0]) and "step" in vars(scheduler)
        target.run(4)
    assert cache.describe()["pattern"] and not tr.is_cache_enabled
    assert "forward" not in vars(tr.blocks[0]) and "step" not in vars(scheduler) and "set_timesteps" not in vars(scheduler)
    assert not any(getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks for m in tr.modules())
    # diffusers' TaylorSeer patterns match no module of Wan's (attn1 / attn2): refused, and nothing stays installed
    with pytest.raises(InvalidParameterError, match="installed no hook on WanTransformer3DModel"):
        with StepCache(target, "taylorseer", None, weights=False):
            pass
    assert "forward" not in vars(tr.blocks[0]) and not tr.is_cache_enabled
    sd = get_workload("sd15")
    unet = sd.build(sd.resolve("tiny", device="cpu", steps=2))
    with pytest.raises(InvalidParameterError, match="UNet2DConditionModel"):
        StepCache(unet, "pab", None, weights=False)


@pytest.mark.parametrize("name,steps,schedule", [
    ("flux-dev", 4, "cscs"),  # a pipeline that hands its scheduler custom sigmas (diffusers reads the signature)
    ("wan2.2-t2v-a14b", 3, "ccs"),  # step 2 is the low-noise expert's first: nothing cached for it yet
])
def test_first_block_cache_on_sigma_pipelines_and_across_experts(name, steps, schedule):
    w = get_workload(name)
    target = w.build(w.resolve("tiny", device="cpu", steps=steps))
    cache = StepCache(target, "first-block", schedule, weights=False)
    for _ in range(2):  # the second generation starts from reset state, every expert's
        with cache:
            target.run(steps)
    d = cache.describe()
    assert len(d["pattern"]) == steps and d["steps"]["computed"] + d["steps"]["skipped"] == steps
    if name == "flux-dev":
        assert d["pattern"] == schedule
    else:  # the low-noise expert's first call computes whatever the schedule said: the run records it
        assert d["pattern"] == "ccc" and d["planned"] == "ccs"


def test_advise_offers_a_runnable_cache_only_where_the_run_could_take_it(tmp_path):
    """`mmchar advise` offers a DiT run's step caching as a runnable option (First Block Cache at the assumed share)
    where the run found diffusers' cache hooks usable; PixArt's transformer has none, so its row stays
    descriptive (and --validate lists it as not runnable); a UNet's likewise."""
    from mmchar.validate import NotRunnable, parse_option

    change = parse_option("--cache first-block --cache-schedule 0.3", "step-cache")
    assert change.fields == {"cache": "first-block", "cache_schedule": "0.3"}
    with pytest.raises(NotRunnable, match="DeepCache"):
        parse_option("cache 3 of 10 steps", "step-cache")
    code, out, err = cli(["profile", "wan2.1-1.3b", *QUICK, "--steps", "4", "--store", tmp_path / "s"])
    assert code == 0, err
    (run,) = [p for p in (tmp_path / "s").iterdir() if p.is_dir()]
    code, out, err = cli(["advise", run, "--format", "json"])
    rows = {r["kind"]: r for r in json.loads(out)}
    assert rows["step-cache"]["option"] == "--cache first-block --cache-schedule 0.3"
    code, out, err = cli(["profile", "pixart-sigma", *QUICK, "--steps", "4", "--store", tmp_path / "p"])
    assert code == 0, err
    (run,) = load_runs([tmp_path / "p"])
    assert "no diffusers cache hooks" in run.meta["step_cache_support"]
    code, out, err = cli(["advise", run.path, "--format", "json"])
    rows = {r["kind"]: r for r in json.loads(out)}
    assert rows["step-cache"]["option"] == "cache 1 of 4 steps"


@pytest.mark.gpu
def test_first_block_cache_runs_on_the_gpu(tmp_path):
    code, out, err = cli(["profile", "wan2.1-1.3b", "--device", "cuda", "--steps", "6", "--repeat", "2",
                          "--profile-steps", "1", "--no-trace", "--cache", "first-block", "--cache-schedule", "0.5",
                          "--store", tmp_path])
    assert code == 0, err
    (run,) = load_runs([tmp_path])
    sc = run.meta["step_cache"]
    assert sc["pattern"] == sc["planned"] == "cscscs" and sc["steps"]["skipped"] == 3
