"""The Python API on a pipeline object, and its option checks."""

from __future__ import annotations

import pytest

import mmchar
from mmchar.errors import InvalidParameterError, UnknownNameError


@pytest.fixture(scope="module")
def pipe():
    from mmchar.workloads import get_workload

    w = get_workload("sd15")
    return w.build(w.resolve("tiny", device="cpu")).pipe


def test_profile_returns_the_run_and_writes_it(pipe, tmp_path):
    run = mmchar.profile(pipe, prompt="a cat", num_inference_steps=2, store=tmp_path, repeat=1, height=64, width=64)
    assert run.status == "ok" and run.path.parent == tmp_path
    assert set(run.breakdown["stage"]) >= {"text_encoder", "denoiser", "decoder"}
    assert run.meta["config"]["params"]["height"] == 64 and run.meta["workload"] == "pipeline"
    again = mmchar.load_run(run.path)
    assert again.run_id == run.run_id and len(again.kernels) == len(run.kernels)


@pytest.mark.parametrize("kwargs,error", [({"repeat": 0}, InvalidParameterError),
                                          ({"profile_steps": 0}, InvalidParameterError),
                                          ({"scope": "everything"}, UnknownNameError),
                                          ({"num_inference_steps": 0}, InvalidParameterError)])
def test_bad_options_are_refused_before_running(pipe, tmp_path, kwargs, error):
    kw = dict(prompt="a cat", num_inference_steps=2, store=tmp_path)
    kw.update(kwargs)
    with pytest.raises(error):
        mmchar.profile(pipe, **kw)
    assert not any(tmp_path.iterdir())


def test_the_cross_backend_is_part_of_a_runs_identity():
    from mmchar.api import run_config_hash
    from mmchar.runner import ProfileOptions

    cfg = {"workload": "x"}
    a, b = (run_config_hash(cfg, ProfileOptions(backend="linear", cross_backend=c)) for c in ("math", "flash"))
    assert a != b
    assert run_config_hash(cfg, ProfileOptions(backend="linear")) == run_config_hash(cfg, ProfileOptions(backend="linear"))


def test_the_runtime_modes_through_the_api(tmp_path):
    """channels-last on the CPU, recorded as the CLI records it; CUDA graphs refused off CUDA in one line, nothing
    written (its own pipe: the conversion is in place)."""
    from mmchar.workloads import get_workload

    w = get_workload("sd15")
    own = w.build(w.resolve("tiny", device="cpu")).pipe
    run = mmchar.profile(own, prompt="a cat", num_inference_steps=2, store=tmp_path / "a", repeat=1, height=64,
                         width=64, channels_last=True)
    assert run.status == "ok" and run.meta["options"]["channels_last"] is True
    assert "unet" in run.meta["channels_last"]["converted"]
    with pytest.raises(InvalidParameterError, match="--cuda-graphs"):
        mmchar.profile(own, prompt="a cat", num_inference_steps=2, store=tmp_path / "b", repeat=1, cuda_graphs=True)
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())
