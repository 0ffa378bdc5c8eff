"""Attention kernels: Triton implementations and their plain PyTorch references.

Installed as ``mmchar.kernels``; keep this file free of heavy imports and of ``__version__`` (a top-level
``kernels`` package would collide with Hugging Face's, which transformers probes for).
"""
