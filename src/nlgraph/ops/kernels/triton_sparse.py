r"""The ``triton`` kernel: fused gather, normalisation and weighted sum, O(B·N) saved for backward.

For each query :math:`i` with edges :math:`e = (j \to i)` of a
:class:`~nlgraph.graphs.RegularGraph` (the k slots of the (G, N, k) index, padding slots
excluded) or a :class:`~nlgraph.graphs.COOGraph` (its rows after one stable sort by query):

.. math::
    s_e = f(q_i, k_j) + \beta_e,\qquad
    w_e = \mathrm{normalise}_{e \to i}(s_e),\qquad
    y_i = \sum_{e \to i} w_e\, v_j

with the raw interaction :math:`q_i\cdot k_j` (:math:`a_i + b_j` on the scalar halves for
concatenation), :math:`f` = scale·raw for the softmax modes, raw for the dot product and
ReLU(raw) for concatenation, and the normalisation of :mod:`nlgraph.ops._segment`: a softmax
(computed online: running maximum and sum, the accumulator rescaled chunk by chunk) or the
division by :math:`|N(i)|`, the number of valid slots / edges (duplicates count as many times
as they appear). A query without edges, or whose every logit is :math:`-\infty`, gets
:math:`y_i = 0` and zero gradients; padding slots are never loaded, so NaN in the key/value rows
they nominally point at (or in their bias) never reaches a result.

Forward saves y and one statistic per query (the log-sum-exp :math:`m_i + \log l_i`, or
:math:`|N(i)|`), never an (E, C) tensor. Backward recomputes the logits in two passes:

1. query-major, one program per query: :math:`w_e`, :math:`dw_e = g_i\cdot v_j`,
   :math:`ds_e = w_e (dw_e - g_i\cdot y_i)` (softmax) or :math:`dw_e / |N(i)|` (mean),
   :math:`dr_e = ds_e \cdot \partial f/\partial raw` (scale, or the ReLU mask), then
   :math:`dq_i = \sum_e dr_e\, k_j` (:math:`\sum_e dr_e` for concatenation) and
   :math:`d\beta_e = ds_e`; it writes the two per-edge scalars :math:`w_e, dr_e` (B, E);
2. key-major over the transposed pattern (edges sorted by key with a stable argsort, pointers
   from :func:`torch.searchsorted`), one program per key:
   :math:`dv_j = \sum_e w_e\, g_i` and :math:`dk_j = \sum_e dr_e\, q_i` in a fixed order (no
   atomics: deterministic).

Shapes: q (B, N, C), k (B, N', C), v (B, N', Cv) (concatenation: a (B, N), b (B, N')); bias
(B, N, k) or (B, E). Half precision accumulates in float32, float64 in float64. No tensor value
is read on the host (grid sizes come from shapes). Triton is imported, and the kernels are built,
on first use: ``import nlgraph`` works without it, and Triton's interpreter (TRITON_INTERPRET=1,
read when the kernels are built) runs them on CPU tensors, which is how they are tested.
"""

from __future__ import annotations

import functools
import importlib
import os
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ...attention import Attention
from ...graphs.base import COOGraph, RegularGraph
from ...pairwise import MODES, SOFTMAX_MODES
from ..inputs import AggregateInputs
from .base import Kernel, wide_operands
from .csr import _pointers, _stable_argsort

if TYPE_CHECKING:
    import triton.language as tl  # type: ignore[import-untyped]

__all__ = ["TritonKernel", "TritonPattern", "triton_aggregate", "triton_available"]

