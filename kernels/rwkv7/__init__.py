"""RWKV-7's generalized delta rule (vector-valued decay), forward: chunked Triton kernel + PyTorch references."""

from mmchar.kernels.rwkv7.reference import rwkv7_chunk_ref, rwkv7_eager, rwkv7_recurrent_ref

__all__ = ["rwkv7", "rwkv7_chunk_ref", "rwkv7_eager", "rwkv7_recurrent_ref"]


def __getattr__(name: str):
    if name == "rwkv7":  # imports triton: only when asked for
        from mmchar.kernels.rwkv7.kernel import rwkv7

        return rwkv7
    raise AttributeError(name)
