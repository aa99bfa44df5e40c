"""Capability declarations shared by every aggregation kernel (xformers-style)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ...attention import Attention
from ..inputs import AggregateInputs

__all__ = ["Kernel"]


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
        return reasons

    @classmethod
    def supports(cls, inp: AggregateInputs) -> bool:
        """True when :meth:`not_supported_reasons` is empty."""
        return not cls.not_supported_reasons(inp)

    @classmethod
    def apply(cls, inp: AggregateInputs) -> tuple[Tensor, Attention | None]:
        """Run the aggregation: ``(y, attn)`` with y (B, N, Cv), attn only if asked for."""
        raise NotImplementedError
