"""MemoryFormer's Memory Layer (hashed table lookups replacing a linear layer): Triton kernel + references."""

from mmchar.kernels.memory_layer.reference import (TAU, TEMPERATURE, memory_block_norm,
                                                   memory_layer_cost, memory_layer_eager, memory_layer_embedding_bag,
                                                   memory_layer_ref)

__all__ = ["TAU", "TEMPERATURE", "memory_block_norm", "memory_layer", "memory_layer_cost",
           "memory_layer_eager", "memory_layer_embedding_bag", "memory_layer_ref"]


def __getattr__(name: str):
    if name == "memory_layer":  # imports triton: only when asked for
        from mmchar.kernels.memory_layer.kernel import memory_layer

        return memory_layer
    raise AttributeError(name)
