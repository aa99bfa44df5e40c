r"""The ``regular`` kernel: up to k neighbours per query (ELL layout), bounded training memory.

For a :class:`~nlgraph.graphs.RegularGraph` with key index :math:`J \in [0, N')^{G\times N\times k}`
and validity mask :math:`M`:

.. math::
    s_{il} = f(q_i, k_{J_{il}}),\qquad
    w_{il} = \begin{cases} \mathrm{softmax}_{l: M_{il}}(s_{il}) & \text{Gaussian modes} \\
             M_{il}\, s_{il} / \max(1, \sum_l M_{il}) & \text{dot product, concatenation}\end{cases}
    ,\qquad y_i = \sum_l w_{il}\, v_{J_{il}}

An ``edge_bias`` :math:`\beta_{il}` adds to the softmax logits :math:`s_{il}` (its gradient is
the softmax's). A query with no valid neighbour gets :math:`y_i = 0`. Queries are processed in chunks and the
backward pass recomputes the gathered keys and values chunk by chunk (a custom
:class:`torch.autograd.Function`), so no (B, N, k, C) tensor is kept alive for backward: training
memory is O(B·N·(C + k)) plus one chunk. The concatenation mode runs on the scalar halves
:math:`a_i = u\cdot q_i` and :math:`b_j = w\cdot k_j` (autograd maps their gradients back).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ...attention import Attention
from ...graphs.base import RegularGraph
from ...pairwise import MODES
from ..inputs import AggregateInputs
from .base import Kernel

__all__ = ["RegularKernel", "regular_aggregate"]

#: Queries per chunk are chosen so that one chunk's gathered (B, n, k, C) tensor has about this
#: many elements.
CHUNK_ELEMENTS = 1 << 20


def _flat_index(index: Tensor, batch: int, num_keys: int, start: int, stop: int) -> Tensor:
    """(B, n, k) row indices into keys flattened to (B·N', C) for queries [start, stop)."""
    idx = index[:, start:stop]
    offsets = torch.arange(batch, device=idx.device).view(batch, 1, 1) * num_keys
    return (idx + offsets).expand(batch, -1, -1)


def _weights(
    mode: str, scale: float, s: Tensor, mask: Tensor | None, bias: Tensor | None = None
) -> Tensor:
    """Normalise the (B, n, k) scores over the valid neighbours (empty rows give 0)."""
    if mode in ("gaussian", "embedded_gaussian"):
        logits = s * scale if scale != 1.0 else s
        if bias is not None:
            logits = logits + bias
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        top = logits.amax(-1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        e = torch.exp(logits - top)
        return e / e.sum(-1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)
    if mask is None:
        return s / s.shape[-1]
    count = mask.sum(-1, keepdim=True).clamp_min(1).to(s.dtype)
    return s.masked_fill(~mask, 0.0) / count


class _RegularAggregate(torch.autograd.Function):
    """y = Σ_l w_il v_{J_il} with recomputation in backward (see the module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
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
        batch, n = query.shape[0], query.shape[1]
        out = value.new_empty(batch, n, value.shape[-1])
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            _, _, w, vg = _chunk_forward(
                mode, scale, query, key, value, index, mask, start, stop, bias
            )
            out[:, start:stop] = torch.einsum("bnk,bnkc->bnc", w, vg)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        query, key, value, index, mask, bias = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        mask = mask if ctx.has_mask else None
        bias = bias if ctx.has_bias else None
        dbias = torch.zeros_like(bias) if ctx.needs_input_grad[8] else None
        mode, scale = ctx.mode, ctx.scale
        batch, n, num_keys = query.shape[0], query.shape[1], key.shape[1]
        dq = torch.zeros_like(query)
        dk = torch.zeros_like(key).reshape(batch * num_keys, *key.shape[2:])
        dv = torch.zeros_like(value).reshape(batch * num_keys, value.shape[-1])
        for start in range(0, n, ctx.chunk):
            stop = min(start + ctx.chunk, n)
            flat, kg, w, vg = _chunk_forward(
                mode, scale, query, key, value, index, mask, start, stop, bias
            )
            m = None if mask is None else mask[:, start:stop]
            gy = grad_out[:, start:stop]
            dw = torch.einsum("bnc,bnkc->bnk", gy, vg)
            dv.index_add_(0, flat.reshape(-1), (w.unsqueeze(-1) * gy.unsqueeze(2)).flatten(0, 2))
            if mode in ("gaussian", "embedded_gaussian"):
                ds = w * (dw - (w * dw).sum(-1, keepdim=True))
                if dbias is not None:
                    dbias[:, start:stop] = ds
                ds = ds * scale
            else:
                count = kg.shape[2] if m is None else m.sum(-1, keepdim=True).clamp_min(1)
                ds = dw / count
                if m is not None:
                    ds = ds.masked_fill(~m, 0.0)
            if mode == "concatenation":
                qc = query[:, start:stop]
                ds = ds * ((qc.unsqueeze(-1) + kg) > 0).to(ds.dtype)
                dq[:, start:stop] = ds.sum(-1)
                dk.index_add_(0, flat.reshape(-1), ds.reshape(-1))
            else:
                qc = query[:, start:stop]
                dq[:, start:stop] = torch.einsum("bnk,bnkc->bnc", ds, kg)
                dk.index_add_(
                    0, flat.reshape(-1), (ds.unsqueeze(-1) * qc.unsqueeze(2)).flatten(0, 2)
                )
        return None, None, dq, dk.view_as(key), dv.view_as(value), None, None, None, dbias


def _chunk_forward(
    mode: str,
    scale: float,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    index: Tensor,
    mask: Tensor | None,
    start: int,
    stop: int,
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Flat index, gathered keys, weights and gathered values for queries [start, stop)."""
    batch, num_keys = key.shape[0], key.shape[1]
    flat = _flat_index(index, batch, num_keys, start, stop)
    m = None if mask is None else mask[:, start:stop].expand(batch, -1, -1)
    k_flat = key.reshape(batch * num_keys, *key.shape[2:])
    kg = k_flat.index_select(0, flat.reshape(-1)).view(*flat.shape, *key.shape[2:])
    vg = value.reshape(batch * num_keys, -1).index_select(0, flat.reshape(-1))
    vg = vg.view(*flat.shape, value.shape[-1])
    qc = query[:, start:stop]
    if mode == "concatenation":  # query (B, N) = a, key (B, N') = b
        s = torch.relu(qc.unsqueeze(-1) + kg)
    else:
        s = torch.einsum("bnc,bnkc->bnk", qc, kg)
    b = None if bias is None else bias[:, start:stop]
    return flat, kg, _weights(mode, scale, s, m, b), vg


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

    ``bias`` (B, N, k) adds to the softmax logits (``edge_bias``).
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
    IS_DETERMINISTIC = False  # index_add_ in backward is atomic on CUDA

    @classmethod
    def apply(cls, inp: AggregateInputs) -> tuple[Tensor, Attention | None]:
        graph = inp.regular_graph()
        pw = inp.pairwise
        q, k = inp.query, inp.key
        if pw.mode == "concatenation":
            q, k = pw.concat_terms(q, k)
        scale = pw.scale if pw.is_softmax else 1.0
        bias = inp.batched_bias()
        y = regular_aggregate(pw.mode, scale, q, k, inp.value, graph, bias=bias)
        attn = None
        if inp.return_attention:
            w = _attention_weights(pw.mode, scale, q, k, graph, bias)
            attn = Attention.from_regular(w, graph)
        return y, attn


def _attention_weights(
    mode: str, scale: float, q: Tensor, k: Tensor, graph: RegularGraph, bias: Tensor | None
) -> Tensor:
    """(B, N, k) weights of every slot (0 on padding)."""
    batch = q.shape[0]
    mask = None if graph.mask is None else graph.mask.expand(batch, -1, -1)
    _, _, w, _ = _chunk_forward(
        mode, scale, q, k, k.new_zeros(*k.shape[:2], 1), graph.index, mask, 0, q.shape[1], bias
    )
    return w if mask is None else w.masked_fill(~mask, 0.0)
