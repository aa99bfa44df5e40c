"""Capability declarations shared by every aggregation kernel (xformers-style).

**Mixed precision.** Every kernel takes float16/bfloat16 inputs (plain, or produced by layers
under :func:`torch.autocast`) and returns y in the value's dtype, with the normalisation
(softmax maximum, exponentials, row sums, division) and the weighted sums accumulated in float32:
``dense`` through PyTorch's fused attention (float32 accumulation inside) and float32
concatenation sums, ``regular``/``coo`` by computing in float32 (:func:`autocast_off` inside,
so autocast does not round their intermediate products back), ``triton`` in float32 registers
(its concatenation halves a, b are still rounded to the input dtype before the launch);
``csr`` declines half precision (``backend="auto"`` then takes ``regular`` or ``coo``). Measured
errors: ``benchmarks/results/amp.md``.

**Determinism.** On CPU every kernel is bitwise repeatable, forward and backward
(``tests/ops/test_determinism.py``). On CUDA the scatters of ``regular``/``coo`` (``index_add``,
``index_select``'s backward) and ``dense``'s attention backward use atomics by default;
under ``torch.use_deterministic_algorithms(True)`` PyTorch swaps them for deterministic versions
or raises its usual ``RuntimeError`` where it has none (``dense`` concatenation: ``cumsum``), and
:attr:`Kernel.IS_DETERMINISTIC` says which kernels are repeatable then. A kernel that is not
(``csr``: cuSPARSE products, not covered by the flag) declines CUDA inputs in
:meth:`Kernel.not_supported_reasons` while the flag is set without ``warn_only``, so
``backend="auto"`` routes to the next kernel of the priority list and naming it raises
``ValueError`` with that reason (with ``warn_only=True`` it runs, as PyTorch's own ops do).
"""

from __future__ import annotations

import contextlib
from typing import ClassVar

import torch
from torch import Tensor

from ...attention import Attention
from ...pairwise import Pairwise
from .._segment import accumulation_dtype
from ..inputs import AggregateInputs

__all__ = ["Kernel", "autocast_off", "deterministic_flag_set", "wide_operands"]


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """A context that disables :func:`torch.autocast` for ``device``'s type (kernels that
    accumulate in float32 themselves use it so that autocast does not round their float32
    products back to half precision)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def wide_operands(pw: Pairwise, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """``pw.operands(q, k)``, with the concatenation halves :math:`a_i = u\\cdot q_i`,
    :math:`b_j = w\\cdot k_j` computed (and kept) in float32 when q/k are half precision.

    Their sum's sign decides the ReLU: rounded to bfloat16 (8 bits), :math:`a_i + b_j` flips sign
    on the edges near the kink, and each flip moves a whole term of the gradient. The other modes
    pass through unchanged (the kernels widen their own chunks).
    """
    if pw.mode != "concatenation" or accumulation_dtype(q.dtype) == q.dtype:
        return pw.operands(q, k)
    with autocast_off(q.device):
        return pw.operands(q.float(), k.float())


def deterministic_flag_set() -> bool:
    """Whether ``torch.use_deterministic_algorithms(True)`` is in effect without ``warn_only``
    (a global flag: no tensor is read)."""
    return bool(
        torch.are_deterministic_algorithms_enabled()
        and not torch.is_deterministic_algorithms_warn_only_enabled()
    )


class Kernel:
    """Base class of the aggregation kernels.

    A kernel declares what it supports as class attributes; :meth:`not_supported_reasons` turns
    them into short readable strings for a given input, and dispatch takes the first kernel with
    none. Kernels never validate user input (that happened in :class:`AggregateInputs`).
    """

    NAME: ClassVar[str] = ""
    SUPPORTED_GRAPHS: ClassVar[tuple[str, ...]] = ()
    SUPPORTED_MODES: ClassVar[tuple[str, ...]] = ()
    SUPPORTED_DEVICES: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    SUPPORTED_DTYPES: ClassVar[tuple[torch.dtype, ...]] = (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
    )
    SUPPORTS_RETURN_ATTENTION: ClassVar[bool] = False
    #: Takes ``edge_bias`` (an additive logit per edge, softmax modes).
    SUPPORTS_EDGE_BIAS: ClassVar[bool] = False
    #: Bitwise repeatable on every device in SUPPORTED_DEVICES under
    #: ``torch.use_deterministic_algorithms(True)``: on CPU always, on CUDA through PyTorch's
    #: deterministic scatters (or PyTorch raises its own error). False: some CUDA step is outside
    #: the flag's reach; the kernel then declines CUDA inputs while the flag is set (module
    #: docstring).
    IS_DETERMINISTIC: ClassVar[bool] = True
    REQUIRES: ClassVar[str | None] = None
    #: Tolerances of this kernel against the fp64 reference, per dtype.
    ATOL: ClassVar[dict[torch.dtype, float]] = {
        torch.float64: 1e-10,
        torch.float32: 1e-4,
        torch.bfloat16: 5e-2,
        torch.float16: 1e-2,
    }
    RTOL: ClassVar[dict[torch.dtype, float]] = {
        torch.float64: 1e-10,
        torch.float32: 1e-4,
        torch.bfloat16: 5e-2,
        torch.float16: 1e-2,
    }

    @classmethod
    def not_supported_reasons(cls, inp: AggregateInputs) -> list[str]:
        """Why this kernel cannot run ``inp`` (an empty list when it can)."""
        reasons = []
        if inp.graph_kind not in cls.SUPPORTED_GRAPHS:
            reasons.append(
                f"graph={inp.graph_kind!r} (supported: {', '.join(cls.SUPPORTED_GRAPHS)})"
            )
        if inp.pairwise.mode not in cls.SUPPORTED_MODES:
            reasons.append(
                f"mode={inp.pairwise.mode!r} (supported: {', '.join(cls.SUPPORTED_MODES)})"
            )
        if inp.query.device.type not in cls.SUPPORTED_DEVICES:
            reasons.append(
                f"device={inp.query.device.type} (supported: {', '.join(cls.SUPPORTED_DEVICES)})"
            )
        if inp.query.dtype not in cls.SUPPORTED_DTYPES:
            reasons.append(f"dtype={inp.query.dtype} (supported: {cls.SUPPORTED_DTYPES})")
        if inp.return_attention and not cls.SUPPORTS_RETURN_ATTENTION:
            reasons.append("return_attention=True is not supported")
        if inp.edge_bias is not None and not cls.SUPPORTS_EDGE_BIAS:
            reasons.append("edge_bias is not supported")
        if not cls.IS_DETERMINISTIC and inp.query.device.type != "cpu" and deterministic_flag_set():
            reasons.append(
                f"nondeterministic on {inp.query.device.type} while "
                "torch.use_deterministic_algorithms(True) is set"
            )
        return reasons

    @classmethod
    def supports(cls, inp: AggregateInputs) -> bool:
        """True when :meth:`not_supported_reasons` is empty."""
        return not cls.not_supported_reasons(inp)

    @classmethod
    def apply(cls, inp: AggregateInputs) -> tuple[Tensor, Attention | None]:
        """Run the aggregation: ``(y, attn)`` with y (B, N, Cv), attn only if asked for."""
        raise NotImplementedError
