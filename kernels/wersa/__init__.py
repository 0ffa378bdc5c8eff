"""WERSA (Wavelet-Enhanced Random Spectral Attention), per docs/kernels/wersa.md: PyTorch reference."""

from mmchar.kernels.wersa.reference import WersaParams, haar_filter, wersa_ref

__all__ = ["WersaParams", "haar_filter", "wersa_ref"]
