"""`RunOptions`: the options `profile`, `compare` and `sweep` share, and the one place they become what the
workload, the runner and the sweep planner take."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the runner imports torch; the CLI must import without it
    from mmchar.runner import ProfileOptions
    from mmchar.sweep import SweepSuite


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What a measuring command was told, read once from its parameters.

    Typer needs every option in each command's signature, so the three commands still list them; but every
    dict built from them is built here, so a new shared option is one field (and one parameter per command,
    which tests/cli/test_run_options.py checks) rather than three hand-kept copies that drift apart.
    """

    workload: str | None
    pipeline: Path | None = None  # profile and compare; a sweep's points are workloads
    preset: str
    weights: Path | None
    height: int | None
    width: int | None
    frames: int | None
    steps: int | None
    batch: int | None
    guidance: float | None
    seed: int | None
    prompt: str | None
    dtype: str | None
    device: str | None
    kv_cache: str | None
    fallback: str | None
    cross_backend: str | None
    scope: str
    linear_backend: str
    linear_scope: str
    repeat: int
    profile_steps: int | None
    no_trace: bool
    vae_tiling: bool
    vae_slicing: bool
    cpu_offload: bool
    compile: bool
    channels_last: bool
    cuda_graphs: bool
    cache: str
    cache_schedule: str | None
    store: Path

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> RunOptions:
        """The fields among a command's parameters (pass ``locals()`` first thing in the command); a field the
        command lacks fails here, at the first run of that command, not as a silently missing option."""
        return cls(**{f.name: params[f.name] for f in dataclasses.fields(cls) if f.name in params})

    def params(self) -> dict[str, Any]:
        """The generation parameters, ``None`` where the preset's default stands."""
        return dict(height=self.height, width=self.width, frames=self.frames, steps=self.steps, batch=self.batch,
                    guidance=self.guidance, seed=self.seed, prompt=self.prompt)

    def generation(self) -> dict[str, str]:
        """The generation settings chosen (``--kv-cache``), the preset's default where none was: a workload that has
        no such setting refuses one (`Workload.check_generation`); they are part of the resolved configuration."""
        return {k: v for k, v in dict(kv_cache=self.kv_cache).items() if v is not None}

    def memory(self) -> dict[str, bool]:
        """The diffusers memory options; they change the work, so they are part of the resolved configuration."""
        return dict(vae_tiling=self.vae_tiling, vae_slicing=self.vae_slicing, cpu_offload=self.cpu_offload)

    def profile_fields(self) -> dict[str, Any]:
        """`ProfileOptions` fields except the backend, which each run of compare and sweep sets on its own; an
        unset ``--profile-steps`` is left out so that ProfileOptions' default applies (and clipping stays quiet)."""
        steps = {} if self.profile_steps is None else {"profile_steps": self.profile_steps}
        return {"fallback": self.fallback, "cross_backend": self.cross_backend, "scope": self.scope,
                "linear_backend": self.linear_backend, "linear_scope": self.linear_scope, "repeat": self.repeat,
                "keep_trace": not self.no_trace, "compile": self.compile, "channels_last": self.channels_last,
                "cuda_graphs": self.cuda_graphs, "cache": self.cache, "cache_schedule": self.cache_schedule, **steps}

    def linear_backends(self) -> list[str]:
        """``--linear-backend``'s projection backends: several, comma-separated, for `compare` (the first is the
        baseline's); one for the other commands (`profile_options` refuses a list)."""
        return [name.strip() for name in self.linear_backend.split(",") if name.strip()] or [self.linear_backend]

    def profile_options(self, backend: str, sequence_parallel: int = 1, sp_scheme: str = "auto", *,
                        linear_backend: str | None = None, ulysses_degree: int | None = None,
                        cfg_parallel: bool = False) -> ProfileOptions:
        """How one run is measured (checked by ProfileOptions itself: a bad scope fails before anything loads);
        ``linear_backend``: one of `linear_backends` (compare's variants), else the one ``--linear-backend``."""
        from mmchar.runner import ProfileOptions

        fields = self.profile_fields()
        if linear_backend is not None:
            fields["linear_backend"] = linear_backend
        else:
            self._one_linear_backend()
        return ProfileOptions(backend=backend, **fields, sequence_parallel=sequence_parallel, sp_scheme=sp_scheme,
                              ulysses_degree=ulysses_degree, cfg_parallel=cfg_parallel)

    def _one_linear_backend(self) -> None:
        if len(self.linear_backends()) > 1:
            from mmchar.errors import InvalidParameterError

            raise InvalidParameterError(f"--linear-backend {self.linear_backend}: one projection backend per run "
                                        "here; `mmchar compare` takes several")

    def extra_backends(self) -> list[str]:
        """The backends a run may hand layers to besides the measured one: they too must run on the device."""
        return [b for b in (self.fallback, self.cross_backend) if b]

    def sweep_suite(self, vary: dict[str, list[Any]], backends: Sequence[str], *, retry_failed: bool = False,
                    retry_noisy: int = 0) -> SweepSuite:
        """Every point of a sweep over ``vary`` × ``backends`` for each workload the WORKLOAD argument names (one,
        ``sd15,amused`` or ``all``: `suite_names`), resolved and checked with the same options before one runs."""
        from mmchar import sweep as sw

        assert self.workload is not None, "a sweep names its workload (a required argument)"
        self._one_linear_backend()
        return sw.plan_suite(sw.suite_names(self.workload), vary, backends, self.store, preset=self.preset,
                             fixed=self.params(), options=self.profile_fields(), device=self.device,
                             dtype=self.dtype, weights=str(self.weights) if self.weights else None,
                             memory=self.memory(), generation=self.generation(), retry_failed=retry_failed,
                             retry_noisy=retry_noisy)
