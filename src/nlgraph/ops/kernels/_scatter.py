"""Segment reductions along dim 0 for the ``coo`` kernel: torch-scatter when installed.

``torch_scatter`` (``pip install nlgraph[scatter]``; it compiles from source) has fused CPU/CUDA
scatter kernels; without it the same reductions run on ``index_add``/``scatter_reduce``. Both
give the same numbers (sums in a possibly different order: equal to rounding). Set
:data:`BACKEND` to ``"torch"`` to force the plain-PyTorch path.

**Precision.** Half-precision (float16, bfloat16) sums accumulate in float32 and are rounded once
at the end: a bfloat16 ``index_add`` on CUDA rounds after every atomic addition (8 bits of
mantissa: a running sum stops growing once it is about 2^8 times larger than its terms).

**Determinism.** torch-scatter's CUDA kernels use atomics and ignore
:func:`torch.use_deterministic_algorithms`; while that flag is set, CUDA tensors take the
plain-PyTorch path, whose ``index_add`` PyTorch then runs deterministically. On CPU both paths
are bitwise repeatable.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

import torch
from torch import Tensor

__all__ = ["BACKEND", "backend", "segment_amax", "segment_sum"]

#: ``"auto"`` (torch-scatter when importable), ``"torch_scatter"`` or ``"torch"``.
BACKEND = "auto"

_module: ModuleType | None = None


def _torch_scatter() -> ModuleType | None:
    global _module
    if _module is None and importlib.util.find_spec("torch_scatter") is not None:
        try:
            _module = importlib.import_module("torch_scatter")
        except Exception:  # a broken build (e.g. compiled for another torch): plain torch
            return None
    return _module


def backend(device: torch.device | None = None) -> str:
    """``"torch_scatter"`` or ``"torch"``: what :func:`segment_sum` and :func:`segment_amax` use
    for tensors on ``device`` (``"torch"`` for CUDA tensors under
    :func:`torch.use_deterministic_algorithms`, see the module docstring)."""
    if BACKEND == "torch":
        return "torch"
    if (
        device is not None
        and device.type != "cpu"
        and torch.are_deterministic_algorithms_enabled()
        and BACKEND != "torch_scatter"
    ):
        return "torch"
    if _torch_scatter() is None:
        if BACKEND == "torch_scatter":
            raise ImportError("BACKEND='torch_scatter' but torch_scatter does not import")
        return "torch"
    return "torch_scatter"


def segment_sum(src: Tensor, index: Tensor, size: int) -> Tensor:
    """(size, *src.shape[1:]) sums of the rows of ``src`` grouped by ``index`` (differentiable),
    in ``src``'s dtype; half precision accumulates in float32 (module docstring)."""
    acc = torch.float32 if src.dtype in (torch.float16, torch.bfloat16) else src.dtype
    wide = src.to(acc)
    if backend(src.device) == "torch_scatter":
        out = _torch_scatter().scatter_add(wide, index, dim=0, dim_size=size)  # type: ignore[union-attr]
    else:
        out = wide.new_zeros(size, *src.shape[1:]).index_add(0, index, wide)
    return out.to(src.dtype)


def segment_amax(src: Tensor, index: Tensor, size: int) -> Tensor:
    """(size,) largest entry of the 1-D ``src`` per group (``-inf`` for an empty group)."""
    if backend(src.device) == "torch_scatter":
        out = src.new_full((size,), float("-inf"))
        return _torch_scatter().scatter_max(src, index, dim=0, out=out)[0]  # type: ignore[union-attr]
    out = torch.full((size,), float("-inf"), dtype=src.dtype, device=src.device)
    return out.scatter_reduce(0, index, src, "amax")
