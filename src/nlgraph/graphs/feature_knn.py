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

from dataclasses import dataclass

import torch
from torch import Tensor

from .._validate import check_choice, check_positive_int
from .base import RegularGraph

__all__ = ["KNN", "topk_lowest_index"]

METRICS: tuple[str, ...] = ("logit", "l2", "cosine")


def topk_lowest_index(scores: Tensor, k: int) -> Tensor:
    """Indices (…, k) of the k largest entries of each row, ties towards the lower index,
    returned in ascending index order. Exact and deterministic (unlike ``torch.topk``'s
    tie-breaking)."""
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    above = scores > kth
    need = k - above.sum(-1, keepdim=True)
    tied = scores == kth
    chosen = above | (tied & (tied.cumsum(-1) <= need))
    # Exactly k True per row: their positions in ascending order.
    order = torch.sort(chosen.to(torch.int8), dim=-1, descending=True, stable=True).indices
    return order[..., :k]


@dataclass(frozen=True)
class KNN:
    r"""Feature-space k-NN edge set for the non-local blocks.

    Args:
        k (int): neighbours per query (k >= N' means the full graph).
        metric (str): ``"logit"``, ``"l2"`` or ``"cosine"`` (see the module docstring).
            (default: ``"logit"``)
        block_size (int): queries scored at once (memory O(B · block_size · N')).
            (default: ``1024``)

    Shapes:
        - :meth:`build` query (B, N, C), key (B, N', C) → RegularGraph index (B, N, k)

    Example:
        >>> g = KNN(4).build(torch.randn(2, 10, 8), torch.randn(2, 6, 8))
        >>> g.index.shape
        torch.Size([2, 10, 4])
    """

    k: int
    metric: str = "logit"
    block_size: int = 1024

    def __post_init__(self) -> None:
        check_positive_int("k", self.k)
        check_choice("metric", self.metric, METRICS)
        check_positive_int("block_size", self.block_size)

    @torch.no_grad()
    def build(self, query: Tensor, key: Tensor) -> RegularGraph | str:
        """The per-sample k-NN graph of ``query`` over ``key`` (``"full"`` when k >= N')."""
        b, n, m = query.shape[0], query.shape[1], key.shape[1]
        if self.k >= m:
            return "full"
        q, kk = query.detach(), key.detach()
        if self.metric == "cosine":
            q = torch.nn.functional.normalize(q, dim=-1)
            kk = torch.nn.functional.normalize(kk, dim=-1)
        key_t = kk.transpose(1, 2)
        sq = (kk * kk).sum(-1).unsqueeze(1) if self.metric == "l2" else None
        index = torch.empty(b, n, self.k, dtype=torch.long, device=query.device)
        for start in range(0, n, self.block_size):
            stop = min(start + self.block_size, n)
            scores = torch.bmm(q[:, start:stop], key_t)
            if sq is not None:  # -(|k|^2 - 2 q.k): larger is nearer (|q|^2 is constant per row)
                scores = 2 * scores - sq
            index[:, start:stop] = topk_lowest_index(scores, self.k)
        return RegularGraph(index, m)

    def __repr__(self) -> str:
        extra = "" if self.metric == "logit" else f", metric={self.metric!r}"
        return f"KNN(k={self.k}{extra})"
