r"""The ``csr`` kernel: any sparse graph as sparse-matrix products, O(E) training memory.

The edges of all B samples form one block-diagonal sparse matrix with a row per query
(B·N rows) and a column per key (B·N' columns), stored in CSR. With :math:`s_e = f(q_i, k_j)`
for each edge :math:`e = (j \to i)`:

.. math::
    S = \mathrm{SDDMM}(Q, K) \;(\text{the logits } q_i\cdot k_j \text{ at the stored entries}),\quad
    W = \mathrm{normalise}_{\text{rows}}(S),\quad Y = W V \;(\text{SpMM}),

where normalise is the shared row normalisation of :mod:`nlgraph.ops._segment`: the softmax
over each row (Gaussian modes, logits times ``scale`` plus the ``edge_bias`` of each entry when
one is given) or the division by the row's entry count (dot product, concatenation; for
concatenation :math:`s_e = \mathrm{ReLU}(a_i + b_j)` on the scalar halves). Backward uses the
same products,

.. math::
    dW = \mathrm{SDDMM}(dY, V),\quad dV = W^\top dY,\quad
    dS = W \odot (dW - \mathrm{rowsum}(W \odot dW))\cdot\mathrm{scale}\ \text{(softmax)},\quad
    dQ = dS\, K,\quad dK = dS^\top Q,

with :math:`W^\top` and :math:`dS^\top` in CSR through one stable sort of the column indices.
Only the E normalised weights are kept for backward: no (E, C) tensor is ever materialised, so
training memory is O(B·(N + N')·C + E) and the products run as MKL (CPU) or cuSPARSE (CUDA)
sparse routines. A query without neighbours gets y_i = 0; duplicate edges count as many times
as they appear.

It serves :class:`~nlgraph.graphs.RegularGraph` inputs (shared or one graph per sample) as
rows of exactly k entries: padding slots stay in the pattern, pointing at an extra all-zero key
and value column, with weight 0 (no boolean selection, so no host read, and whatever the
nominal padding index points at never reaches the result). :class:`~nlgraph.graphs.COOGraph`
inputs are rows of any length, sorted by query once (a COOGraph not known to be sorted is
checked once, one host read). The pattern and its transpose are built once per graph object and
batch size and cached on the graph: a graph shared by blocks or steps is prepared once. float32
and float64, outside ``torch.compile`` tracing (PyTorch does not compile sparse tensors; the
``regular`` kernel runs there). Half precision is declined (PyTorch's CPU sparse products do not
take it), so under :func:`torch.autocast` the kernel only sees float32/float64 inputs (layers
run outside autocast) and computes in their dtype: autocast is off inside, which keeps its
sparse-dense products out of autocast's lower-precision casts. Bitwise repeatable on CPU
(row-parallel MKL products, no atomics); cuSPARSE's on CUDA are not covered by
``torch.use_deterministic_algorithms``, so the kernel declines CUDA inputs under that flag
(:attr:`CSRKernel.IS_DETERMINISTIC`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ...attention import Attention
from ...graphs.base import COOGraph, RegularGraph
from ...pairwise import MODES, edge_logits, edge_logits_backward, normaliser
from .._segment import (
    Segments,
    normalise_rows,
    normalise_rows_backward,
    normalise_segments,
    normalise_segments_backward,
)
from ..inputs import AggregateInputs
from .base import Kernel, autocast_off

__all__ = ["CSRKernel", "CSRStructure", "csr_aggregate", "csr_structure"]


def _sparse_csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR tensor without invariant checks (the patterns here are valid by construction),
    with PyTorch's "beta" and "checks disabled" warnings silenced here only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _stable_argsort(values: Tensor, bound: int) -> Tensor:
    """Stable argsort of non-negative integers below ``bound`` (int32 keys sort ~1.8x faster)."""
    keys = values.to(torch.int32) if bound < 2**31 else values
    return torch.argsort(keys, stable=True)


def _pointers(sorted_index: Tensor, size: int) -> Tensor:
    """(size + 1,) CSR row pointers of a sorted row index (no host read)."""
    return torch._convert_indices_from_coo_to_csr(sorted_index, size)


class CSRStructure:
    """The sparsity pattern of a batch's edges as a (B·N, columns) CSR matrix.

    Attributes:
        crow (Tensor): (B·N + 1,) row pointers (int64).
        col (Tensor): (E,) column (flattened key) of each stored entry, row-major order.
        shape (tuple[int, int]): (B·N, B·N'), or (B·N, B·N' + 1) with ``mask``: the last column
            is the zero key/value row that padding entries point at.
        k (int | None): the common row length of a RegularGraph (then the rows are views of
            (B·N, k) blocks), else ``None``.
        mask (Tensor, optional): (B·N, k) bool, False on padding entries (RegularGraph only).
        rows (Tensor, optional): (E,) row (flattened query) of each entry (COOGraph only).
        order (Tensor, optional): for a COOGraph whose edges were not sorted by query, the
            position in ``edge_index`` of each stored entry of one sample (``None``: the same
            order).
    """

    def __init__(
        self,
        crow: Tensor,
        col: Tensor,
        shape: tuple[int, int],
        *,
        k: int | None = None,
        mask: Tensor | None = None,
        rows: Tensor | None = None,
        order: Tensor | None = None,
    ) -> None:
        self.crow, self.col, self.shape = crow, col, shape
        self.k, self.mask, self.rows, self.order = k, mask, rows, order
        self._transposed: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def nnz(self) -> int:
        """E, the number of stored entries."""
        return self.col.shape[0]

    @property
    def padded(self) -> bool:
        """True when the pattern has padding entries (and the extra zero column)."""
        return self.mask is not None

    def segments(self) -> Segments:
        """The rows as :class:`~nlgraph.ops._segment.Segments` (COOGraph patterns)."""
        assert self.rows is not None
        return Segments(self.rows, self.shape[0], self.crow)

    def matrix(self, values: Tensor) -> Tensor:
        """The sparse CSR matrix with this pattern and ``values`` (E,)."""
        return _sparse_csr(self.crow, self.col, values, self.shape)

    def transposed(self, values: Tensor) -> Tensor:
        """The transpose, in CSR, of the matrix with ``values`` (one stable sort, cached)."""
        if self._transposed is None:
            perm = _stable_argsort(self.col, self.shape[1])
            crow_t = _pointers(self.col.index_select(0, perm), self.shape[1])
            if self.k is not None:
                col_t = torch.div(perm, self.k, rounding_mode="floor")
            else:
                assert self.rows is not None
                col_t = self.rows.index_select(0, perm)
            self._transposed = (crow_t, col_t, perm)
        crow_t, col_t, perm = self._transposed
        return _sparse_csr(crow_t, col_t, values.index_select(0, perm), self.shape[::-1])

    def normalise(self, mode: str, logits: Tensor) -> Tensor:
        """Row-normalised weights (E,) of the logits (E,)."""
        if self.k is not None:
            w = normalise_rows(normaliser(mode), logits.view(-1, self.k), self.mask)
            return w.view(-1)
        return normalise_segments(normaliser(mode), logits, self.segments())

    def normalise_backward(self, mode: str, w: Tensor, dw: Tensor) -> Tensor:
        """The gradient (E,) of :meth:`normalise` with respect to its logits."""
        if self.k is not None:
            ds = normalise_rows_backward(
                normaliser(mode), w.view(-1, self.k), dw.view(-1, self.k), self.mask
            )
            return ds.view(-1)
        return normalise_segments_backward(normaliser(mode), w, dw, self.segments())

    def per_entry(self, per_row: Tensor) -> Tensor:
        """(E,) the value of each entry's row, from ``per_row`` (B·N,)."""
        if self.k is not None:
            return per_row.unsqueeze(-1).expand(-1, self.k).reshape(-1)
        assert self.rows is not None
        return per_row.index_select(0, self.rows)

    def row_sum(self, values: Tensor) -> Tensor:
        """(B·N,) sum of ``values`` (E,) over each row."""
        if self.k is not None:
            return values.view(-1, self.k).sum(-1)
        return self.segments().row_sum(values)


