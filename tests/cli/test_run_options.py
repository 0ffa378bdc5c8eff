"""`profile`, `compare` and `sweep` share their options through `RunOptions`: each of its fields is a parameter of
every one of them, declared by the same alias with the same default, and no option the commands share is left out
of it, so the three cannot drift apart again."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from pathlib import Path

import pytest

from mmchar.cli import app
from mmchar.cli.run_options import RunOptions

MEASURING = ("profile", "compare", "sweep")
ONLY_PROFILE_AND_COMPARE = {"pipeline"}  # a sweep's points are workloads
OWN_OPTIONS = {"backends", "fmt"}  # shared by compare and sweep, but each says its own help and default
FIELDS = [f.name for f in dataclasses.fields(RunOptions)]


def command(name: str):
    importlib.import_module("mmchar.cli.commands")
    found = [c.callback for c in app.registered_commands if (c.name or c.callback.__name__) == name]
    assert len(found) == 1, name
    return found[0]


def parameters(name: str) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(command(name)).parameters)


def declared(name: str) -> dict[str, typing.Any]:
    return typing.get_type_hints(command(name), include_extras=True)


@pytest.mark.parametrize("name", MEASURING)
def test_every_field_is_an_option_of_each_measuring_command(name):
    missing = set(FIELDS) - set(parameters(name)) - (ONLY_PROFILE_AND_COMPARE if name == "sweep" else set())
    assert not missing, f"{name} lacks the shared options {sorted(missing)}"


@pytest.mark.parametrize("field", [f for f in FIELDS if f != "workload"])  # sweep's workload is required
def test_a_shared_option_is_declared_alike_everywhere(field):
    takers = [n for n in MEASURING if field in parameters(n)]
    hints = {n: declared(n)[field] for n in takers}
    defaults = {n: parameters(n)[field].default for n in takers}
    assert all(h == hints[takers[0]] for h in hints.values()), f"--{field} is declared differently: {hints}"
    assert len(set(map(repr, defaults.values()))) == 1, f"--{field} has different defaults: {defaults}"


def test_no_option_shared_by_two_measuring_commands_is_left_out_of_run_options():
    names = [set(parameters(n)) for n in MEASURING]
    shared = {p for i, a in enumerate(names) for b in names[i + 1:] for p in a & b}
    assert shared - OWN_OPTIONS <= set(FIELDS), sorted(shared - OWN_OPTIONS - set(FIELDS))


def test_run_options_from_each_commands_defaults():
    for name in MEASURING:
        values = {p: v.default for p, v in parameters(name).items()}
        values["workload"] = "sd15"
        opts = RunOptions.from_params(values)
        assert opts.store == Path("runs") and opts.preset == "tiny" and opts.pipeline is None
        assert opts.params() == dict.fromkeys(("height", "width", "frames", "steps", "batch", "guidance", "seed",
                                               "prompt"))
        assert opts.memory() == {"vae_tiling": False, "vae_slicing": False, "cpu_offload": False}
        # an unset --profile-steps is left to ProfileOptions' default
        assert opts.profile_fields() == {"fallback": None, "cross_backend": None, "scope": "denoiser",
                                         "linear_backend": "dense", "linear_scope": "all", "repeat": 3,
                                         "keep_trace": True, "compile": False, "channels_last": False,
                                         "cuda_graphs": False, "cache": "none", "cache_schedule": None}


def test_profile_fields_carry_what_was_typed():
    values = {p: v.default for p, v in parameters("profile").items()}
    values.update(workload="sd15", profile_steps=1, no_trace=True, fallback="math", repeat=1, linear_scope="ffn")
    opts = RunOptions.from_params(values)
    assert opts.profile_fields() == {"fallback": "math", "cross_backend": None, "scope": "denoiser",
                                     "linear_backend": "dense", "linear_scope": "ffn", "repeat": 1,
                                     "keep_trace": False, "compile": False, "channels_last": False,
                                     "cuda_graphs": False, "cache": "none", "cache_schedule": None, "profile_steps": 1}
    assert opts.extra_backends() == ["math"]


def test_a_command_without_a_shared_option_fails_at_once():
    values = {p: v.default for p, v in parameters("profile").items()}
    del values["repeat"]
    with pytest.raises(TypeError, match="repeat"):
        RunOptions.from_params(values)
