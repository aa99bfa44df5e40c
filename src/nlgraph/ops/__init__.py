"""Aggregation over edge sets: one entry point, dispatched to declared kernels."""

from .aggregate import nonlocal_aggregate
from .dispatch import KERNELS, select_kernel
from .inputs import AggregateInputs
from .kernels.base import Kernel
from .kernels.dense import DenseKernel

__all__ = [
    "KERNELS",
    "AggregateInputs",
    "DenseKernel",
    "Kernel",
    "nonlocal_aggregate",
    "select_kernel",
]