def _query_sorted(graph: COOGraph) -> bool:
    """Whether ``graph``'s edges are grouped by query: its flag, else one check (cached)."""
    if graph.query_sorted is not None:
        return graph.query_sorted
    known = graph._cache.get("query_sorted")
    if known is None:
        dst = graph.edge_index[1]
        known = dst.numel() < 2 or bool((dst[1:] >= dst[:-1]).all())  # one host read
        graph._cache["query_sorted"] = known
    return known


def csr_structure(graph: RegularGraph | COOGraph, batch: int) -> CSRStructure:
    """The CSR pattern of ``graph`` repeated (or, per sample, stacked) over the batch.

    Built once per graph object and batch size, then taken from the graph's cache. A
    RegularGraph keeps its k-per-row layout (padding entries point at an extra zero column); a
    COOGraph is sorted by query (stable: each row keeps the order of its edges).
    """
    cached = graph._cache.get(("csr", batch))
    if cached is not None:
        return cached
    if isinstance(graph, RegularGraph):
        idx, n, m, k = graph.index, graph.num_queries, graph.num_keys, graph.k
        rows = batch * n
        offset = torch.arange(batch, device=idx.device).view(batch, 1, 1) * m
        col = idx.expand(batch, -1, -1) + offset
        mask = None
        columns = batch * m
        if graph.mask is not None:
            mask = graph.mask.expand(batch, -1, -1).reshape(rows, k)
            col = torch.where(mask.view(batch, n, k), col, columns)
            columns += 1
        crow = torch.arange(0, rows * k + 1, k, device=idx.device)
        structure = CSRStructure(crow, col.reshape(-1), (rows, columns), k=k, mask=mask)
    else:
        n, m = graph.num_queries, graph.num_keys
        src, dst = graph.edge_index
        order = None
        if not _query_sorted(graph):
            order = _stable_argsort(dst, n)
            src, dst = src.index_select(0, order), dst.index_select(0, order)
        offset = torch.arange(batch, device=src.device).unsqueeze(1)
        col = (src + offset * m).reshape(-1)
        row = (dst + offset * n).reshape(-1)
        crow = _pointers(row, batch * n)
        structure = CSRStructure(crow, col, (batch * n, batch * m), rows=row, order=order)
    graph._cache[("csr", batch)] = structure
    return structure


