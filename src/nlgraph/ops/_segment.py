r"""The one normalisation over a neighbour set, shared by every kernel.

Every nlgraph aggregation is :math:`y_i = \sum_{j \in N(i)} w_{ij} v_j` with the weights of a
query normalised over its neighbours, in one of two ways (:mod:`nlgraph.pairwise` says which):

.. math::
    \text{softmax:}\quad w_{ij} = \frac{\exp(s_{ij} - m_i)}{\sum_{j' \in N(i)}
    \exp(s_{ij'} - m_i)},\qquad
    \text{mean:}\quad w_{ij} = \frac{s_{ij}}{\max(1, |N(i)|)},

with :math:`m_i` the largest finite logit of the query (stabilisation; no gradient). The edges
come in one of three layouts:

- **rows**: a (..., k) block of k slots per query, some of them padding (``mask`` False):
  the regular (ELL) layout of :class:`~nlgraph.graphs.RegularGraph`, and the dense all-pairs
  matrix (k = N', no mask);
- **segments** with a CSR ``ptr``: entries sorted by query, row i holding entries
  ``ptr[i]:ptr[i+1]``;
- **segments** with a COO query index: any order, entry e belonging to query ``index[e]``.

**Empty rows.** One policy everywhere: a query with no neighbour, or whose every edge is
dropped by a :math:`-\infty` logit, gets all-zero weights, hence :math:`y_i = 0` and zero
gradients (never NaN). Padding slots get weight 0 whatever their logit holds (NaN included).

**Precision.** Half-precision inputs (float16, bfloat16, e.g. logits produced under
:func:`torch.autocast`) are normalised in float32 (:func:`accumulation_dtype`): the maximum, the
exponentials, the row sums and the division, forward and backward; only the result is rounded
back to the input's dtype. A kernel that wants float32 weights passes float32 logits.

Nothing here reads a tensor value on the host: the functions run under ``torch.compile`` and
on CUDA without synchronising. The segment sums and maxima run on torch-scatter when it is
installed (:mod:`nlgraph.ops.kernels._scatter`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .kernels._scatter import segment_amax, segment_sum

__all__ = [
    "Segments",
    "accumulation_dtype",
    "normalise_rows",
    "normalise_rows_backward",
    "normalise_segments",
    "normalise_segments_backward",
]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums and normalisations run in: float32 for float16/bfloat16, else ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _finite_or_zero(top: Tensor) -> Tensor:
    """The row maxima with -inf (an empty or fully dropped row) replaced by 0."""
    return torch.where(torch.isfinite(top), top, torch.zeros_like(top))


def _safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """num / den with den floored at the smallest positive normal (0 / 0 gives 0)."""
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


# --------------------------------------------------------------------------- rows layout
def normalise_rows(kind: str, logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Weights of every slot of (..., k) rows, normalised over the last axis.

    Args:
        kind (str): ``"softmax"`` or ``"mean"``.
        logits (Tensor): (..., k) scores s (for ``"mean"``: the pairwise values f).
        mask (Tensor, optional): (..., k) bool (broadcastable), False on padding slots; ``None``:
            every slot is an edge.

    Returns:
        Tensor: (..., k) weights in ``logits``' dtype (computed in :func:`accumulation_dtype`),
        0 on padding, rows of an empty query all 0.
    """
    dtype = logits.dtype
    return _normalise_rows(kind, logits.to(accumulation_dtype(dtype)), mask).to(dtype)


def _normalise_rows(kind: str, logits: Tensor, mask: Tensor | None) -> Tensor:
    """:func:`normalise_rows` in the dtype of ``logits``."""
    if kind == "softmax":
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        top = _finite_or_zero(logits.detach().amax(-1, keepdim=True))
        e = torch.exp(logits - top)
        return _safe_divide(e, e.sum(-1, keepdim=True))
    if mask is None:
        return logits / max(1, logits.shape[-1])
    count = mask.sum(-1, keepdim=True).clamp_min(1).to(logits.dtype)
    return logits.masked_fill(~mask, 0.0) / count