#: Upper bound on the elements of one gathered (edges × channels) tile: the edge block shrinks
#: as channels grow so that a program's tile stays in registers.
TILE_ELEMENTS = 4096
#: Most edges loaded per loop iteration (larger rows loop over several chunks).
MAX_EDGE_BLOCK = 32
#: Fewest edges per iteration of a CSR row (rows of unknown length: small blocks waste lanes,
#: a too small one loops often).
MIN_EDGE_BLOCK = 8
#: Warps per program (one query or one key per program: small tiles).
NUM_WARPS = 4
#: Kernel mode codes: the softmax modes, the dot product, concatenation.
_SOFTMAX, _DOT, _CONCAT = 0, 1, 2
_INSTALL = "needs the optional package 'triton' (pip install \"nlgraph[triton]\")"


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether ``triton`` can be imported (cached)."""
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def _interpreting() -> bool:
    """Whether TRITON_INTERPRET asks for Triton's interpreter (as Triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


# --------------------------------------------------------------------------- device code
# The kernels use only Triton builtins: reductions are ``tl.reduce`` with Triton's own combine
# functions, zeros are ``tl.full``. ``tl.sum``/``tl.max``/``tl.zeros`` are ``@triton.jit``
# functions, fixed as compiled or interpreted when ``triton`` is first imported, so they fail in
# the interpreter once anything (e.g. ``torch.compile``) imported triton without
# TRITON_INTERPRET=1; builtins follow the mode the kernels were built in. Rows of unknown length
# loop with ``while`` (the interpreter cannot ``range`` over loaded bounds). Mode codes: 0
# softmax modes, 1 dot product, 2 concatenation (scalar halves a, b).
def _query_major(
    q_ptr, k_ptr, v_ptr, col_ptr, mask_ptr, rowptr_ptr, eid_ptr, bias_ptr, scale_ptr,
    y_ptr, stat_ptr, gy_ptr, dq_ptr, w_ptr, dr_ptr, dbias_ptr,
    N, M, C, CV, E, K, col_sb, bias_sb,
    MODE: tl.constexpr, IS_CSR: tl.constexpr, HAS_MASK: tl.constexpr, HAS_EID: tl.constexpr,
    HAS_BIAS: tl.constexpr, BACKWARD: tl.constexpr, NEED_DBIAS: tl.constexpr,
    ACC: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_CV: tl.constexpr,
):  # fmt: skip
    """One query per program: forward (y, stat) or backward pass 1 (dq, w_e, dr_e, dβ_e)."""
    pid = tl.program_id(0).to(tl.int64)
    b = pid // N
    row = pid  # b·N + i
    if IS_CSR:
        start = tl.load(rowptr_ptr + pid % N)
        end = tl.load(rowptr_ptr + pid % N + 1)
    else:
        start = (pid % N) * K
        end = start + K
    offs_e = tl.arange(0, BLOCK_E)
    offs_c = tl.arange(0, BLOCK_C)
    offs_v = tl.arange(0, BLOCK_CV)
    in_c = offs_c < C
    in_v = offs_v < CV
    scale = tl.load(scale_ptr).to(ACC)
    if MODE == 2:
        qa = tl.load(q_ptr + row).to(ACC)
    else:
        q = tl.load(q_ptr + row * C + offs_c, mask=in_c, other=0.0).to(ACC)
    stat = tl.full([], 0.0, ACC)
    if BACKWARD:
        stat = tl.load(stat_ptr + row).to(ACC)
        gy = tl.load(gy_ptr + row * CV + offs_v, mask=in_v, other=0.0).to(ACC)
        yv = tl.load(y_ptr + row * CV + offs_v, mask=in_v, other=0.0).to(ACC)
        delta = tl.reduce(gy * yv, 0, tl.standard._sum_combine)  # Σ_e w_e dw_e = g_i·y_i
        count = tl.maximum(stat, 1.0)
        if MODE == 2:
            dqa = tl.full([], 0.0, ACC)
        else:
            dq = tl.full([BLOCK_C], 0.0, ACC)
    else:
        m = tl.full([], float("-inf"), ACC)
        total = tl.full([], 0.0, ACC)
        acc = tl.full([BLOCK_CV], 0.0, ACC)
    s0 = start
    while s0 < end:
        e = s0 + offs_e
        inside = e < end
        col = tl.load(col_ptr + b * col_sb + e, mask=inside, other=0)
        live = inside
        if HAS_MASK:
            live = inside & (tl.load(mask_ptr + b * col_sb + e, mask=inside, other=0) != 0)
        krow = b * M + col
        if MODE == 2:
            raw = qa + tl.load(k_ptr + krow, mask=live, other=0.0).to(ACC)
            logit = tl.maximum(raw, 0.0)
        else:
            kt = tl.load(
                k_ptr + krow[:, None] * C + offs_c[None, :],
                mask=live[:, None] & in_c[None, :],
                other=0.0,
            ).to(ACC)
            raw = tl.reduce(kt * q[None, :], 1, tl.standard._sum_combine)
            logit = raw * scale if MODE == 0 else raw
        if HAS_EID:
            bidx = tl.load(eid_ptr + e, mask=inside, other=0)
        else:
            bidx = e
        if HAS_BIAS:
            logit += tl.load(bias_ptr + b * bias_sb + bidx, mask=live, other=0.0).to(ACC)
        vt = tl.load(
            v_ptr + krow[:, None] * CV + offs_v[None, :],
            mask=live[:, None] & in_v[None, :],
            other=0.0,
        ).to(ACC)
        if BACKWARD:
            dw = tl.reduce(vt * gy[None, :], 1, tl.standard._sum_combine)
            if MODE == 0:
                w = tl.where(live, tl.exp(tl.where(live, logit, float("-inf")) - stat), 0.0)
                ds = w * (dw - delta)
                dr = ds * scale
            else:
                w = tl.where(live, logit / count, 0.0)
                ds = tl.where(live, dw / count, 0.0)
                dr = tl.where(raw > 0, ds, 0.0) if MODE == 2 else ds
            if MODE == 2:
                dqa += tl.reduce(dr, 0, tl.standard._sum_combine)
            else:
                dq += tl.reduce(dr[:, None] * kt, 0, tl.standard._sum_combine)
            tl.store(w_ptr + b * E + e, w.to(w_ptr.dtype.element_ty), mask=inside)
            tl.store(dr_ptr + b * E + e, dr.to(dr_ptr.dtype.element_ty), mask=inside)
            if NEED_DBIAS:
                tl.store(dbias_ptr + b * E + bidx, ds.to(dbias_ptr.dtype.element_ty), mask=inside)
        else:
            if MODE == 0:  # online softmax
                s = tl.where(live, logit, float("-inf"))
                m_new = tl.maximum(m, tl.reduce(s, 0, tl.standard._elementwise_max))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                p = tl.where(live, tl.exp(s - m_safe), 0.0)
                alpha = tl.exp(m - m_safe)
                total = total * alpha + tl.reduce(p, 0, tl.standard._sum_combine)
                acc = acc * alpha + tl.reduce(p[:, None] * vt, 0, tl.standard._sum_combine)
                m = m_new
            else:
                total += tl.reduce(live.to(ACC), 0, tl.standard._sum_combine)
                acc += tl.reduce(
                    tl.where(live, logit, 0.0)[:, None] * vt, 0, tl.standard._sum_combine
                )
        s0 += BLOCK_E
    if BACKWARD:
        if MODE == 2:
            tl.store(dq_ptr + row, dqa.to(dq_ptr.dtype.element_ty))
        else:
            tl.store(dq_ptr + row * C + offs_c, dq.to(dq_ptr.dtype.element_ty), mask=in_c)
    else:
        nonempty = total > 0
        den = tl.where(nonempty, total, 1.0)
        if MODE == 0:  # log-sum-exp; +inf for an empty row makes every recomputed w_e zero
            m_safe = tl.where(m == float("-inf"), 0.0, m)
            stat = tl.where(nonempty, m_safe + tl.log(den), float("inf"))
        else:
            stat = total
        y = acc / den
        tl.store(y_ptr + row * CV + offs_v, y.to(y_ptr.dtype.element_ty), mask=in_v)
        tl.store(stat_ptr + row, stat.to(stat_ptr.dtype.element_ty))


