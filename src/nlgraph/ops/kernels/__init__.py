"""Aggregation kernels; each declares what it supports (see :class:`Kernel`)."""

from .base import Kernel
from .coo import COOKernel
from .csr import CSRKernel
from .dense import DenseKernel
from .regular import RegularKernel
from .triton_sparse import TritonKernel

__all__ = ["COOKernel", "CSRKernel", "DenseKernel", "Kernel", "RegularKernel", "TritonKernel"]
