r"""Exact, tie-aware top-k: the one implementation every nlgraph graph builder uses.

``torch.topk`` returns the right *values*, but which of several equal entries it keeps is
unspecified (and differs between devices). nlgraph's builders promise more: of equal scores the
**lower index wins**, on every device, so that a graph is a function of its inputs alone. This
module provides that without reading any tensor value on the host (no ``.item()``,
``nonzero`` or data-dependent branch), so it runs under ``torch.compile`` and on CUDA without
synchronising.

**Ranking key.** A float32 score and its column form one int64 key: the score's bits, mapped to
an integer of the same order, in the high half and the reversed column in the low half. Keys are
distinct, order like (score, then lower column first), and one ``torch.topk`` on them is the
exact tie-aware top-k. float16/bfloat16 scores are widened to float32 (exactly); float64 scores,
which do not fit beside a column, take a two-pass selection instead (:func:`_select`).

**Groups.** Long rows are cut into groups of G columns. Let t be the k-th best entry of a row.
Fewer than k entries beat t, so fewer than k groups have a best entry beating t; the k groups
with the best maxima, ties towards the lower group, therefore keep all of them, and the groups
of best entry t that they keep are the lowest-indexed ones, each holding an entry equal to t at
a lower index than every entry of a dropped group. So the k best entries of the row, ties
towards the lower index, all lie among the k·G candidate columns of the chosen groups, and the
top-k runs on those only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["topk_tie_low"]


def _group_width(m: int) -> int:
    """Columns per group for rows of length ``m`` (measured on CPU: 64 from 8192 columns on,
    32 from 2048, 8 below: short rows, e.g. the clustered search's candidates, need narrow
    groups for the candidate stage to be much shorter than the row)."""
    return 64 if m >= 8192 else 32 if m >= 2048 else 8


def topk_tie_low(scores: Tensor, k: int, *, largest: bool = True, order: str = "index") -> Tensor:
    """Indices of the k best entries of every row, ties towards the lower index (exact).

    Args:
        scores (Tensor): (..., M) floating-point rows. NaN entries rank last, level with
            -inf (unlike ``torch.topk``, which ranks them first): one non-finite feature must
            not become every query's nearest neighbour. NaN entries of a float32 ``scores``
            are overwritten with -inf in place (the builders pass their own score buffers).
        k (int): entries per row, k >= 1; ``k >= M`` returns every index.
        largest (bool): best = largest (``True``) or smallest (``False``). (default: ``True``)
        order (str): ``"index"``: each row's indices ascending; ``"score"``: best first, equal
            scores in ascending index. (default: ``"index"``)

    Returns:
        Tensor: (..., min(k, M)) int64 indices.

    Example:
        >>> topk_tie_low(torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]]), 2)
        tensor([[1, 2]])
    """
    m = scores.shape[-1]
    lead = scores.shape[:-1]
    if k >= m and order == "index":
        return torch.arange(m, device=scores.device).expand(*lead, m)
    rows = scores.reshape(-1, m)
    if rows.dtype in (torch.float16, torch.bfloat16):
        rows = rows.float()
    if not largest:
        rows = -rows
    # NaN ranks last: -inf (in place: one cheap pass, ~4% of the exact builder's time).
    rows = torch.nan_to_num_(rows, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    if k >= m:
        return torch.sort(rows, dim=1, descending=True, stable=True).indices.reshape(*lead, m)
    group = _group_width(m)
    n_groups = -(-m // group)
    if n_groups <= k + 1:
        index = _best(rows, k)
    else:
        index = _grouped(rows, k, group, n_groups)
    if order == "index":
        index = torch.sort(index, dim=1).values
    return index.reshape(*lead, k)


def _best(rows: Tensor, k: int) -> Tensor:
    """(R, k) indices of the k largest entries of each row of ``rows`` (R, L), best first,
    equal entries in ascending index."""
    if rows.dtype != torch.float32:
        return _select(rows, k)
    length = rows.shape[1]
    bits = (rows + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into 0.0: equal scores, equal keys
    flip = bits >> 31  # all ones for a negative float, 0 otherwise
    flip &= 0x7FFFFFFF
    bits ^= flip  # negative floats: reverse their magnitude bits (integer order = float order)
    del flip
    key = bits.to(torch.int64)
    del bits
    key <<= 32
    key |= torch.arange(length - 1, -1, -1, device=rows.device)  # lower column, larger key
    return torch.topk(key, k, dim=1).indices


def _select(rows: Tensor, k: int) -> Tensor:
    """:func:`_best` for scores that do not fit a packed key (float64): with t the k-th
    largest value of a row, the entries above t are those of ``torch.topk``'s k that exceed t;
    the rest are the first entries equal to t in index order."""
    length = rows.shape[1]
    values, index = torch.topk(rows, k, dim=1, sorted=True)
    kth = values[:, k - 1 :]
    above = values > kth
    need = k - above.sum(1, keepdim=True)
    pos = torch.arange(length, device=rows.device)
    first_tied = torch.topk(
        torch.where(rows == kth, pos, pos + length), k, dim=1, largest=False, sorted=True
    ).indices
    slot = torch.arange(k, device=rows.device)
    picks = torch.cat(
        [torch.where(above, index, length), torch.where(slot < need, first_tied, length)], dim=1
    )
    picks = torch.sort(picks, dim=1).values[:, :k]  # exactly k picks lie below ``length``
    order = torch.sort(rows.gather(1, picks), dim=1, descending=True, stable=True).indices
    return picks.gather(1, order)


def _grouped(rows: Tensor, k: int, group: int, n_groups: int) -> Tensor:
    """:func:`_best` among the k groups of ``group`` columns with the largest maxima."""
    n_rows, m = rows.shape
    if n_groups * group != m:
        rows = F.pad(rows, (0, n_groups * group - m), value=float("-inf"))
    grouped = rows.contiguous().view(n_rows * n_groups, group)
    gmax = grouped.amax(-1).view(n_rows, n_groups)
    chosen = torch.sort(_best(gmax, k), dim=1).values  # ascending: candidates keep index order
    # Whole groups are copied as rows of the (rows · groups, group) view: a contiguous
    # index_select, several times faster than an element-wise gather.
    offset = torch.arange(n_rows, device=rows.device).unsqueeze(1) * n_groups
    cand = grouped.index_select(0, (chosen + offset).flatten()).view(n_rows, k * group)
    pos = _best(cand, k)
    return chosen.gather(1, pos // group) * group + pos % group