def _key_major(
    q_ptr, gy_ptr, w_ptr, dr_ptr, tptr_ptr, tpos_ptr, tquery_ptr, dk_ptr, dv_ptr,
    N, M, C, CV, E, t_sb,
    MODE: tl.constexpr, NEED_DK: tl.constexpr, NEED_DV: tl.constexpr, ACC: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_CV: tl.constexpr,
):  # fmt: skip
    """Backward pass 2, one key per program: dv_j = Σ w_e g_i, dk_j = Σ dr_e q_i (fixed order)."""
    pid = tl.program_id(0).to(tl.int64)
    b = pid // M
    base = b * t_sb + pid % M
    start = tl.load(tptr_ptr + base)
    end = tl.load(tptr_ptr + base + 1)
    offs_e = tl.arange(0, BLOCK_E)
    offs_c = tl.arange(0, BLOCK_C)
    offs_v = tl.arange(0, BLOCK_CV)
    in_c = offs_c < C
    in_v = offs_v < CV
    dv = tl.full([BLOCK_CV], 0.0, ACC)
    dk = tl.full([BLOCK_C], 0.0, ACC)
    dkb = tl.full([], 0.0, ACC)
    s0 = start
    while s0 < end:
        t = s0 + offs_e
        live = t < end
        pos = tl.load(tpos_ptr + t, mask=live, other=0)
        qrow = b * N + tl.load(tquery_ptr + t, mask=live, other=0)
        if NEED_DV:
            w = tl.load(w_ptr + b * E + pos, mask=live, other=0.0).to(ACC)
            gt = tl.load(
                gy_ptr + qrow[:, None] * CV + offs_v[None, :],
                mask=live[:, None] & in_v[None, :],
                other=0.0,
            ).to(ACC)
            dv += tl.reduce(w[:, None] * gt, 0, tl.standard._sum_combine)
        if NEED_DK:
            dr = tl.load(dr_ptr + b * E + pos, mask=live, other=0.0).to(ACC)
            if MODE == 2:
                dkb += tl.reduce(dr, 0, tl.standard._sum_combine)
            else:
                qt = tl.load(
                    q_ptr + qrow[:, None] * C + offs_c[None, :],
                    mask=live[:, None] & in_c[None, :],
                    other=0.0,
                ).to(ACC)
                dk += tl.reduce(dr[:, None] * qt, 0, tl.standard._sum_combine)
        s0 += BLOCK_E
    if NEED_DV:
        tl.store(dv_ptr + pid * CV + offs_v, dv.to(dv_ptr.dtype.element_ty), mask=in_v)
    if NEED_DK:
        if MODE == 2:
            tl.store(dk_ptr + pid, dkb.to(dk_ptr.dtype.element_ty))
        else:
            tl.store(dk_ptr + pid * C + offs_c, dk.to(dk_ptr.dtype.element_ty), mask=in_c)


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool) -> SimpleNamespace:
    """The jitted kernels, built on first use; ``interpret`` (TRITON_INTERPRET when built) is the
    cache key because Triton chooses interpreter or compiler when ``triton.jit`` runs."""
    triton = importlib.import_module("triton")
    globals()["tl"] = importlib.import_module("triton.language")  # the kernels' global ``tl``
    return SimpleNamespace(
        query_major=triton.jit(_query_major), key_major=triton.jit(_key_major), tl=globals()["tl"]
    )


