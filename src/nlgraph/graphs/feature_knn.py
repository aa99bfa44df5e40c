r"""k nearest keys in feature space, built inside a block's forward (exact, blocked, no grad).

For each query i of each sample, keep the k keys j with the best score:

- ``metric="logit"``: the largest unscaled logit :math:`q_i \cdot k_j` (θ_i·φ_j; the raw input
  in the Gaussian mode) — the keys that would dominate the embedded-Gaussian softmax;
- ``metric="l2"``: the smallest :math:`\lVert q_i - k_j \rVert_2`;
- ``metric="cosine"``: the largest cosine similarity.

Exact (a full scan, no approximation), computed in blocks of queries so that peak memory is
O(B · block · N') rather than O(B · N · N'); ties are broken towards the lower key index; the
neighbours of a row come in ascending key index. With k >= N' every key is a neighbour and the
full graph (``"full"``) is returned, so the dense fast paths run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._validate import check_choice, check_positive_int
from .base import RegularGraph

__all__ = ["KNN", "topk_grouped", "topk_lowest_index"]

METRICS: tuple[str, ...] = ("logit", "l2", "cosine")


def topk_lowest_index(scores: Tensor, k: int) -> Tensor:
    """Indices (…, k) of the k largest entries of each row, ties towards the lower index,
    returned in ascending index order. Exact and deterministic (unlike ``torch.topk``'s
    tie-breaking).

    ``torch.topk`` picks the right set except in rows where the k-th largest value is tied with
    an entry that was left out, i.e. where the (k+1)-th largest equals the k-th; only those rows
    (almost never any with continuous features) are redone with a stable sort.
    """
    if k >= scores.shape[-1]:
        return torch.arange(scores.shape[-1], device=scores.device).expand(*scores.shape[:-1], -1)
    values, index = torch.topk(scores, k + 1, dim=-1)
    index = index[..., :k].clone()
    redo = (values[..., k] == values[..., k - 1]).nonzero(as_tuple=True)
    if redo[0].numel():
        rows = scores[redo]
        index[redo] = torch.sort(rows, dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.sort(index, dim=-1).values


#: Elements of the (B, block, N') score buffer when ``block_size=None`` (8 MiB in float32).
#: Small enough to stay in cache between the matmul that writes it and the top-k that reads it:
#: at N'=16384, C'=32, 128-row blocks score 1.9x faster than 256-row (16 MiB) ones here.
AUTO_BLOCK_ELEMENTS = 1 << 21

#: Columns per group of :func:`topk_grouped`.
GROUP = 128


def topk_grouped(scores: Tensor, k: int, group: int = GROUP) -> Tensor:
    """Same result as :func:`topk_lowest_index`, faster on long rows (exact).

    Each row is cut into groups of ``group`` columns. The k groups with the largest maxima hold
    every one of the row's k largest entries (a group outside them has at least k larger group
    maxima, i.e. k distinct larger entries), so the top-k is taken among those k·group
    candidates only. A row is redone exactly (stable sort) only where a tie could change the
    set: the (k+1)-th candidate equals the k-th, or the (k+1)-th group maximum reaches it.

    Args:
        scores (Tensor): (..., M) rows.
        k (int): entries per row.
        group (int): columns per group.
    """
    rows, m = scores.shape[:-1], scores.shape[-1]
    n_groups = -(-m // group)
    if n_groups <= k + 1:
        return topk_lowest_index(scores, k)
    flat = scores.reshape(-1, m)
    if n_groups * group != m:
        flat = torch.nn.functional.pad(flat, (0, n_groups * group - m), value=float("-inf"))
    flat = flat.contiguous()
    n_rows = flat.shape[0]
    grouped = flat.view(n_rows * n_groups, group)
    gmax, gidx = torch.topk(grouped.amax(-1).view(n_rows, n_groups), k + 1, dim=-1)
    chosen = torch.sort(gidx[:, :k], dim=-1).values  # ascending: candidates keep index order
    # Whole groups are copied as rows of the (rows · groups, group) view: a contiguous
    # index_select, several times faster than an element-wise gather.
    offset = torch.arange(n_rows, device=scores.device).unsqueeze(1) * n_groups
    cand = grouped.index_select(0, (chosen + offset).flatten()).view(n_rows, k * group)
    values, pos = torch.topk(cand, k + 1, dim=-1)
    kth = values[:, k - 1]
    pos = pos[:, :k]
    index = torch.sort(chosen.gather(1, pos // group) * group + pos % group, dim=-1).values
    redo = ((values[:, k] == kth) | (gmax[:, k] >= kth)).nonzero(as_tuple=True)[0]
    if redo.numel():
        index[redo] = topk_lowest_index(flat[redo, :m], k)
    return index.view(*rows, k)


@dataclass(frozen=True)
class KNN:
    r"""Feature-space k-NN edge set for the non-local blocks.

    Args:
        k (int): neighbours per query (k >= N' means the full graph).
        metric (str): ``"logit"``, ``"l2"`` or ``"cosine"`` (see the module docstring).
            (default: ``"logit"``)
        block_size (int, optional): queries scored at once (memory O(B · block_size · N')).
            ``None`` picks min(1024, max(16, 2**21 // (B · N'))) rows: a score buffer of about
            8 MiB in float32. (default: ``None``)
        reuse (bool): keep the first graph built and return it from every later :meth:`build`
            with the same (B, N, N') and device, so that several blocks or heads holding this
            spec share one graph (built from the embeddings of the first caller). The graph is
            then frozen: call :meth:`reset` to rebuild it (e.g. once per batch). The explicit
            alternative is ``block.build_graph(...)`` and ``forward(x, graph=...)``.
            (default: ``False``)

    Shapes:
        - :meth:`build` query (B, N, C), key (B, N', C) → RegularGraph index (B, N, k)

    Example:
        >>> g = KNN(4).build(torch.randn(2, 10, 8), torch.randn(2, 6, 8))
        >>> g.index.shape
        torch.Size([2, 10, 4])
    """

    k: int
    metric: str = "logit"
    block_size: int | None = None
    reuse: bool = False
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_positive_int("k", self.k)
        check_choice("metric", self.metric, METRICS)
        if self.block_size is not None:
            check_positive_int("block_size", self.block_size)

    @torch.no_grad()
    def build(self, query: Tensor, key: Tensor) -> RegularGraph | str:
        """The per-sample k-NN graph of ``query`` over ``key`` (``"full"`` when k >= N')."""
        b, n, m = query.shape[0], query.shape[1], key.shape[1]
        if self.k >= m:
            return "full"
        cache_key = (b, n, m, query.device)
        if self.reuse and cache_key in self._cache:
            return self._cache[cache_key]
        graph = self._build(query, key)
        if self.reuse:
            self._cache[cache_key] = graph
        return graph

    def reset(self) -> None:
        """Forget the graphs kept by ``reuse=True``."""
        self._cache.clear()

    def _build(self, query: Tensor, key: Tensor) -> RegularGraph:
        b, n, m = query.shape[0], query.shape[1], key.shape[1]
        q, kk = query.detach(), key.detach()
        if self.metric == "cosine":
            q = torch.nn.functional.normalize(q, dim=-1)
            kk = torch.nn.functional.normalize(kk, dim=-1)
        # Row-major (B, N, C) queries and keys: bmm on their blocks is ~2.4x faster than on the
        # (B, C, N)-transposed views the blocks produce (measured at N=16384, C=32).
        q, kk = q.contiguous(), kk.contiguous()
        key_t = kk.transpose(1, 2)
        sq = (kk * kk).sum(-1).unsqueeze(1) if self.metric == "l2" else None
        index = torch.empty(b, n, self.k, dtype=torch.long, device=query.device)
        block = self.block_size or min(1024, max(16, AUTO_BLOCK_ELEMENTS // (b * m)))
        buffer = torch.empty(b, min(block, n), m, dtype=q.dtype, device=q.device)
        for start in range(0, n, block):
            stop = min(start + block, n)
            scores = buffer[:, : stop - start]
            if sq is None:
                torch.bmm(q[:, start:stop], key_t, out=scores)
            else:  # -(|k|^2 - 2 q.k): larger is nearer (|q|^2 is constant per row)
                torch.baddbmm(sq, q[:, start:stop], key_t, beta=-1, alpha=2, out=scores)
            index[:, start:stop] = topk_grouped(scores, self.k)
        return RegularGraph(index, m)

    def __repr__(self) -> str:
        extra = "" if self.metric == "logit" else f", metric={self.metric!r}"
        extra += ", reuse=True" if self.reuse else ""
        return f"KNN(k={self.k}{extra})"