def _entries(inp: AggregateInputs) -> tuple[int, int]:
    """(stored entries, rows x columns) of the batch's CSR matrix, from shapes only.

    ``torch.sparse.sampled_addmm`` fails when a pattern stores more entries than the dense
    matrix has positions, which only duplicate edges can cause (e.g. a RegularGraph repeating a
    key, k > N'): the kernel declines such graphs and ``auto`` takes ``regular``/``coo``.
    """
    batch, n, m = inp.query.shape[0], inp.num_queries, inp.num_keys
    graph = inp.graph
    if isinstance(graph, RegularGraph):
        stored = batch * n * graph.k
        columns = batch * m + int(graph.mask is not None)
    elif isinstance(graph, COOGraph):
        stored, columns = batch * graph.num_edges, batch * m
    else:  # the full graph: every position once
        return batch * n * m, batch * n * batch * m
    return stored, batch * n * columns


def _sddmm(pattern: CSRStructure, a: Tensor, b: Tensor) -> Tensor:
    """(E,) values a[row_e] · b[col_e] for a (rows, C) and b (columns, C)."""
    zeros = a.new_zeros(pattern.nnz)
    out = torch.sparse.sampled_addmm(pattern.matrix(zeros), a, b.t(), beta=0.0)
    return out.values()


