"""Runtime modes of a run beside ``--compile``: ``--channels-last`` (the conv-holding components and the latents in
channels-last memory format) and ``--cuda-graphs`` (the generating model's forward captured once and replayed).

Both change the work a run measures, as ``--compile`` does: they are `ProfileOptions` fields, part of the config
hash and of `analysis.tables.work_fields`, and each writes what it did into ``meta.json`` (``channels_last``,
``cuda_graphs``): which components it converted or captured and which it could not, so a run never claims a mode it
did not get. What `mmchar advise` projects (layout transforms gone, launch gaps gone) these runs measure.

``--cuda-graphs`` alone captures the eager forward (whatever attention and projection backends route it) with
``torch.cuda.CUDAGraph``, one graph per argument signature, in the warm-up; with ``--compile`` it is
``torch.compile(mode="reduce-overhead")`` (Inductor's CUDA graph trees), the compile mechanism's own way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from mmchar.errors import InvalidParameterError, MmcharError, first_line
from mmchar.schema import STEP_STAGES
from mmchar.target import Target

# the pipeline methods that make the initial latents (IF makes "intermediate images"); their output is converted
LATENT_MAKERS = ("prepare_latents", "prepare_intermediate_images")

_CONV2D = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
_CONV3D = (torch.nn.Conv3d, torch.nn.ConvTranspose3d)


class CudaGraphsUnsupportedError(MmcharError):
    """The generating model's forward cannot be captured into a CUDA graph, or not replayed from one."""


def check_modes(cuda_graphs: bool, device: torch.device, memory: dict[str, Any] | None = None) -> None:
    """The refusals that need the device and the memory options, before a model is built (the device-free ones
    are `ProfileOptions`'): a CUDA graph holds CUDA kernels, and replays its weights where they were captured.

    Raises:
        InvalidParameterError: ``--cuda-graphs`` off CUDA, or with ``--cpu-offload``.
    """
    if not cuda_graphs:
        return
    if device.type != "cuda":
        raise InvalidParameterError(f"--cuda-graphs captures the denoiser's / generator's CUDA kernels and replays "
                                    f"them; device {device} launches none: drop --cuda-graphs, or run on --device cuda")
    if (memory or {}).get("cpu_offload"):
        raise InvalidParameterError("--cuda-graphs and --cpu-offload do not combine: offload moves each model's "
                                    "weights at every call, which a captured graph cannot replay; drop one of them")


# ---------------------------------------------------------------------------------------------------- channels-last

def memory_format_of(x: torch.Tensor) -> str:
    """How a 4-D or 5-D tensor is laid out: ``channels_last`` / ``channels_last_3d``, ``contiguous`` (NCHW), ``both``
    (a degenerate shape, C = 1 or H = W = 1, is both) or ``strided`` (neither)."""
    last = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    cl, nc = x.is_contiguous(memory_format=last), x.is_contiguous()
    if cl and nc:
        return "both"
    if not cl and not nc and x.dim() == 5 and x.transpose(1, 2).is_contiguous(memory_format=torch.channels_last_3d):
        return "frames-first, channels innermost"  # [B, F, C, H, W] whose frames are each channels-last
    return ("channels_last" if x.dim() == 4 else "channels_last_3d") if cl else "contiguous" if nc else "strided"


# denoisers whose 5-D latents are frames-first, [B, F, C, H, W] (the others' are [B, C, F, H, W]): where the
# frames and the channels are equal in number the shape alone cannot tell
FRAMES_FIRST = ("UNetSpatioTemporalConditionModel", "CogVideoXTransformer3DModel")


