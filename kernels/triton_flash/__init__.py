"""Softmax attention forward in Triton (online softmax, fp32 accumulation)."""

from mmchar.kernels.triton_flash.reference import triton_flash_ref

__all__ = ["triton_flash", "triton_flash_ref"]


def __getattr__(name: str):
    if name == "triton_flash":  # imports triton: only when asked for
        from mmchar.kernels.triton_flash.kernel import triton_flash

        return triton_flash
    raise AttributeError(name)