def _raw(mode: str, pattern: CSRStructure, q: Tensor, k: Tensor) -> Tensor:
    """(E,) raw interactions: q_i·k_j (SDDMM), or a_i + b_j for concatenation."""
    if mode == "concatenation":  # q (B·N,) = a, k (columns,) = b
        return pattern.per_entry(q) + k.index_select(0, pattern.col)
    return _sddmm(pattern, q, k)


def _weights(
    mode: str, scale: float, pattern: CSRStructure, raw: Tensor, bias: Tensor | None
) -> Tensor:
    logits = edge_logits(mode, scale, raw)
    return pattern.normalise(mode, logits if bias is None else logits + bias)


class _CSRAggregate(torch.autograd.Function):
    """Y = normalise(SDDMM(Q, K)) @ V with sparse-matrix backward (module docstring)."""

    @staticmethod
    def forward(
        ctx: Any,
        mode: str,
        scale: float,
        pattern: CSRStructure,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        bias: Tensor | None,
    ) -> Tensor:
        raw = _raw(mode, pattern, query, key)
        w = _weights(mode, scale, pattern, raw, bias)
        ctx.mode, ctx.scale, ctx.pattern = mode, scale, pattern
        # concatenation needs the sign of the pre-activation; the other modes only w.
        ctx.save_for_backward(query, key, value, w, raw if mode == "concatenation" else None)
        return pattern.matrix(w) @ value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        query, key, value, w, raw = ctx.saved_tensors
        with autocast_off(value.device):  # backward may run inside the caller's autocast
            return _CSRAggregate._backward(ctx, query, key, value, w, raw, grad_out)

    @staticmethod
    def _backward(
        ctx: Any,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        w: Tensor,
        raw: Tensor,
        grad_out: Tensor,
    ) -> tuple[Tensor | None, ...]:
        """:meth:`backward` outside autocast."""
        mode, scale, pattern = ctx.mode, ctx.scale, ctx.pattern
        grad_out = grad_out.contiguous()
        dv = pattern.transposed(w) @ grad_out
        ds = pattern.normalise_backward(mode, w, _sddmm(pattern, grad_out, value))
        dbias = ds if ctx.needs_input_grad[6] else None
        draw = edge_logits_backward(mode, scale, ds, raw)
        if mode == "concatenation":
            dq = pattern.row_sum(draw)
            dk = draw.new_zeros(pattern.shape[1]).index_add_(0, pattern.col, draw)
        else:
            dq = pattern.matrix(draw) @ key
            dk = pattern.transposed(draw) @ query
        return None, None, None, dq, dk, dv, dbias


def csr_aggregate(
    mode: str,
    scale: float,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    graph: RegularGraph | COOGraph,
    bias: Tensor | None = None,
) -> Tensor:
    """Aggregate over ``graph`` by sparse-matrix products: y (B, N, Cv).

    For concatenation, ``query``/``key`` are the scalar halves a (B, N) and b (B, N').
    ``scale`` multiplies the softmax logits (1 for the other modes); ``bias`` adds to them:
    (B, N, k) for a RegularGraph, (B, E) for a COOGraph.
    """
    batch, n = query.shape[0], query.shape[1]
    pattern = csr_structure(graph, batch)
    q, k, v = _flat(query), _flat(key, pattern.padded), _flat(value, pattern.padded)
    entry_bias = None if bias is None else _entry_bias(bias, pattern)
    with autocast_off(value.device):
        y = _CSRAggregate.apply(mode, scale, pattern, q, k, v, entry_bias)
    return y.view(batch, n, value.shape[-1])


def _entry_bias(bias: Tensor, pattern: CSRStructure) -> Tensor:
    """(E_total,) the bias of each stored entry, in CSR order (autograd maps gradients back)."""
    if pattern.order is not None:
        bias = bias.index_select(1, pattern.order)
    return bias.reshape(-1)