def channels_innermost(x: torch.Tensor, channels: set[int], frames_first: bool | None = None
                       ) -> tuple[torch.Tensor, str]:
    """``x`` (latents) laid out with its channels innermost, and what was done, in words.

    4-D: ``channels_last``. 5-D: ``channels_last_3d`` where dim 1 holds the channels (UNet3D, Wan: [B, C, F, H, W]);
    where dim 2 does (SVD, CogVideoX: [B, F, C, H, W]; ``frames_first``: known to), channels innermost under the
    same shape, so each frame is channels-last and the pipeline's permute to [B, C, F, H, W] for the VAE is
    ``channels_last_3d`` (``channels_last_3d`` itself would put the frames innermost). ``channels``: the counts the
    channel dim may hold (the VAE's latent channels, the denoiser's input channels). Otherwise unchanged, and said.
    """
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last), "4-D latents made channels_last"
    if frames_first is not True and x.shape[1] in channels:
        return x.contiguous(memory_format=torch.channels_last_3d), "5-D latents [B, C, F, H, W] made channels_last_3d"
    if frames_first is not False and x.shape[2] in channels:
        out = x.transpose(1, 2).contiguous(memory_format=torch.channels_last_3d).transpose(1, 2)
        return out, "5-D frames-first latents [B, F, C, H, W] made channels innermost (each frame channels_last)"
    return x, (f"not applied: latents of shape {tuple(x.shape)} hold none of the channel counts {sorted(channels)} "
               "where a memory format puts channels")


def _components(target: Target) -> dict[str, torch.nn.Module]:
    """The pipeline's model components that delimit stages (text encoders, the denoiser, the VAE ...), once each."""
    out: dict[str, torch.nn.Module] = {}
    for root in target.stage_roots:
        comp = getattr(target.pipe, root.component, None)
        if isinstance(comp, torch.nn.Module) and root.component not in out:
            out[root.component] = comp
    return out


def to_channels_last(target: Target) -> dict[str, Any]:
    """Convert every conv of the pipeline's components to channels-last, and its initial latents with them.

    2-D convs (4-D weights) take ``torch.channels_last``, 3-D convs (5-D weights: video VAEs, temporal convs,
    Wan's patch embedding) ``torch.channels_last_3d``, conv by conv: ``Module.to(memory_format=channels_last)``
    refuses a model holding 5-D weights, and cuDNN picks the NHWC kernels from the weight's format. The latents the
    pipeline makes (`LATENT_MAKERS`) are converted as made, 4-D to ``channels_last``, 5-D to ``channels_last_3d``
    (a UNet3D's reshape of NCDHW-in-NDHWC latents to frames is then a channels-last view), so the steps' arithmetic
    keeps the format; packed token latents (3-D) stay as they are. Idempotent (compare converts once per variant).

    Returns:
        What ``meta.json`` records as ``channels_last`` (the ``inputs`` key is filled in by the warm-up).
    """
    components: dict[str, Any] = {}
    for name, comp in _components(target).items():
        n2 = n3 = 0
        for module in comp.modules():
            if isinstance(module, _CONV2D) and module.weight.dim() == 4:
                module.to(memory_format=torch.channels_last)
                n2 += 1
            elif isinstance(module, _CONV3D) and module.weight.dim() == 5:
                module.to(memory_format=torch.channels_last_3d)
                n3 += 1
        formats = [f for f, n in (("channels_last", n2), ("channels_last_3d", n3)) if n]
        components[name] = {"conv2d": n2, "conv3d": n3, "formats": formats}
    record: dict[str, Any] = {
        "components": components,
        "converted": [n for n, c in components.items() if c["formats"]],
        # a pure transformer (or a text encoder) has no conv to convert: said, not failed
        "no_conv": [n for n, c in components.items() if not c["formats"]],
        "latents": _latents_channels_last(target.pipe, *_latent_layout(target)),
    }
    return record


def _latent_layout(target: Target) -> tuple[set[int], bool | None]:
    """The channel counts the latents' channel dim may hold (the VAE's ``latent_channels``, the denoiser's
    ``in_channels``), and whether the denoiser takes frames-first 5-D latents (`FRAMES_FIRST`; None: unknown)."""
    channels: set[int] = set()
    frames_first: bool | None = None
    for root in target.stage_roots:
        comp = getattr(target.pipe, root.component, None)
        config = getattr(comp, "config", None)
        for key in ("in_channels", "latent_channels") if root.stage in STEP_STAGES else ("latent_channels",):
            value = getattr(config, key, None) if config is not None else None
            if isinstance(value, int):
                channels.add(value)
        if root.stage in STEP_STAGES and type(comp).__name__ in FRAMES_FIRST:
            frames_first = True
    return channels, frames_first


