"""Aggregation kernels; each declares what it supports (see :class:`Kernel`)."""

from .base import Kernel
from .coo import COOKernel
from .csr import CSRKernel
from .dense import DenseKernel
from .regular import RegularKernel

__all__ = ["COOKernel", "CSRKernel", "DenseKernel", "Kernel", "RegularKernel"]
