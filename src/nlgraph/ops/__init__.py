"""Aggregation over edge sets: one entry point, dispatched to declared kernels."""

from .aggregate import nonlocal_aggregate
from .dispatch import KERNELS, select_kernel
from .inputs import AggregateInputs
from .kernels.base import Kernel
from .kernels.coo import COOKernel
from .kernels.csr import CSRKernel
from .kernels.dense import DenseKernel
from .kernels.regular import RegularKernel
from .kernels.triton_sparse import TritonKernel

__all__ = [
    "KERNELS",
    "AggregateInputs",
    "COOKernel",
    "CSRKernel",
    "DenseKernel",
    "Kernel",
    "RegularKernel",
    "TritonKernel",
    "nonlocal_aggregate",
    "select_kernel",
]