def _latents_channels_last(pipe: Any, channels: set[int], frames_first: bool | None) -> str:
    """Wrap the pipeline's latent maker (an instance attribute) to return channels-last latents; the sentence
    recorded until the first call says what the wrapper will do (`LatentFormat.describe` replaces it)."""
    for name in LATENT_MAKERS:
        method = getattr(pipe, name, None)
        if callable(method):
            if not isinstance(method, _ChannelsLastLatents):
                setattr(pipe, name, _ChannelsLastLatents(method, name, channels, frames_first))
            return f"converted as {name} makes them (4-D: channels_last, 5-D: channels innermost)"
    return ("not applied: the pipeline has no " + " or ".join(LATENT_MAKERS) +
            " (its latents or tokens are made inside its own call)")


class _ChannelsLastLatents:
    """A pipeline's latent maker whose 4-D / 5-D output comes back channels-last (a tuple's first item)."""

    def __init__(self, method: Callable[..., Any], name: str, channels: set[int], frames_first: bool | None) -> None:
        self.method, self.name, self.channels, self.frames_first = method, name, channels, frames_first
        self.seen: str | None = None  # what the first call made, for the record

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.method(*args, **kwargs)
        first = out[0] if isinstance(out, tuple) and out else out
        if isinstance(first, torch.Tensor) and first.dim() in (4, 5):
            converted, what = channels_innermost(first, self.channels, self.frames_first)
            out = (converted, *out[1:]) if isinstance(out, tuple) else converted
            self.seen = f"{what} ({self.name})"
        elif self.seen is None:
            shape = tuple(first.shape) if isinstance(first, torch.Tensor) else type(first).__name__
            self.seen = f"not applied: {self.name} makes {shape} (no 4-D or 5-D latents to lay out)"
        return out


def latents_record(pipe: Any) -> str | None:
    """What the pipeline's latent maker did on its first call (None if it was never called or never wrapped)."""
    for name in LATENT_MAKERS:
        method = getattr(pipe, name, None)
        if isinstance(method, _ChannelsLastLatents):
            return method.seen
    return None


@contextlib.contextmanager
def input_formats(target: Target, components: list[str]) -> Iterator[dict[str, str]]:
    """The layout of the first 4-D / 5-D tensor each of ``components``' stage methods is called with, over the
    block: whether the converted denoiser and VAE really see channels-last inputs (the record says what ran, not
    what was asked). Each method is shadowed by an instance attribute for the block only."""
    seen: dict[str, str] = {}
    restore: list[tuple[Any, str, Any]] = []  # (module, method, its instance attribute before, or None)
    for root in target.stage_roots:
        if root.component not in components or root.component in seen or any(
                r[0] is getattr(target.pipe, root.component) for r in restore):
            continue
        module = getattr(target.pipe, root.component)
        original = getattr(module, root.method)

        def recorder(*args: Any, _orig: Callable[..., Any] = original, _name: str = root.component,
                     **kwargs: Any) -> Any:
            if _name not in seen:
                leaves, _ = tree_flatten((args, kwargs))
                first = next((x for x in leaves if isinstance(x, torch.Tensor) and x.dim() in (4, 5)), None)
                seen[_name] = memory_format_of(first) if first is not None else "no 4-D or 5-D input"
            return _orig(*args, **kwargs)

        restore.append((module, root.method, vars(module).get(root.method)))
        setattr(module, root.method, recorder)
    try:
        yield seen
    finally:
        for module, method, previous in reversed(restore):
            if previous is None:
                delattr(module, method)
            else:
                setattr(module, method, previous)


# ------------------------------------------------------------------------------------------------------ CUDA graphs

# eager calls of one argument signature before it is captured: lazy initialisations (cuBLAS workspaces, a
# backend's per-layer state, autotuned kernels) happen there, on the capture stream, not inside the capture
EAGER_CALLS_BEFORE_CAPTURE = 1
# distinct argument signatures one forward may be captured for (a token model's prefill and decode are two); more
# means its shapes or Python arguments change from call to call, which a replayed graph cannot follow
MAX_GRAPHS = 4


