"""Local Linear Attention forward (Zuo et al. 2025, arXiv 2510.01450): plain PyTorch references and eager form,
and a FlashLLA-style Triton kernel with a matrix-free conjugate-gradient solve (docs/kernels/lla.md)."""

from mmchar.kernels.lla.reference import (DEFAULT_CG_ITERS, DEFAULT_RIDGE_LAMBDA, lla_cg_ref, lla_eager, lla_flops,
                                          lla_ref)

__all__ = ["DEFAULT_CG_ITERS", "DEFAULT_RIDGE_LAMBDA", "lla", "lla_cg_ref", "lla_eager", "lla_flops", "lla_ref"]


def __getattr__(name: str):
    if name == "lla":  # imports triton: only when asked for
        from mmchar.kernels.lla.kernel import lla

        return lla
    raise AttributeError(name)
