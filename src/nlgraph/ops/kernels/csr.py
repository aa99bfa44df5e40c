r"""The ``csr`` kernel: any sparse graph as sparse-matrix products, O(E) training memory.

The edges of all B samples form one block-diagonal sparse matrix with a row per query
(B·N rows) and a column per key (B·N' columns), stored in CSR. With :math:`s_e = f(q_i, k_j)`
for each edge :math:`e = (j \to i)`:

.. math::
    S = \mathrm{SDDMM}(Q, K) \;(\text{the logits } q_i\cdot k_j \text{ at the stored entries}),\quad
    W = \mathrm{normalise}_{\text{rows}}(S),\quad Y = W V \;(\text{SpMM}),

where normalise is the softmax over each row (Gaussian modes, logits times ``scale`` plus the
``edge_bias`` of each entry when one is given) or the
division by the row's entry count (dot product, concatenation; for concatenation
:math:`s_e = \mathrm{ReLU}(a_i + b_j)` on the scalar halves). Backward uses the same products,

.. math::
    dW = \mathrm{SDDMM}(dY, V),\quad dV = W^\top dY,\quad
    dS = W \odot (dW - \mathrm{rowsum}(W \odot dW))\cdot\mathrm{scale}\ \text{(softmax)},\quad
    dQ = dS\, K,\quad dK = dS^\top Q,

with :math:`W^\top` and :math:`dS^\top` in CSR through one stable sort of the column indices.
Only the E normalised weights are kept for backward: no (E, C) tensor is ever materialised, so
training memory is O(B·(N + N')·C + E) and the products run as MKL (CPU) or cuSPARSE (CUDA)
sparse routines. A query without neighbours gets y_i = 0; duplicate edges count as many times
as they appear.

It serves :class:`~nlgraph.graphs.RegularGraph` (padding dropped; shared or one graph per
sample) and :class:`~nlgraph.graphs.COOGraph` inputs in float32 and float64, outside
``torch.compile`` tracing (PyTorch does not compile sparse tensors; the ``regular`` kernel runs
there).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ...attention import Attention
from ...graphs.base import COOGraph, RegularGraph
from ...pairwise import MODES, SOFTMAX_MODES
from ..inputs import AggregateInputs
from .base import Kernel

__all__ = ["CSRKernel", "CSRStructure", "csr_aggregate", "csr_structure"]

# PyTorch warns once per process that sparse CSR support is "beta"; the operations used here
# (sampled_addmm, CSR @ dense) are stable and tested against the other kernels.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
# Newer PyTorch also warns that check_invariants=False skips the checks: the patterns built here
# are valid by construction (sorted rows, in-range columns; tests compare against references).
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


@dataclass(frozen=True, eq=False)
class CSRStructure:
    """The sparsity pattern of a batch's edges as a (B·N, B·N') CSR matrix.

    Attributes:
        crow (Tensor): (B·N + 1,) row pointers (int64).
        col (Tensor): (E,) column (flattened key) of each stored entry, row-major order.
        degree (Tensor): (B·N,) entries per row.
        k (int | None): the common row length when every row has exactly k entries (then the
            row of entry e is e // k and the per-row reductions are views), else ``None``.
        shape (tuple[int, int]): (B·N, B·N').
        rows (Tensor, optional): (E,) row (flattened query) of each entry; required when
            ``k`` is ``None``.
        order (Tensor, optional): for a COOGraph whose edges were not sorted by query, the
            position in ``edge_index`` of each stored entry of one sample (``None``: the same
            order).
    """

    crow: Tensor
    col: Tensor
    degree: Tensor
    k: int | None
    shape: tuple[int, int]
    rows: Tensor | None = None
    order: Tensor | None = None

    @property
    def nnz(self) -> int:
        """E, the number of stored entries."""
        return self.col.shape[0]

    def matrix(self, values: Tensor) -> Tensor:
        """The sparse CSR matrix with this pattern and ``values`` (E,)."""
        return torch.sparse_csr_tensor(
            self.crow, self.col, values, self.shape, check_invariants=False
        )

    def transposed(self) -> tuple[Tensor, Tensor, Tensor]:
        """(crow_t, col_t, perm): the transpose in CSR; entry t of it is entry perm[t] here."""
        perm = _stable_argsort(self.col, self.shape[1])
        counts = torch.bincount(self.col, minlength=self.shape[1])
        crow_t = torch.zeros(self.shape[1] + 1, dtype=torch.long, device=self.col.device)
        torch.cumsum(counts, 0, out=crow_t[1:])
        if self.k is not None:
            return crow_t, torch.div(perm, self.k, rounding_mode="floor"), perm
        assert self.rows is not None
        return crow_t, self.rows.index_select(0, perm), perm

    def per_entry(self, per_row: Tensor) -> Tensor:
        """(E,) the value of each entry's row, from ``per_row`` (B·N,)."""
        if self.k is not None:
            return per_row.unsqueeze(-1).expand(-1, self.k).reshape(-1)
        assert self.rows is not None
        return per_row.index_select(0, self.rows)

    def per_entry_degree(self, dtype: torch.dtype) -> Tensor:
        """(E,) the entry count of each entry's row (the mean's divisor, at least 1)."""
        return self.per_entry(self.degree.clamp_min(1).to(dtype))

    def row_sum(self, values: Tensor) -> Tensor:
        """(B·N,) sum of ``values`` (E,) over each row."""
        if self.k is not None:
            return values.view(-1, self.k).sum(-1)
        assert self.rows is not None
        return values.new_zeros(self.shape[0]).index_add_(0, self.rows, values)

    def row_softmax(self, logits: Tensor) -> Tensor:
        """Softmax of ``logits`` (E,) within each row (rows without entries stay empty)."""
        if self.k is not None:
            return torch.softmax(logits.view(-1, self.k), dim=-1).view(-1)
        assert self.rows is not None
        top = logits.new_full((self.shape[0],), float("-inf"))
        top = top.scatter_reduce_(0, self.rows, logits, "amax")
        e = torch.exp(logits - top.index_select(0, self.rows))
        den = e.new_zeros(self.shape[0]).index_add_(0, self.rows, e)
        return e / den.index_select(0, self.rows)


def csr_structure(graph: RegularGraph | COOGraph, batch: int) -> CSRStructure:
    """The (B·N, B·N') CSR pattern of ``graph`` repeated (or, per sample, stacked) over the batch.

    A RegularGraph without mask keeps its k-per-row layout (no sort, row reductions as views);
    padding slots are dropped; a COOGraph is sorted by query (stable: each row keeps the order
    of its edges).
    """
    if isinstance(graph, RegularGraph):
        idx, n, m = graph.index, graph.num_queries, graph.num_keys
        idx = idx.expand(batch, -1, -1)
        offset = torch.arange(batch, device=idx.device).view(batch, 1, 1) * m
        col = (idx + offset).reshape(-1)
        rows = batch * n
        if graph.mask is None:
            k = graph.k
            crow = torch.arange(0, rows * k + 1, k, device=idx.device)
            degree = torch.full((rows,), k, dtype=torch.long, device=idx.device)
            return CSRStructure(crow, col, degree, k, (rows, batch * m))
        mask = graph.mask.expand(batch, -1, -1)
        keep = mask.reshape(-1)
        col = col[keep]
        row = torch.arange(rows, device=idx.device).repeat_interleave(graph.k)[keep]
        degree = mask.sum(-1).reshape(-1)
        order = None
    else:
        n, m = graph.num_queries, graph.num_keys
        src, dst = graph.edge_index
        order = None
        if dst.numel() > 1 and not bool((dst[1:] >= dst[:-1]).all()):  # PyG graphs often are
            order = _stable_argsort(dst, n)
            src, dst = src.index_select(0, order), dst.index_select(0, order)
        offset = torch.arange(batch, device=src.device).unsqueeze(1)
        col = (src + offset * m).reshape(-1)
        row = (dst + offset * n).reshape(-1)
        rows = batch * n
        degree = torch.bincount(row, minlength=rows)
    crow = torch.zeros(rows + 1, dtype=torch.long, device=col.device)
    torch.cumsum(degree, 0, out=crow[1:])
    return CSRStructure(crow, col, degree, None, (rows, batch * m), row, order)


def _stable_argsort(values: Tensor, bound: int) -> Tensor:
    """Stable argsort of non-negative integers below ``bound`` (int32 keys sort ~1.8x faster)."""
    keys = values.to(torch.int32) if bound < 2**31 else values
    return torch.argsort(keys, stable=True)


def _sddmm(pattern: CSRStructure, a: Tensor, b: Tensor) -> Tensor:
    """(E,) values a[row_e] · b[col_e] for a (B·N, C) and b (B·N', C)."""
    zeros = a.new_zeros(pattern.nnz)
    out = torch.sparse.sampled_addmm(pattern.matrix(zeros), a, b.t(), beta=0.0)
    return out.values()


def _logits(mode: str, pattern: CSRStructure, q: Tensor, k: Tensor) -> Tensor:
    """(E,) scores before normalisation (concatenation: before the ReLU)."""
    if mode == "concatenation":  # q (B·N,) = a, k (B·N',) = b
        return pattern.per_entry(q) + k.index_select(0, pattern.col)
    return _sddmm(pattern, q, k)


def _normalise(
    mode: str, scale: float, pattern: CSRStructure, s: Tensor, bias: Tensor | None = None
) -> Tensor:
    if mode in SOFTMAX_MODES:
        logits = s * scale if scale != 1.0 else s
        return pattern.row_softmax(logits if bias is None else logits + bias)
    if mode == "concatenation":
        s = torch.relu(s)
    return s / pattern.per_entry_degree(s.dtype)


class _CSRAggregate(torch.autograd.Function):
    """Y = normalise(SDDMM(Q, K)) @ V with sparse-matrix backward (module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        mode: str,
        scale: float,
        pattern: CSRStructure,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        bias: Tensor | None,
    ) -> Tensor:
        s = _logits(mode, pattern, query, key)
        w = _normalise(mode, scale, pattern, s, bias)
        ctx.mode, ctx.scale, ctx.pattern = mode, scale, pattern
        # concatenation needs the sign of the pre-activation; the softmax modes only w.
        ctx.save_for_backward(query, key, value, w, s if mode == "concatenation" else None)
        return pattern.matrix(w) @ value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        query, key, value, w, s = ctx.saved_tensors
        mode, scale, pattern = ctx.mode, ctx.scale, ctx.pattern
        grad_out = grad_out.contiguous()
        crow_t, col_t, perm = pattern.transposed()
        shape_t = (pattern.shape[1], pattern.shape[0])

        def transposed(values: Tensor) -> Tensor:
            vals = values.index_select(0, perm)
            return torch.sparse_csr_tensor(crow_t, col_t, vals, shape_t, check_invariants=False)

        dv = transposed(w) @ grad_out
        dw = _sddmm(pattern, grad_out, value)
        dbias = None
        if mode in SOFTMAX_MODES:
            ds = w * (dw - pattern.per_entry(pattern.row_sum(w * dw)))
            dbias = ds if ctx.needs_input_grad[6] else None
            if scale != 1.0:
                ds = ds * scale
        else:
            ds = dw / pattern.per_entry_degree(dw.dtype)
        if mode == "concatenation":
            ds = ds * (s > 0).to(ds.dtype)
            dq = pattern.row_sum(ds)
            dk = ds.new_zeros(pattern.shape[1]).index_add_(0, pattern.col, ds)
        else:
            dq = pattern.matrix(ds) @ key
            dk = transposed(ds) @ query
        return None, None, None, dq, dk, dv, dbias


def csr_aggregate(
    mode: str,
    scale: float,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    graph: RegularGraph | COOGraph,
    pattern: CSRStructure | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """Aggregate over ``graph`` by sparse-matrix products: y (B, N, Cv).

    For concatenation, ``query``/``key`` are the scalar halves a (B, N) and b (B, N').
    ``pattern`` is ``csr_structure(graph, B)`` when the caller already has it. ``bias`` adds to
    the softmax logits: (B, N, k) for a RegularGraph, (B, E) for a COOGraph.
    """
    batch, n = query.shape[0], query.shape[1]
    if pattern is None:
        pattern = csr_structure(graph, batch)
    q, k, v = _flat(query), _flat(key), _flat(value)
    entry_bias = None if bias is None else _entry_bias(bias, graph, pattern)
    y = _CSRAggregate.apply(mode, scale, pattern, q, k, v, entry_bias)
    return y.view(batch, n, value.shape[-1])


def _entry_bias(bias: Tensor, graph: RegularGraph | COOGraph, pattern: CSRStructure) -> Tensor:
    """(E_total,) the bias of each stored entry, in CSR order (autograd maps gradients back)."""
    batch = bias.shape[0]
    if isinstance(graph, RegularGraph):
        flat = bias.reshape(-1)
        if graph.mask is not None:
            flat = flat[graph.mask.expand(batch, -1, -1).reshape(-1)]
        return flat
    if pattern.order is not None:
        bias = bias.index_select(1, pattern.order)
    return bias.reshape(-1)


def _flat(t: Tensor) -> Tensor:
    """(B, N, C) → contiguous (B·N, C); the concatenation halves (B, N) → (B·N,)."""
    return (t.flatten(0, 1) if t.dim() == 3 else t.reshape(-1)).contiguous()


class CSRKernel(Kernel):
    """Regular and COO graphs as sparse-matrix products (SDDMM, row softmax, SpMM)."""

    NAME = "csr"
    SUPPORTED_GRAPHS = ("full", "regular", "coo")
    SUPPORTED_MODES = MODES
    SUPPORTED_DTYPES = (torch.float32, torch.float64)
    SUPPORTS_RETURN_ATTENTION = True
    SUPPORTS_EDGE_BIAS = True
    IS_DETERMINISTIC = False  # CPU (MKL) runs row-parallel without atomics; cuSPARSE unverified

    @classmethod
    def not_supported_reasons(cls, inp: AggregateInputs) -> list[str]:
        reasons = super().not_supported_reasons(inp)
        if _is_compiling():
            reasons.append("torch.compile tracing (sparse tensors do not compile)")
        return reasons

    @classmethod
    def apply(cls, inp: AggregateInputs) -> tuple[Tensor, Attention | None]:
        pw = inp.pairwise
        q, k = inp.query, inp.key
        if pw.mode == "concatenation":
            q, k = pw.concat_terms(q, k)
        scale = pw.scale if pw.is_softmax else 1.0
        graph = inp.graph if inp.graph_kind != "full" else inp.regular_graph()
        pattern = csr_structure(graph, q.shape[0])
        bias = inp.batched_bias()
        y = csr_aggregate(pw.mode, scale, q, k, inp.value, graph, pattern, bias)
        attn = None
        if inp.return_attention:
            attn = _attention(pw.mode, scale, q, k, graph, pattern, bias)
        return y, attn


def _attention(
    mode: str,
    scale: float,
    q: Tensor,
    k: Tensor,
    graph: RegularGraph | COOGraph,
    pattern: CSRStructure,
    bias: Tensor | None,
) -> Attention:
    """The normalised weights in the graph's own layout (recomputed from q and k)."""
    batch, n = q.shape[0], q.shape[1]
    entry_bias = None if bias is None else _entry_bias(bias, graph, pattern)
    s = _logits(mode, pattern, _flat(q), _flat(k))
    w = _normalise(mode, scale, pattern, s, entry_bias)
    if isinstance(graph, RegularGraph):
        if graph.mask is not None:  # padding slots get weight 0
            full = w.new_zeros(batch * n * graph.k)
            full[graph.mask.expand(batch, -1, -1).reshape(-1)] = w
            w = full
        return Attention.from_regular(w.view(batch, n, graph.k), graph)
    w = w.view(batch, graph.num_edges)
    if pattern.order is not None:  # back from query order to the order of edge_index
        out = torch.empty_like(w)
        out[:, pattern.order] = w
        w = out
    return Attention.from_coo(w, graph)


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())
