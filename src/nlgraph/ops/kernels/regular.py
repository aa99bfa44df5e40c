r"""The ``regular`` kernel: up to k neighbours per query (ELL layout), bounded training memory.

For a :class:`~nlgraph.graphs.RegularGraph` with key index :math:`J \in [0, N')^{G\times N\times k}`
and validity mask :math:`M`:

.. math::
    s_{il} = f(q_i, k_{J_{il}}),\qquad
    w_{il} = \mathrm{normalise}_{l:\, M_{il}}(s_{il}),\qquad
    y_i = \sum_l w_{il}\, v_{J_{il}}

with the normalisation of :mod:`nlgraph.ops._segment` (softmax for the Gaussian modes, division
by the number of valid slots otherwise; a query with no valid neighbour gets :math:`y_i = 0`).
An ``edge_bias`` :math:`\beta_{il}` adds to the softmax logits (its gradient is the softmax's).
Padding slots gather an all-zero key and value row appended after the real ones, so whatever the
key/value rows they nominally point at hold (NaN included) never reaches an output or gradient.

Queries are processed in chunks and the backward pass recomputes the gathered keys and values
chunk by chunk (a custom :class:`torch.autograd.Function`), so no (B, N, k, C) tensor is kept
alive for backward: training memory is O(B·N·(C + k)) plus one chunk. The concatenation mode
runs on the scalar halves :math:`a_i = u\cdot q_i` and :math:`b_j = w\cdot k_j` (autograd maps
their gradients back). No tensor value is read on the host.

Half precision (float16, bfloat16: plain inputs or outputs of layers under :func:`torch.autocast`)
is gathered in its own dtype and computed in float32 chunk by chunk: logits, normalisation, the
weighted sum and every gradient accumulator (``index_add_`` into float32 buffers), rounded to the
input dtype once per output; the concatenation halves a, b are float32
(:func:`~nlgraph.ops.kernels.base.wide_operands`). Autocast is off inside the kernel, so its
einsums are not rounded back to half precision. Bitwise repeatable on CPU; on CUDA the backward's ``index_add_`` is
deterministic under ``torch.use_deterministic_algorithms(True)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ...attention import Attention
from ...graphs.base import RegularGraph
from ...pairwise import MODES, edge_logits, edge_logits_backward, normaliser
from .._segment import accumulation_dtype, normalise_rows, normalise_rows_backward
from ..inputs import AggregateInputs
from .base import Kernel, autocast_off, wide_operands

__all__ = ["RegularKernel", "regular_aggregate"]

#: Queries per chunk are chosen so that one chunk's gathered (B, n, k, C) tensor has about this
#: many elements.
CHUNK_ELEMENTS = 1 << 20


def _flat_rows(t: Tensor, batch: int, num_keys: int, padded: bool) -> Tensor:
    """(B, N', ...) flattened to (B·N', ...) (a view); with ``padded`` an all-zero row appended
    at index B·N' for the padding slots to read."""
    flat = t.reshape(batch * num_keys, *t.shape[2:])
    if not padded:
        return flat
    return torch.cat([flat, flat.new_zeros(1, *flat.shape[1:])])


class _Chunk:
    """The gathered operands and weights of the queries [start, stop) (recomputed in backward)."""

    def __init__(
        self,
        mode: str,
        scale: float,
        query: Tensor,
        keys: Tensor,
        values: Tensor,
        index: Tensor,
        mask: Tensor | None,
        bias: Tensor | None,
        num_keys: int,
        start: int,
        stop: int,
    ) -> None:
        batch = query.shape[0]
        idx = index[:, start:stop]
        offsets = torch.arange(batch, device=idx.device).view(batch, 1, 1) * num_keys
        flat = (idx + offsets).expand(batch, -1, -1)
        self.mask = None if mask is None else mask[:, start:stop].expand(batch, -1, -1)
        if self.mask is not None:  # padding slots read the zero row at the end
            flat = torch.where(self.mask, flat, keys.shape[0] - 1)
        self.flat = flat.reshape(-1)
        acc = accumulation_dtype(values.dtype)  # float32 for half precision (module docstring)
        self.kg = keys.index_select(0, self.flat).view(*flat.shape, *keys.shape[1:]).to(acc)
        self.vg = values.index_select(0, self.flat).view(*flat.shape, values.shape[-1]).to(acc)
        self.qc = query[:, start:stop].to(acc)
        if mode == "concatenation":  # query (B, N) = a, key (B·N' + 1,) = b
            self.raw = self.qc.unsqueeze(-1) + self.kg
        else:
            self.raw = torch.einsum("bnc,bnkc->bnk", self.qc, self.kg)
        logits = edge_logits(mode, scale, self.raw)
        if bias is not None:
            logits = logits + bias[:, start:stop].to(acc)
        self.w = normalise_rows(normaliser(mode), logits, self.mask)


