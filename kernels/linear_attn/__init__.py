"""Linear attention (non-causal for diffusion models, causal chunkwise for token models), Triton + reference."""

from mmchar.kernels.linear_attn.reference import FEATURE_MAPS, linear_attn_ref

__all__ = ["FEATURE_MAPS", "linear_attn", "linear_attn_ref"]


def __getattr__(name: str):
    if name == "linear_attn":  # imports triton: only when asked for
        from mmchar.kernels.linear_attn.kernel import linear_attn

        return linear_attn
    raise AttributeError(name)