def normalise_rows_backward(
    kind: str, weights: Tensor, grad_weights: Tensor, mask: Tensor | None = None
) -> Tensor:
    """The gradient of :func:`normalise_rows` with respect to its logits.

    ``weights`` are its output and ``grad_weights`` the gradient of the loss with respect to
    them (both (..., k)): softmax :math:`w \\odot (g - \\sum_l w_l g_l)`, mean
    :math:`g\\, M / \\max(1, \\sum_l M_l)`. Computed in :func:`accumulation_dtype`, returned
    in ``grad_weights``' dtype.
    """
    dtype = grad_weights.dtype
    acc = accumulation_dtype(dtype)
    return _normalise_rows_backward(kind, weights.to(acc), grad_weights.to(acc), mask).to(dtype)


def _normalise_rows_backward(
    kind: str, weights: Tensor, grad_weights: Tensor, mask: Tensor | None
) -> Tensor:
    """:func:`normalise_rows_backward` in the dtype of its operands."""
    if kind == "softmax":
        return weights * (grad_weights - (weights * grad_weights).sum(-1, keepdim=True))
    if mask is None:
        return grad_weights / max(1, grad_weights.shape[-1])
    count = mask.sum(-1, keepdim=True).clamp_min(1).to(grad_weights.dtype)
    return grad_weights.masked_fill(~mask, 0.0) / count


# --------------------------------------------------------------------------- segments layout
@dataclass(frozen=True, eq=False)
class Segments:
    """How E flat entries group into ``size`` queries (the CSR or COO layout).

    Attributes:
        index (Tensor): (E,) int64 query of every entry (any order).
        size (int): the number of queries R (rows), empty ones included.
        ptr (Tensor, optional): (R + 1,) row pointers when the entries are sorted by query;
            then the entry counts are its differences.
    """

    index: Tensor
    size: int
    ptr: Tensor | None = None

    def count(self, dtype: torch.dtype) -> Tensor:
        """(R,) entries per query, as ``dtype``."""
        if self.ptr is not None:
            return self.ptr.diff().to(dtype)
        ones = torch.ones(self.index.shape[0], dtype=dtype, device=self.index.device)
        return segment_sum(ones, self.index, self.size)

    def row_sum(self, values: Tensor) -> Tensor:
        """(R, ...) sums of ``values`` (E, ...) over each query's entries."""
        return segment_sum(values, self.index, self.size)

    def per_entry(self, per_row: Tensor) -> Tensor:
        """(E, ...) the value of each entry's query, from ``per_row`` (R, ...)."""
        return per_row.index_select(0, self.index)


def normalise_segments(kind: str, logits: Tensor, seg: Segments) -> Tensor:
    """Weights (E,) of flat entries normalised over each query's entries (see the module
    docstring); ``logits`` (E,). Computed in :func:`accumulation_dtype`, returned in
    ``logits``' dtype."""
    dtype = logits.dtype
    logits = logits.to(accumulation_dtype(dtype))
    if kind == "softmax":
        top = _finite_or_zero(segment_amax(logits.detach(), seg.index, seg.size))
        e = torch.exp(logits - seg.per_entry(top))
        return _safe_divide(e, seg.per_entry(seg.row_sum(e))).to(dtype)
    return (logits / seg.per_entry(seg.count(logits.dtype).clamp_min(1))).to(dtype)


def normalise_segments_backward(
    kind: str, weights: Tensor, grad_weights: Tensor, seg: Segments
) -> Tensor:
    """The gradient of :func:`normalise_segments` with respect to its logits (all (E,)),
    computed in :func:`accumulation_dtype` and returned in ``grad_weights``' dtype."""
    dtype = grad_weights.dtype
    acc = accumulation_dtype(dtype)
    weights, grad_weights = weights.to(acc), grad_weights.to(acc)
    if kind == "softmax":
        ds = weights * (grad_weights - seg.per_entry(seg.row_sum(weights * grad_weights)))
    else:
        ds = grad_weights / seg.per_entry(seg.count(acc).clamp_min(1))
    return ds.to(dtype)