# --------------------------------------------------------------------------- host side
class TritonPattern:
    """The edges of one graph as rows per query, and (lazily) rows per key; cached on the graph.

    Attributes:
        col (Tensor): (G, E) int64 key of each edge slot, G = 1 (shared) or B; edge slots of a
            RegularGraph are its (N·k) flattened slots, of a COOGraph its edges sorted by query.
        mask (Tensor, optional): (G, E) uint8, 0 on padding slots (RegularGraph only).
        k (int | None): the row length of a RegularGraph, ``None`` for CSR rows.
        rowptr (Tensor, optional): (N + 1,) row pointers (COOGraph only).
        order (Tensor, optional): (E,) position in ``edge_index`` of each sorted edge (COOGraph).
        query (Tensor): (E,) int64 query of each edge slot (shared by the G graphs).
    """

    def __init__(self, graph: RegularGraph | COOGraph) -> None:
        self.num_keys = graph.num_keys
        self.mask: Tensor | None = None
        self.rowptr: Tensor | None = None
        self.order: Tensor | None = None
        self.k: int | None = None
        if isinstance(graph, RegularGraph):
            g, n, k = graph.index.shape
            self.k = k
            self.col = graph.index.reshape(g, n * k).contiguous()
            if graph.mask is not None:
                self.mask = graph.mask.reshape(g, n * k).contiguous().view(torch.uint8)
            self.query = torch.arange(n, device=self.col.device).repeat_interleave(k)
        else:
            src, dst = graph.edge_index
            self.order = _stable_argsort(dst, graph.num_queries)
            self.query = dst.index_select(0, self.order)
            self.col = src.index_select(0, self.order).unsqueeze(0)
            self.rowptr = _pointers(self.query, graph.num_queries)
        self._transposed: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def graphs(self) -> int:
        """G, the number of graphs (1: shared by the batch)."""
        return self.col.shape[0]

    @property
    def edges(self) -> int:
        """E, edge slots per graph (padding slots included)."""
        return self.col.shape[1]

    def transposed(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(tptr, tpos, tquery)``: (G·N' + 1,) pointers of the edges sorted by (graph, key)
        with a stable argsort (padding slots last, outside every row), each edge's slot in
        its graph and its query (both (G·E,)). Built once."""
        if self._transposed is None:
            g, e, m = self.graphs, self.edges, self.num_keys
            keys = self.col + torch.arange(g, device=self.col.device).unsqueeze(1) * m
            if self.mask is not None:  # padding slots sort after every real key
                keys = torch.where(self.mask.bool(), keys, g * m)
            perm = _stable_argsort(keys.reshape(-1), g * m + 1)
            tptr = _pointers(keys.reshape(-1).index_select(0, perm), g * m + 1)[: g * m + 1]
            tpos = perm % e
            self._transposed = (tptr, tpos, self.query.index_select(0, tpos))
        return self._transposed


def _pattern(graph: RegularGraph | COOGraph) -> TritonPattern:
    """``graph``'s :class:`TritonPattern`, built on first use and kept in its cache."""
    cached = graph._cache.get("triton")
    if cached is None:
        cached = graph._cache["triton"] = TritonPattern(graph)
    return cached


def _edge_block(degree: int, width: int, floor: int = 1) -> int:
    """Edges per loop iteration: the (expected) row length ``degree`` rounded up to a power of
    two, at least ``floor``, at most :data:`MAX_EDGE_BLOCK` and :data:`TILE_ELEMENTS` //
    ``width`` (``width``: the widest gathered row, a power of two)."""
    cap = max(1, min(MAX_EDGE_BLOCK, TILE_ELEMENTS // width))
    return min(cap, max(floor, _pow2(degree)))


def _pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): block sizes must be powers of two."""
    return 1 << max(0, n - 1).bit_length()


class _TritonAggregate(torch.autograd.Function):
    """y = Σ_e w_e v_j with the two-pass recomputing backward (see the module docstring)."""

    @staticmethod
    def forward(
        ctx: Any,
        mode: str,
        scale: float,
        pattern: TritonPattern,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        bias: Tensor | None,
    ) -> Tensor:
        kern = _kernels(_interpreting())
        batch, n, cv = query.shape[0], query.shape[1], value.shape[-1]
        acc = torch.float64 if value.dtype == torch.float64 else torch.float32
        y = value.new_empty(batch, n, cv)
        stat = torch.empty(batch, n, dtype=acc, device=value.device)
        ctx.mode, ctx.pattern, ctx.acc = mode, pattern, acc
        ctx.scale = torch.full((1,), scale, dtype=acc, device=value.device)
        ctx.save_for_backward(query, key, value, bias, y, stat)
        if batch * n:
            _query_major_launch(ctx, kern, query, key, value, bias, y, stat, None, None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        query, key, value, bias, y, stat = ctx.saved_tensors
        kern = _kernels(_interpreting())
        pattern, mode, acc = ctx.pattern, ctx.mode, ctx.acc
        need_q, need_k, need_v, need_b = ctx.needs_input_grad[3:7]
        batch, n, m = query.shape[0], query.shape[1], key.shape[1]
        e = pattern.edges
        grad_out = grad_out.contiguous()
        w = torch.empty(batch, max(e, 1), dtype=acc, device=value.device)
        dr = torch.empty_like(w)
        dq = torch.empty_like(query)
        dbias = None
        if bias is not None and need_b:  # every slot written (0 on padding)
            dbias = bias.new_empty(batch, *bias.shape[1:])
        if batch * n:
            _query_major_launch(
                ctx, kern, query, key, value, bias, y, stat, (grad_out, dq, w, dr), dbias
            )
        dk = torch.empty_like(key) if need_k else None
        dv = torch.empty_like(value) if need_v else None
        if (need_k or need_v) and batch * m:
            tptr, tpos, tquery = pattern.transposed()
            c = 1 if mode == "concatenation" else key.shape[-1]
            cv = value.shape[-1]
            kern.key_major[(batch * m,)](
                query, grad_out, w, dr, tptr, tpos, tquery,
                key if dk is None else dk, value if dv is None else dv,
                n, m, c, cv, e, m if pattern.graphs > 1 else 0,
                MODE=_mode_code(mode), NEED_DK=dk is not None, NEED_DV=dv is not None,
                ACC=_tl_dtype(kern, acc),
                BLOCK_E=_edge_block(-(-e // max(1, m)), max(_pow2(c), _pow2(cv)), MIN_EDGE_BLOCK),
                BLOCK_C=_pow2(c), BLOCK_CV=_pow2(cv), num_warps=NUM_WARPS,
            )  # fmt: skip
        return None, None, None, dq if need_q else None, dk, dv, dbias


def _query_major_launch(
    ctx: Any,
    kern: SimpleNamespace,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    bias: Tensor | None,
    y: Tensor,
    stat: Tensor,
    grads: tuple[Tensor, Tensor, Tensor, Tensor] | None,
    dbias: Tensor | None,
) -> None:
    """Launch :func:`_query_major`: forward when ``grads`` is None, else backward pass 1 with
    ``grads`` = (grad_out, dq, w, dr) and ``dbias`` (or None)."""
    pattern: TritonPattern = ctx.pattern
    batch, n, m = query.shape[0], query.shape[1], key.shape[1]
    concat = ctx.mode == "concatenation"
    c, cv = (1 if concat else query.shape[-1]), value.shape[-1]
    gy, dq, w, dr = grads if grads is not None else (y, y, stat, stat)
    col, mask = pattern.col, pattern.mask
    csr = pattern.k is None
    width = max(_pow2(c), _pow2(cv))
    if csr:  # rows of unknown length: the mean degree, from shapes (no host read)
        block = _edge_block(-(-pattern.edges // max(1, n)), width, MIN_EDGE_BLOCK)
    else:
        block = _edge_block(pattern.k or 1, width)
    kern.query_major[(batch * n,)](
        query, key, value, col, col if mask is None else mask,
        col if pattern.rowptr is None else pattern.rowptr,
        col if pattern.order is None else pattern.order,
        stat if bias is None else bias, ctx.scale, y, stat, gy, dq, w, dr,
        stat if dbias is None else dbias,
        n, m, c, cv, pattern.edges, pattern.k or 0,
        pattern.edges if pattern.graphs > 1 else 0, 0 if bias is None else bias.stride(0),
        MODE=_mode_code(ctx.mode), IS_CSR=csr, HAS_MASK=mask is not None,
        HAS_EID=pattern.order is not None and bias is not None, HAS_BIAS=bias is not None,
        BACKWARD=grads is not None, NEED_DBIAS=dbias is not None, ACC=_tl_dtype(kern, stat.dtype),
        BLOCK_E=block, BLOCK_C=_pow2(c), BLOCK_CV=_pow2(cv),
        num_warps=NUM_WARPS,
    )  # fmt: skip


def _mode_code(mode: str) -> int:
    """The kernels' MODE: 0 softmax modes, 1 dot product, 2 concatenation."""
    if mode in SOFTMAX_MODES:
        return _SOFTMAX
    return _CONCAT if mode == "concatenation" else _DOT


def _tl_dtype(kern: SimpleNamespace, dtype: torch.dtype) -> Any:
    """The Triton accumulation dtype (ACC) for the torch dtype of the statistics."""
    return kern.tl.float64 if dtype == torch.float64 else kern.tl.float32


def triton_aggregate(
    mode: str,
    scale: float,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    graph: RegularGraph | COOGraph,
    bias: Tensor | None = None,
) -> Tensor:
    """Aggregate over ``graph`` with the fused Triton kernels: y (B, N, Cv).

    For concatenation, ``query``/``key`` are the scalar halves a (B, N) and b (B, N').
    ``scale`` multiplies the softmax logits (1 for the other modes); ``bias`` (B, N, k) for a
    RegularGraph or (B, E) for a COOGraph (``edge_index`` order; a stride-0 batch is not copied)
    adds to them.
    """
    pattern = _pattern(graph)
    if bias is not None and not bias[:1].is_contiguous():
        bias = bias.contiguous()
    query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
    return _TritonAggregate.apply(mode, scale, pattern, query, key, value, bias)


class TritonKernel(Kernel):
    """Fused Triton gather–normalise–sum over a RegularGraph or COOGraph (module docstring).

    float16, bfloat16 (float32 accumulation), float32 and float64 (float64 arithmetic: the
    interpreter runs it in NumPy, CUDA in double precision).
    """

    NAME = "triton"
    SUPPORTED_GRAPHS = ("regular", "coo")
    SUPPORTED_MODES = MODES
    SUPPORTS_EDGE_BIAS = True
    IS_DETERMINISTIC = True  # fixed-order reductions, no atomics
    REQUIRES = "triton"

    @classmethod
    def not_supported_reasons(cls, inp: AggregateInputs) -> list[str]:
        reasons = super().not_supported_reasons(inp)
        if not triton_available():
            reasons.append(_INSTALL)
        elif inp.query.device.type == "cpu" and not _interpreting():
            reasons.append("CPU tensors run only in Triton's interpreter (TRITON_INTERPRET=1)")
        if torch.compiler.is_compiling():
            reasons.append("torch.compile tracing (the kernel launches are not traced)")
        return reasons

    @classmethod
    def apply(cls, inp: AggregateInputs) -> tuple[Tensor, Attention | None]:
        pw = inp.pairwise
        q, k = wide_operands(pw, inp.query, inp.key)  # concatenation halves in float32
        graph = inp.graph
        assert isinstance(graph, (RegularGraph, COOGraph))  # SUPPORTED_GRAPHS
        y = triton_aggregate(pw.mode, pw.logit_scale, q, k, inp.value, graph, inp.batched_bias())
        return y, None