# argument values a graph may be captured for besides tensors: plain values that are the same at every replay. An
# object beyond these (a KV cache, a state holder) may carry state its forward reads or advances in Python, which a
# replay would not: its graph could replay stale positions silently, so such a forward is refused
PLAIN = (type(None), bool, int, float, str, torch.dtype, torch.device)


def _signature(leaves: list[Any]) -> tuple:
    """What a captured graph is valid for: every tensor's shape, stride, dtype and device, every other value."""
    return tuple(("tensor", tuple(x.shape), x.stride(), x.dtype, x.device) if isinstance(x, torch.Tensor)
                 else ("value", repr(x)) for x in leaves)


class _Graph:
    def __init__(self) -> None:
        self.eager_calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_in: list[torch.Tensor | None] = []
        self.out_leaves: list[Any] = []
        self.out_spec: Any = None


class GraphedForward:
    """A generating model's forward captured into CUDA graphs, one per argument signature, and replayed.

    The first call of a signature runs eagerly on the capture stream; the next captures the forward on static
    copies of its inputs and replays it; later calls copy their tensors into those inputs, replay, and return
    copies of the outputs (a graph's outputs are overwritten by its next replay; a pipeline may hold one past it).
    After `freeze` (the end of the warm-up) a new signature is refused rather than captured inside a timed pass.
    """

    def __init__(self, component: str, fn: Callable[..., Any], device: torch.device, *,
                 graph_factory: Callable[[], Any] | None = None, max_graphs: int = MAX_GRAPHS) -> None:
        self.component, self.fn, self.device, self.max_graphs = component, fn, device, max_graphs
        self._new_graph = graph_factory or torch.cuda.CUDAGraph
        self.graphs: dict[tuple, _Graph] = {}
        self.frozen = False
        self.replays = 0
        self._stream: Any = None

    @property
    def captured(self) -> int:
        return sum(g.graph is not None for g in self.graphs.values())

    def freeze(self) -> None:
        """No capture from here on (the timed and profiled passes replay what the warm-up captured)."""
        self.frozen = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        leaves, spec = tree_flatten((args, kwargs))
        stateful = next((x for x in leaves if not isinstance(x, (torch.Tensor, *PLAIN))), None)
        if stateful is not None:
            raise CudaGraphsUnsupportedError(
                f"--cuda-graphs: {self.component}'s forward takes a {type(stateful).__name__}, state kept in Python "
                "(a KV cache, say) that a replayed graph would not advance; drop --cuda-graphs for this model")
        key = (repr(spec), _signature(leaves))
        entry = self.graphs.get(key)
        if entry is None:
            self._admit(key)
            entry = self.graphs[key] = _Graph()
        if entry.graph is None:
            if self.frozen:
                raise CudaGraphsUnsupportedError(
                    f"--cuda-graphs: {self.component}'s forward met an argument signature after the warm-up that it "
                    "was not captured for (its shapes or arguments change between generations); drop --cuda-graphs")
            if entry.eager_calls < EAGER_CALLS_BEFORE_CAPTURE:
                entry.eager_calls += 1
                with self._on_capture_stream():
                    return self.fn(*args, **kwargs)
            self._capture(entry, leaves, spec)
        for static, x in zip(entry.static_in, leaves):
            if static is not None:
                static.copy_(x)
        entry.graph.replay()
        self.replays += 1
        return tree_unflatten([o.clone() if isinstance(o, torch.Tensor) else o for o in entry.out_leaves],
                              entry.out_spec)

    def _admit(self, key: tuple) -> None:
        if len(self.graphs) < self.max_graphs:
            return
        known = [k[1] for k in self.graphs]
        differ = sorted({i for k in known for i, (a, b) in enumerate(zip(k, key[1])) if a != b})
        raise CudaGraphsUnsupportedError(
            f"--cuda-graphs: {self.component}'s forward was called with more than {self.max_graphs} argument "
            f"signatures (arguments {differ[:6]} change between calls: growing shapes or Python values, e.g. a KV "
            "cache or a position), and a captured graph replays one; drop --cuda-graphs for this model")

    @contextlib.contextmanager
    def _on_capture_stream(self) -> Iterator[None]:
        if self.device.type != "cuda":
            yield
            return
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=self.device)
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            yield
        torch.cuda.current_stream(self.device).wait_stream(self._stream)

    def _capture(self, entry: _Graph, leaves: list[Any], spec: Any) -> None:
        static = [x.clone() if isinstance(x, torch.Tensor) else x for x in leaves]
        entry.static_in = [s if isinstance(s, torch.Tensor) else None for s in static]
        args, kwargs = tree_unflatten(static, spec)
        graph = self._new_graph()
        try:
            if isinstance(graph, torch.cuda.CUDAGraph):
                if self._stream is None:
                    self._stream = torch.cuda.Stream(device=self.device)
                # on the stream the eager calls warmed up; only this thread's calls may break the capture (the noise
                # guard's probe or a profiler thread may touch the device meanwhile)
                with torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
                    out = self.fn(*args, **kwargs)
            else:  # a test's stand-in: records the call
                out = graph.capture(self.fn, args, kwargs)
        except (MmcharError, torch.OutOfMemoryError):  # out of memory is the run's result (status oom), not a refusal
            raise
        except Exception as e:  # noqa: BLE001 (what capture refuses is the model's; said in one line)
            raise CudaGraphsUnsupportedError(
                f"--cuda-graphs: {self.component}'s forward cannot be captured into a CUDA graph ({type(e).__name__}: "
                f"{first_line(e)[:200]}): it synchronises with the host or allocates outside the graph; drop "
                "--cuda-graphs for this model") from e
        entry.out_leaves, entry.out_spec = tree_flatten(out)
        entry.graph = graph


