"""Where WERSA's time goes on the GPU: the whole backend call against its parts (gain generator, mixing rows,
the two fused passes), and the top kernels of one call. Prints a table; --out writes it as markdown, after every
row (a caller's time limit then cuts rows, not the table).

"rest" is a difference (the call less its separately timed parts), so a change to one fused pass is judged by
the last two columns instead: each pass's own GPU time per call from the profiler (L2 warm), which the host and
the other parts do not move.

The gain generator's depthwise conv is timed both ways in one run: cuDNN's channels-last conv (what the fused
path ran before, and what gains() still runs by default) and the Triton pass the fused path runs now
(`kernel.gain_conv`), alone and inside the gains; "rest" takes the fused path's gains as it runs now.

    python benchmarks/profile_wersa.py [--out FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from mmchar.backends import get_backend
from mmchar.kernels.tuning import kernel_times
from mmchar.kernels.wersa.kernel import gain_conv, mixing_rows
from mmchar.kernels.wersa.reference import merge_heads


def conv1d_gains(p, x):
    """The spec's literal form (transpose, pad, Conv1d), for comparison with gains()' channels-last conv."""
    u = F.pad(x.transpose(1, 2), (32, 0) if p.causal else (16, 16))
    u = p.conv(u).transpose(1, 2)
    return torch.sigmoid(p.fc2(F.relu(p.fc1(u)))) * p.s


def cudnn_conv(p, x, every):
    """The conv alone as gains() runs it by default: x as a channels-last [B, C, 1, n] image, cuDNN's NHWC
    depthwise kernel (the causal left padding a copy)."""
    if p.causal:
        x = F.pad(x, (0, 0, 32, 0))
    return F.conv2d(x.transpose(1, 2).unsqueeze(2), p.conv.weight.unsqueeze(2), p.conv.bias, stride=(1, every),
                    padding=(0, 0 if p.causal else 16), groups=x.shape[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    dev = torch.device("cuda")
    lines = ["| B, H, n, d | causal | backend call ms | eager ms | gains ms (channels-last) | gains ms (Conv1d) | "
             "gains ms (even tokens, cuDNN conv: the fused path before) | gains ms (even tokens, Triton conv: the "
             "fused path) | conv ms (cuDNN channels-last, even tokens) | conv ms (Triton) | Triton conv GB/s | "
             "mixing rows ms | rest (fused passes) ms | state pass µs | output pass µs |", "|" + "---|" * 15]
    for b, h, n, d, causal in [(16, 32, 1024, 64, False), (4, 16, 4096, 128, False), (1, 16, 16384, 128, False),
                               (1, 32, 65536, 64, False), (1, 16, 16384, 128, True)]:
        g = torch.Generator(device=dev).manual_seed(0)
        with torch.inference_mode():
            q, k, v = (torch.randn(b, h, n, d, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(3))
            be = get_backend("wersa")("profile.layer")
            be(q, k, v, causal=causal)
            p, x = be.params, merge_heads(q)
            t_call = do_bench(lambda: be(q, k, v, causal=causal), return_mode="median")
            t_eager = do_bench(lambda: be.eager()(q, k, v, causal=causal), return_mode="median")
            t_g = do_bench(lambda: p.gains(x), return_mode="median")
            t_g1 = do_bench(lambda: conv1d_gains(p, x), return_mode="median")
            every = p.gain_stride  # what wersa() asks for
            t_g2 = do_bench(lambda: p.gains(x, every), return_mode="median")
            t_g3 = do_bench(lambda: p.gains(x, every, fused=True), return_mode="median")
            t_c_old = do_bench(lambda: cudnn_conv(p, x, every), return_mode="median")
            pad = 32 if p.causal else 16
            t_c_new = do_bench(lambda: gain_conv(x, p.conv_taps(), p.conv.bias, every, pad), return_mode="median")
            moved = x.numel() * x.element_size() * (1 + 1 / every)  # x read once, the strided output written
            gq = p.gains(x, every, fused=True)
            t_mix = 0.0 if causal else do_bench(lambda: mixing_rows(gq, n, p.levels, every), return_mode="median")
            t_merge = do_bench(lambda: merge_heads(q), return_mode="median")
            passes = kernel_times(lambda: be(q, k, v, causal=causal), calls=5)  # 0.0: a pass not launched
        rest = t_call - 2 * (t_g3 + t_mix + t_merge)
        lines.append(f"| {b}, {h}, {n}, {d} | {causal} | {t_call:.3f} | {t_eager:.3f} | {t_g:.3f} | {t_g1:.3f} | "
                     f"{t_g2:.3f} | {t_g3:.3f} | {t_c_old:.3f} | {t_c_new:.3f} | {moved / t_c_new / 1e6:.0f} | "
                     f"{t_mix:.3f} | {rest:.3f} | {passes.get('_wersa_state_kernel', 0.0):.1f} | "
                     f"{passes.get('_wersa_out_kernel', 0.0):.1f} |")
        print(lines[-1], flush=True)
        if a.out:
            Path(a.out).write_text("\n".join(lines) + "\n")
        if (b, n) == (4, 4096):
            with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    be(q, k, v, causal=causal)
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12), flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