def _flat(t: Tensor, null_row: bool = False) -> Tensor:
    """(B, N, C) → contiguous (B·N, C); the concatenation halves (B, N) → (B·N,); with
    ``null_row`` an all-zero row appended (the column that padding entries point at)."""
    flat = (t.flatten(0, 1) if t.dim() == 3 else t.reshape(-1)).contiguous()
    if null_row:
        flat = torch.cat([flat, flat.new_zeros(1, *flat.shape[1:])])
    return flat


class CSRKernel(Kernel):
    """Regular and COO graphs as sparse-matrix products (SDDMM, row softmax, SpMM)."""

    NAME = "csr"
    SUPPORTED_GRAPHS = ("full", "regular", "coo")
    SUPPORTED_MODES = MODES
    SUPPORTED_DTYPES = (torch.float32, torch.float64)
    SUPPORTS_RETURN_ATTENTION = True
    SUPPORTS_EDGE_BIAS = True
    # CPU (MKL) runs row-parallel without atomics; cuSPARSE's products are outside
    # torch.use_deterministic_algorithms: declined on CUDA under the flag (base.Kernel).
    IS_DETERMINISTIC = False

    @classmethod
    def not_supported_reasons(cls, inp: AggregateInputs) -> list[str]:
        reasons = super().not_supported_reasons(inp)
        if _is_compiling():
            reasons.append("torch.compile tracing (sparse tensors do not compile)")
        stored, capacity = _entries(inp)
        if stored > capacity:
            reasons.append(
                f"{stored} edges (duplicates) in a {capacity}-entry query x key matrix "
                "(PyTorch's sampled_addmm needs at most one stored entry per position's worth)"
            )
        return reasons

    @classmethod
    def apply(cls, inp: AggregateInputs) -> tuple[Tensor, Attention | None]:
        with autocast_off(inp.value.device):  # float32 operands stay float32 (module docstring)
            return cls._apply(inp)

    @classmethod
    def _apply(cls, inp: AggregateInputs) -> tuple[Tensor, Attention | None]:
        """:meth:`apply` outside autocast."""
        pw = inp.pairwise
        q, k = pw.operands(inp.query, inp.key)
        graph = (
            inp.graph if isinstance(inp.graph, (RegularGraph, COOGraph)) else inp.regular_graph()
        )
        bias = inp.batched_bias()
        y = csr_aggregate(pw.mode, pw.logit_scale, q, k, inp.value, graph, bias)
        attn = None
        if inp.return_attention:
            attn = _attention(pw.mode, pw.logit_scale, q, k, graph, bias)
        return y, attn


def _attention(
    mode: str,
    scale: float,
    q: Tensor,
    k: Tensor,
    graph: RegularGraph | COOGraph,
    bias: Tensor | None,
) -> Attention:
    """The normalised weights in the graph's own layout (recomputed from q and k)."""
    batch, n = q.shape[0], q.shape[1]
    pattern = csr_structure(graph, batch)
    entry_bias = None if bias is None else _entry_bias(bias, pattern)
    raw = _raw(mode, pattern, _flat(q), _flat(k, pattern.padded))
    w = _weights(mode, scale, pattern, raw, entry_bias)
    if isinstance(graph, RegularGraph):  # padding entries already weigh 0
        return Attention.from_regular(w.view(batch, n, graph.k), graph)
    w = w.view(batch, graph.num_edges)
    if pattern.order is not None:  # back from query order to the order of edge_index
        out = torch.empty_like(w)
        out[:, pattern.order] = w
        w = out
    return Attention.from_coo(w, graph)


def _is_compiling() -> bool:
    """True while ``torch.compile`` traces (sparse tensors cannot be traced)."""
    return bool(torch.compiler.is_compiling())
