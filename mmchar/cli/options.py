"""The options of the commands as typer types, each declared once: a flag's name, help and default read the same
in every command that takes it (`profile`, `compare` and `sweep` share most; see `RunOptions`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

# reading and writing runs
Store = Annotated[Path, typer.Option("--store", help="Run store folder (created if missing).")]
Fmt = Annotated[str, typer.Option("--format", help="Output format: table, csv or json.")]
RunsArg = Annotated[list[Path], typer.Argument(help="Run stores or run folders, mixed.", show_default=False)]

# what is measured
Workload = Annotated[Optional[str], typer.Argument(help="Workload name (`mmchar workloads`).", show_default=False)]
Pipeline = Annotated[Optional[Path], typer.Option("--pipeline", help="A local diffusers pipeline folder to profile instead of a workload.")]
Preset = Annotated[str, typer.Option(help="Workload preset: tiny (CPU, seconds) or full (the published configuration).")]
Weights = Annotated[Optional[Path], typer.Option(help="Load real weights from a local diffusers pipeline folder.")]
Height = Annotated[Optional[int], typer.Option(help="Image height in pixels (default: the preset's).")]
Width = Annotated[Optional[int], typer.Option(help="Image width in pixels.")]
Frames = Annotated[Optional[int], typer.Option(help="Video frames (video workloads).")]
Steps = Annotated[Optional[int], typer.Option(help="Denoising steps of the timed pass.")]
Batch = Annotated[Optional[int], typer.Option(help="Prompts per generation.")]
Guidance = Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale (> 1 doubles the denoiser batch).")]
Seed = Annotated[Optional[int], typer.Option(help="Seed of weights and noise.")]
Prompt = Annotated[Optional[str], typer.Option(help="The prompt.")]
Dtype = Annotated[Optional[str], typer.Option(help="fp32, fp16 or bf16 (default: bf16 on CUDA, fp32 on the CPU).")]
Device = Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N (default: cuda when present).")]
KvCache = Annotated[Optional[str], typer.Option("--kv-cache", help="Token models with a KV cache (llamagen): static (default, as the model's authors run it: one cache preallocated for the prefix and every token, each call attends over all of it, masked) or dynamic (grows by one key per token). Recorded in the run's config; other workloads refuse it.", show_default=False)]

# how it is measured
Fallback = Annotated[Optional[str], typer.Option(help="Backend for attention layers the chosen backend cannot take.")]
CrossBackend = Annotated[Optional[str], typer.Option("--cross-backend", help="Softmax backend of cross attention under a backend that replaces self-attention's maths (linear, wersa, mlstm, rwkv7, lla; default: the best available).")]
Scope = Annotated[str, typer.Option(help="Whose attention the backend replaces: denoiser or all components.")]
LinearBackend = Annotated[str, typer.Option("--linear-backend", help="Projection backend of the denoiser's / generator's linear layers (`mmchar backends --kind projection`; dense: the model's own); compare takes several, comma-separated.")]
LinearScope = Annotated[str, typer.Option("--linear-scope", help="Which linear layers --linear-backend replaces: attn-proj (attention's q, k, v, out), ffn (feed-forward blocks) or all.")]
Repeat = Annotated[int, typer.Option(help="Timed generations (median, min and max are reported).")]
ProfileSteps = Annotated[Optional[int], typer.Option("--profile-steps", help="Denoising steps under the full profiler (default 2; every step of a shorter generation).", show_default=False)]
NoTrace = Annotated[bool, typer.Option("--no-trace", help="Do not keep the trace file in the run folder.")]
VaeTiling = Annotated[bool, typer.Option("--vae-tiling", help="Decode (and encode) with the VAE in tiles.")]
VaeSlicing = Annotated[bool, typer.Option("--vae-slicing", help="Decode the batch one latent at a time.")]
CpuOffload = Annotated[bool, typer.Option("--cpu-offload", help="Model CPU offload: each model on the GPU only while it runs.")]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the denoiser / generator (warm-up pays the compile; module attribution inside the graph is partial).")]
ChannelsLast = Annotated[bool, typer.Option("--channels-last", help="Convs of every component (UNet, VAE, ...) and the latents in channels-last memory format (channels_last_3d for 3-D convs and 5-D latents); the run records what was converted.")]
Cache = Annotated[str, typer.Option("--cache", help="A diffusers step-cache hook on the denoiser (DiTs): none, first-block (First Block Cache: needs --cache-schedule with random weights), pab (Pyramid Attention Broadcast) or taylorseer; the run records the steps computed, skipped or partial.")]
CacheSchedule = Annotated[Optional[str], typer.Option("--cache-schedule", help="Drives a data-dependent --cache (first-block) by an assumed schedule: the share of steps skipped (0.4) or a pattern of c (computed) and s (skipped) steps (ccscs...); recorded as assumed.", show_default=False)]
CudaGraphs = Annotated[bool, typer.Option("--cuda-graphs", help="Capture the denoiser's / generator's forward into CUDA graphs in the warm-up and replay them (CUDA only; with --compile: mode reduce-overhead).")]
