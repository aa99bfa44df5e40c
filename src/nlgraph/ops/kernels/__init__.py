"""Aggregation kernels; each declares what it supports (see :class:`Kernel`)."""

from .base import Kernel
from .dense import DenseKernel

__all__ = ["DenseKernel", "Kernel"]
