"""Every registered workload: its tiny preset runs a 2-step generation end to end under `mmchar profile`, its
attention lands on the sites it declares, its weights round-trip through save_pretrained / --weights, its full
preset is the published model (every component's parameters, counted on the meta device, equal to its exact
published count), and the generation settings it has (``--kv-cache``) are declared with defaults while every
other workload refuses them."""

from __future__ import annotations

import json

import pytest

from mmchar.cli import main
from mmchar.sweep import plan as sweep_plan
from mmchar.workloads import get_workload, workload_names

NAMES = workload_names()
FAST = ["--steps", "2", "--repeat", "1", "--profile-steps", "1", "--no-trace"]


def _only_run(store):
    (run,) = [p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return json.loads((run / "meta.json").read_text())


@pytest.mark.parametrize("name", NAMES)
def test_tiny_preset_profiles_end_to_end(name, tmp_path, capsys):
    w = get_workload(name)
    code = main(["profile", name, *FAST, "--store", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    meta = _only_run(tmp_path)
    assert meta["status"] == "ok" and meta["workload"] == name and meta["config"]["params"]["steps"] == 2
    sites = set(meta["attention_layers"].values())
    assert sites and sites <= set(w.attention_sites), f"{name}: sites {sites} vs declared {w.attention_sites}"
    assert set(w.stages) | {"host"} <= set(meta["timings"]), f"{name}: stages {sorted(meta['timings'])}"
    step = "generator_step" if "generator" in w.stages else "denoiser_step"
    assert meta["timings"][step]["n"] == 2
    # routed mixture-of-experts FFNs (HiDream-I1's image stream: every dual- and single-stream block) and only there
    moe = meta.get("moe_layers")
    if name == "hidream-i1":
        model = meta["config"]["models"]["transformer"]
        assert moe["count"] == model["num_layers"] + model["num_single_layers"] and set(moe["stages"]) == {"denoiser"}
        assert moe["containers"] == {"denoiser": {"experts": "list"}} and moe["gates"] == ["gate"]
    else:
        assert moe is None, f"{name}: MoE layers found in a dense model: {moe}"
    # the configuration the run records is the one a sweep plans: building must not change it (a transformers
    # config filling a nested dict did, and the sweep took Qwen-Image's finished run for a missing one)
    planned = sweep_plan(name, {}, ["sdpa"], tmp_path / "plan", preset="tiny", fixed={"steps": 2})
    assert meta["config_hash"] == planned.points[0].config_hash, f"{name}: the build changed the run's config"


@pytest.mark.parametrize("name", NAMES)
def test_weights_round_trip(name, tmp_path, capsys):
    w = get_workload(name)
    pipe = w.build(w.resolve("tiny", device="cpu")).pipe
    if not hasattr(pipe, "save_pretrained"):  # a pipeline of our own (llamagen): --weights is refused in one line
        (tmp_path / "weights").mkdir()
        assert main(["profile", name, "--weights", str(tmp_path / "weights"), "--store", str(tmp_path / "s")]) == 1
        assert "diffusers" in capsys.readouterr().err and not (tmp_path / "s").exists()
        return
    pipe.save_pretrained(tmp_path / "weights")
    code = main(["profile", name, "--weights", str(tmp_path / "weights"), *FAST, "--store", str(tmp_path / "s")])
    assert code == 0, capsys.readouterr().err
    meta = _only_run(tmp_path / "s")
    assert meta["status"] == "ok" and meta["config"]["weights"] == str(tmp_path / "weights")


@pytest.mark.parametrize("name", NAMES)
def test_full_preset_is_the_published_model(name, tmp_path, monkeypatch):
    monkeypatch.setenv("MMCHAR_CACHE", str(tmp_path))
    w = get_workload(name)
    assert "full" in w.presets() and "tiny" in w.presets()
    full = w.preset_config("full")
    assert full["sources"] and set(full["models"]) <= set(full["sources"]) | {"scheduler"}
    counts = w.parameter_count("full")
    # the denoiser's headline size (model cards / papers) sits in the preset beside its sources: held to 2%
    published = full["published"]
    assert published["source"] and published["component"] in w.components
    assert counts[published["component"]] == pytest.approx(published["parameters"], rel=0.02)
    # and every component's exact count: an independent figure where one was found (confirmed), else the
    # configuration's own count, said to be so; a documented difference is the only way ours may differ
    exact = published["components"]
    assert set(exact) == set(w.components), f"{name}: exact counts of {sorted(exact)}, not of {sorted(w.components)}"
    for component, entry in exact.items():
        assert isinstance(entry["parameters"], int) and isinstance(entry["confirmed"], bool) and entry["source"]
        assert entry["confirmed"] or "own count, unconfirmed" in entry["source"], (name, component)
        differs = entry.get("ours_minus_published", 0)
        assert not differs or entry.get("why"), f"{name} {component}: a difference needs its reason ('why')"
        assert counts[component] == entry["parameters"] + differs, \
            f"{name} {component}: {counts[component]:,} parameters, published {entry['parameters']:,}"
    assert (tmp_path / "parameters.json").is_file()  # counted once, cached


@pytest.mark.parametrize("name", NAMES)
def test_generation_settings_have_defaults_or_are_refused(name, tmp_path, capsys):
    """A workload's generation settings (`Workload.generation_options`) have their default in every preset, so a
    run records which one ran; a workload without one refuses the flag in one line, before building anything."""
    from mmchar.workloads.base import GENERATION_OPTIONS

    w = get_workload(name)
    assert set(w.generation_options) <= set(GENERATION_OPTIONS)
    for key, choices in w.generation_options.items():
        for preset in w.presets():
            assert w.preset_config(preset)["generation"][key] in choices, (name, preset, key)
    if "kv_cache" not in w.generation_options:
        assert main(["profile", name, "--kv-cache", "static", "--store", str(tmp_path / "s")]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "has no KV cache" in err and "llamagen" in err, err
        assert not (tmp_path / "s").exists()


def test_memory_options_are_applied_recorded_and_checked(tmp_path, capsys):
    from mmchar import sweep as sw

    code = main(["profile", "sd15", "--vae-tiling", "--vae-slicing", *FAST, "--store", str(tmp_path / "s")])
    assert code == 0, capsys.readouterr().err
    meta = _only_run(tmp_path / "s")
    assert meta["status"] == "ok" and meta["config"]["memory"] == {"vae_tiling": True, "vae_slicing": True}
    w = get_workload("sd15")
    pipe = w.build(w.resolve("tiny", device="cpu", memory={"vae_tiling": True})).pipe
    assert pipe.vae.use_tiling and not pipe.vae.use_slicing
    assert "memory" not in w.resolve("tiny", device="cpu", memory={"vae_tiling": False})  # off: the hash is unchanged
    assert main(["profile", "sd15", "--cpu-offload", "--device", "cpu", "--store", str(tmp_path / "x")]) == 1
    assert "needs --device cuda" in capsys.readouterr().err and not (tmp_path / "x").exists()
    for name in ("llamagen", "phenaki-like"):  # no diffusers offload hooks: refused, not run on the CPU unsaid
        assert main(["profile", name, "--cpu-offload", "--device", "cpu", "--store", str(tmp_path / "x")]) == 1
        assert "not a diffusers pipeline with model offload" in capsys.readouterr().err
    plan = sw.plan("sd15", {"height": [64]}, ["math"], tmp_path / "p", memory={"vae_slicing": True, "vae_tiling": False})
    cmd = sw.child_command(plan, plan.points[0], tmp_path / "p")
    assert "--vae-slicing" in cmd and "--vae-tiling" not in cmd


def test_autoregressive_phases_are_timed_apart(tmp_path, capsys):
    code = main(["profile", "llamagen", "--steps", "4", "--repeat", "2", "--profile-steps", "2", "--no-trace",
                 "--store", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    meta = _only_run(tmp_path)
    t = meta["timings"]
    assert t["generator_prefill"]["n"] == 2 and t["generator_decode"]["n"] == 6  # 1 + 3 calls per generation
    assert t["generator_step"]["n"] == 8 and "denoiser_step" not in t
    assert meta["throughput"]["tokens_per_s"] == pytest.approx(1e3 / t["generator_decode"]["median_ms"])
    assert set(meta["attention_layers"].values()) == {"causal"}
    assert "tokens/s" in capsys.readouterr().out


def test_suite_summary_table(tmp_path, capsys):
    """benchmarks/summarize_workloads.py: one row per run, token models per token, failures with their status."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "summarize_workloads.py"
    spec = importlib.util.spec_from_file_location("summarize_workloads", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, size in (("sd15", "64"), ("llamagen", "64"), ("sd15", "48")):
        assert main(["profile", name, *FAST, "--height", size, "--store", str(tmp_path)]) == 0
    assert main(["profile", "sd15", "--height", "64", "--cpu-offload", "--store", str(tmp_path)]) == 1  # refused
    text = mod.summary([str(tmp_path)])
    rows = [line for line in text.splitlines() if line.startswith("| sd15") or line.startswith("| llamagen")]
    assert len(rows) == 3
    assert "/token" in rows[0] and "causal 100%" in rows[0]
    assert "spatial" in rows[1] and "cross" in rows[1]
    # the preset's own size bare; another one named beside it
    assert "| 64x64 |" in rows[1] and "| 48x64 (preset 64x64) |" in rows[2]
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1 and "other classes" in table[0]


@pytest.mark.parametrize("name", [n for n in NAMES if get_workload(n).temporal_factor > 1])
def test_time_compressing_vaes_take_kn_plus_one_frames(name):
    from mmchar.errors import InvalidParameterError

    w = get_workload(name)
    k = w.temporal_factor
    assert w.resolve("tiny", device="cpu", frames=2 * k + 1)["params"]["frames"] == 2 * k + 1
    with pytest.raises(InvalidParameterError, match=f"{k}n\\+1 frames"):
        w.resolve("tiny", device="cpu", frames=2 * k)


@pytest.mark.parametrize("name", ["llamagen", "phenaki-like"])
def test_guidance_off_runs_one_sequence(name, tmp_path, capsys):
    """guidance <= 1: no unconditional sequence beside the prompt's (the token pipelines batch it only when used)."""
    w = get_workload(name)
    target = w.build(w.resolve("tiny", device="cpu", guidance=1.0, steps=2))
    calls = []

    def rows(m, args, kwargs):  # the model's input: positional, or llamagen's caption states / token ids
        x = args[0] if args else next(kwargs[k] for k in ("caption_states", "input_ids", "inputs_embeds") if k in kwargs)
        calls.append(x.shape[0])

    hook = target.pipe.transformer.register_forward_pre_hook(rows, with_kwargs=True)
    try:
        target.run(2)
    finally:
        hook.remove()
    assert calls and set(calls) == {1}


def test_decode_steps_a_backend_cannot_take_go_to_the_fallback(tmp_path, capsys):
    """Causal WERSA has no KV-cache form. With a dynamic cache the prefill is a whole causal sequence, which it
    takes: without --fallback the run stops naming the decode call, with it the decode calls take the fallback and
    meta.json says so. With LlamaGen's static cache every call, the prefill too, attends over the whole cache under
    a mask, which WERSA cannot take at all: the layers go to the fallback from their first call."""
    args = ["profile", "llamagen", "--backend", "wersa", "--steps", "3", "--repeat", "1", "--no-trace"]
    dynamic = [*args, "--kv-cache", "dynamic"]
    assert main(dynamic + ["--store", str(tmp_path / "a")]) == 1
    assert "KV-cache decode step" in capsys.readouterr().err and _only_run(tmp_path / "a")["status"] == "error"
    assert main(dynamic + ["--fallback", "sdpa", "--store", str(tmp_path / "b")]) == 0
    meta = _only_run(tmp_path / "b")
    later = meta["backend_later_calls"]
    assert later and all(v.startswith("sdpa for calls wersa cannot take") for v in later.values())
    assert set(meta["backend_per_layer"].values()) == {"wersa"}
    assert main(args + ["--store", str(tmp_path / "c")]) == 1
    assert "attention mask not supported" in capsys.readouterr().err
    assert main(args + ["--fallback", "sdpa", "--store", str(tmp_path / "d")]) == 0
    meta = _only_run(tmp_path / "d")
    assert meta["config"]["generation"]["kv_cache"] == "static"
    assert set(meta["backend_per_layer"].values()) == {"sdpa"} and not meta.get("backend_later_calls")


def test_an_alias_names_the_same_workload():
    assert get_workload("sana").name == "sana-1.6b"
    assert "sana" not in NAMES  # listed once, by its own name