class _RegularAggregate(torch.autograd.Function):
    """y = Σ_l w_il v_{J_il} with recomputation in backward (see the module docstring)."""

    @staticmethod
    def forward(
        ctx: Any,
        mode: str,
        scale: float,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        index: Tensor,
        mask: Tensor | None,
        chunk: int,
        bias: Tensor | None,
    ) -> Tensor:
        ctx.mode, ctx.scale, ctx.chunk = mode, scale, chunk
        ctx.save_for_backward(query, key, value, index, mask, bias)
        ctx.has_mask, ctx.has_bias = mask is not None, bias is not None
        with autocast_off(value.device):  # chunks computed as the module docstring says
            batch, n, num_keys = query.shape[0], query.shape[1], key.shape[1]
            keys = _flat_rows(key, batch, num_keys, mask is not None)
            values = _flat_rows(value, batch, num_keys, mask is not None)
            out = value.new_empty(batch, n, value.shape[-1])
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                c = _Chunk(
                    mode, scale, query, keys, values, index, mask, bias, num_keys, start, stop
                )
                out[:, start:stop] = torch.einsum("bnk,bnkc->bnc", c.w, c.vg)
            return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        with autocast_off(grad_out.device):  # backward may run inside the caller's autocast
            query, key, value, index, mask, bias = ctx.saved_tensors
            grad_out = grad_out.contiguous()
            mask = mask if ctx.has_mask else None
            bias = bias if ctx.has_bias else None
            dbias = torch.zeros_like(bias) if bias is not None and ctx.needs_input_grad[8] else None
            mode, scale = ctx.mode, ctx.scale
            batch, n, num_keys = query.shape[0], query.shape[1], key.shape[1]
            keys = _flat_rows(key, batch, num_keys, mask is not None)
            values = _flat_rows(value, batch, num_keys, mask is not None)
            acc = accumulation_dtype(value.dtype)
            dq = torch.zeros_like(query, dtype=acc)
            dk = torch.zeros_like(keys, dtype=acc)
            dv = torch.zeros_like(values, dtype=acc)
            for start in range(0, n, ctx.chunk):
                stop = min(start + ctx.chunk, n)
                c = _Chunk(
                    mode, scale, query, keys, values, index, mask, bias, num_keys, start, stop
                )
                gy = grad_out[:, start:stop].to(acc)
                dw = torch.einsum("bnc,bnkc->bnk", gy, c.vg)
                dv.index_add_(0, c.flat, (c.w.unsqueeze(-1) * gy.unsqueeze(2)).flatten(0, 2))
                ds = normalise_rows_backward(normaliser(mode), c.w, dw, c.mask)
                if dbias is not None:
                    dbias[:, start:stop] = ds
                draw = edge_logits_backward(mode, scale, ds, c.raw)
                if mode == "concatenation":
                    dq[:, start:stop] = draw.sum(-1)
                    dk.index_add_(0, c.flat, draw.reshape(-1))
                else:
                    dq[:, start:stop] = torch.einsum("bnk,bnkc->bnc", draw, c.kg)
                    dk.index_add_(0, c.flat, (draw.unsqueeze(-1) * c.qc.unsqueeze(2)).flatten(0, 2))
            if mask is not None:  # drop the padding row
                dk, dv = dk[:-1], dv[:-1]
            dq, dk, dv = (
                dq.to(query.dtype),
                dk.view_as(key).to(key.dtype),
                dv.view_as(value).to(value.dtype),
            )
            return None, None, dq, dk, dv, None, None, None, dbias


def regular_aggregate(
    mode: str,
    scale: float,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    graph: RegularGraph,
    chunk: int | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """Aggregate over a regular graph. For concatenation, query/key are a (B, N) and b (B, N').

    ``scale`` multiplies the softmax logits (1 for the other modes); ``bias`` (B, N, k) adds to
    them (``edge_bias``).
    """
    batch, n, k = query.shape[0], query.shape[1], graph.k
    width = max(key.shape[-1] if key.dim() == 3 else 1, value.shape[-1])
    if chunk is None:
        chunk = max(1, CHUNK_ELEMENTS // max(1, batch * k * width))
    # Channels-last contiguous operands: the per-query contractions below run as one batched
    # matmul; strided views (e.g. transposed conv outputs) make it copy every tiny batch.
    query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
    return _RegularAggregate.apply(
        mode, scale, query, key, value, graph.index, graph.mask, min(chunk, max(n, 1)), bias
    )


class RegularKernel(Kernel):
    """Up to k neighbours per query (:class:`~nlgraph.graphs.RegularGraph`), gather + normalise."""

    NAME = "regular"
    SUPPORTED_GRAPHS = ("full", "regular")
    SUPPORTED_MODES = MODES
    SUPPORTS_RETURN_ATTENTION = True
    SUPPORTS_EDGE_BIAS = True
    # index_add_ in backward is atomic on CUDA, deterministic under
    # torch.use_deterministic_algorithms(True) (base.Kernel.IS_DETERMINISTIC).
    IS_DETERMINISTIC = True

    @classmethod
    def apply(cls, inp: AggregateInputs) -> tuple[Tensor, Attention | None]:
        with autocast_off(inp.value.device):  # the concatenation halves too (module docstring)
            return cls._apply(inp)

    @classmethod
    def _apply(cls, inp: AggregateInputs) -> tuple[Tensor, Attention | None]:
        """:meth:`apply` outside autocast."""
        graph = inp.regular_graph()
        pw = inp.pairwise
        q, k = wide_operands(pw, inp.query, inp.key)  # float32 concatenation halves
        bias = inp.batched_bias()
        y = regular_aggregate(pw.mode, pw.logit_scale, q, k, inp.value, graph, bias=bias)
        attn = None
        if inp.return_attention:
            attn = Attention.from_regular(
                _attention_weights(pw.mode, pw.logit_scale, q, k, graph, bias), graph
            )
        return y, attn


def _attention_weights(
    mode: str, scale: float, q: Tensor, k: Tensor, graph: RegularGraph, bias: Tensor | None
) -> Tensor:
    """(B, N, k) weights of every slot (0 on padding)."""
    batch, num_keys = q.shape[0], k.shape[1]
    keys = _flat_rows(k, batch, num_keys, graph.mask is not None)
    values = keys.new_zeros(keys.shape[0], 1)
    c = _Chunk(mode, scale, q, keys, values, graph.index, graph.mask, bias, num_keys, 0, q.shape[1])
    return c.w.to(q.dtype)