class StepGraphs:
    """One session's CUDA graphs of the generating models (the stage roots of STEP_STAGES), installed as their
    forward (an instance attribute) while the context is open and removed on leaving, so the sessions of a compare
    each replay the graphs captured under their own backends."""

    # what makes a graph (None: torch.cuda.CUDAGraph); a test sets a stand-in that runs the plumbing on the CPU
    graph_factory: Callable[[], Any] | None = None

    def __init__(self, target: Target) -> None:
        self.target = target
        self.graphed: dict[str, GraphedForward] = {}
        self._modules: dict[str, tuple[Any, str]] = {}
        for root in target.stage_roots:
            if root.stage not in STEP_STAGES or root.component in self.graphed:
                continue
            module = getattr(target.pipe, root.component)
            self._modules[root.component] = (module, root.method)
            self.graphed[root.component] = GraphedForward(root.component, getattr(module, root.method), target.device,
                                                          graph_factory=self.graph_factory)
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> StepGraphs:
        for name, (module, method) in self._modules.items():
            self._saved.append((module, method, vars(module).get(method)))
            setattr(module, method, self.graphed[name])
        return self

    def __exit__(self, *exc: Any) -> None:
        for module, method, previous in reversed(self._saved):
            if previous is None:
                delattr(module, method)
            else:
                setattr(module, method, previous)
        self._saved.clear()

    def freeze(self) -> None:
        for g in self.graphed.values():
            g.freeze()

    def describe(self) -> dict[str, Any]:
        """What ``meta.json`` records as ``cuda_graphs`` (graphs captured per component)."""
        return {"components": list(self.graphed), "mechanism": "torch.cuda.CUDAGraph",
                "graphs": {n: g.captured for n, g in self.graphed.items()},
                "capture": "in the warm-up, per argument signature: one eager call on the capture stream, then a "
                           "capture; later calls copy their input tensors into the graph's, replay it and copy its "
                           "outputs out (one device copy per tensor)",
                "attribution": ATTRIBUTION}


ATTRIBUTION = ("partial: kernels replayed from a graph are classed by name rules, with no module path or attention "
               "site; latency, busy/idle and kernel counts are complete")


def compiled_graphs_record(components: list[str]) -> dict[str, Any]:
    """``cuda_graphs`` of a run under ``--compile --cuda-graphs``: Inductor's CUDA graph trees did the capture."""
    return {"components": components, "mechanism": 'torch.compile(mode="reduce-overhead")',
            "graphs": None, "capture": "by torch.compile's CUDA graph trees in the warm-up (compiled, then recorded); "
                                       "the timed pass replays", "attribution": ATTRIBUTION}
