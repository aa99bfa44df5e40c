"""Edge-set storage shared by builders and kernels.

Two layouts (see ``docs/design.md`` of the project notes):

- :class:`RegularGraph`: up to k neighbours per query as a ``(G, N, k)`` key index, padded where
  a query has fewer (``mask`` False there), with G = 1 (shared by the batch) or G = B (one graph
  per sample). The ELL layout: gathers with ``index_select``, softmax over the last axis.
- :class:`COOGraph`: any degree, an ``edge_index`` of shape (2, E) with row 0 the key (source) j
  in [0, N') and row 1 the query (target) i in [0, N), shared by the batch (PyG's
  ``source_to_target`` flow).

Conversions between them are exact: :meth:`RegularGraph.to_coo` drops the padding,
:meth:`COOGraph.to_regular` pads each query's neighbour list to the largest degree.

Both are immutable, and each object keeps a private cache of what kernels derive from it (the
sparse-matrix pattern of the ``csr`` kernel and its transpose, the result of the index-range
check), so a graph built once and passed to many blocks or steps is prepared once. Graphs made
by nlgraph's builders are range-checked by construction; a graph made by hand is checked on its
first use, without a host read (``torch._assert_async``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._validate import check_edge_index, check_index_range, check_nonnegative_int, describe

__all__ = ["COOGraph", "RegularGraph", "trusted"]


@dataclass(frozen=True, eq=False)
class RegularGraph:
    r"""Up to k neighbours per query, stored as a padded key index.

    Args:
        index (Tensor): (G, N, k) int64 key indices in [0, N'); G = 1 (shared) or B.
            Padding slots must still hold a valid index (e.g. 0).
        num_keys (int): N'.
        mask (Tensor, optional): (G, N, k) bool, True for a real edge. ``None``: all real.

    Shapes:
        - :meth:`to_coo`: (2, E) for one graph of the G
    """

    index: Tensor
    num_keys: int
    mask: Tensor | None = None
    _cache: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.index, Tensor):
            raise TypeError(
                f"index: expected a (G, N, k) int64 torch.Tensor, got {type(self.index).__name__}"
            )
        if self.index.dim() != 3 or self.index.dtype != torch.long:
            raise ValueError(
                f"index: expected a (G, N, k) int64 tensor, got {describe(self.index)}"
            )
        check_nonnegative_int("num_keys", self.num_keys)
        if self.mask is not None and not isinstance(self.mask, Tensor):
            raise TypeError(
                f"mask: expected None or a bool torch.Tensor, got {type(self.mask).__name__}"
            )
        if self.mask is not None and (
            self.mask.shape != self.index.shape or self.mask.dtype != torch.bool
        ):
            raise ValueError(
                f"mask: expected a bool tensor of shape {tuple(self.index.shape)}, "
                f"got {describe(self.mask)}"
            )

    @property
    def num_queries(self) -> int:
        """N, the number of queries."""
        return self.index.shape[1]

    @property
    def k(self) -> int:
        """The largest number of neighbours per query (the padded width)."""
        return self.index.shape[2]

    def __getstate__(self) -> dict[str, Any]:
        return _without_cache(self)

    def check_range(self) -> None:
        """``IndexError`` unless every key index lies in [0, N'): once per graph object (a graph
        from an nlgraph builder is in range by construction), without a host read on success
        (:func:`nlgraph._validate.check_index_range`)."""
        if not self._cache.get("checked"):
            check_index_range("graph (key indices)", self.index, self.num_keys)
            self._cache["checked"] = True

    def degree(self) -> Tensor:
        """(G, N) number of real neighbours of each query."""
        if self.mask is None:
            return torch.full(self.index.shape[:2], self.k, device=self.index.device)
        return self.mask.sum(-1)

    def to_coo(self, graph: int = 0) -> COOGraph:
        """Graph ``graph`` of the G as a :class:`COOGraph` (padding dropped)."""
        idx = self.index[graph]
        target = torch.arange(self.num_queries, device=idx.device).repeat_interleave(self.k)
        source = idx.reshape(-1)
        if self.mask is not None:
            keep = self.mask[graph].reshape(-1)
            source, target = source[keep], target[keep]
        coo = COOGraph(torch.stack([source, target]), self.num_queries, self.num_keys, True)
        return trusted(coo) if self._cache.get("checked") else coo


@dataclass(frozen=True, eq=False)
class COOGraph:
    r"""Any edge set as a PyG ``edge_index`` shared by the batch.

    Args:
        edge_index (Tensor): (2, E) int64; row 0 key (source) j in [0, N'), row 1 query
            (target) i in [0, N).
        num_queries (int): N.
        num_keys (int): N'.
        query_sorted (bool, optional): whether ``edge_index[1]`` is non-decreasing (the edges
            grouped by query, as CSR needs them). ``None``: unknown, found out on the first use
            by the ``csr`` kernel (one host read, then cached on the object); pass ``True`` when
            known (e.g. from a builder or PyG's ``EdgeIndex`` sorted by column) to spare it. A
            wrong ``True`` gives wrong results. (default: ``None``)
    """

    edge_index: Tensor
    num_queries: int
    num_keys: int
    query_sorted: bool | None = None
    _cache: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_edge_index("edge_index", self.edge_index)
        if self.query_sorted is not None and not isinstance(self.query_sorted, bool):
            raise TypeError(
                f"query_sorted: expected None or a bool, got {type(self.query_sorted).__name__}"
            )

    def __getstate__(self) -> dict[str, Any]:
        return _without_cache(self)

    def check_range(self, key_hint: str = "", roles: tuple[str, str] = ("keys", "queries")) -> None:
        """``IndexError`` unless ``edge_index[0]`` lies in [0, N') and ``edge_index[1]`` in
        [0, N): once per graph object, without a host read on success (see
        :meth:`RegularGraph.check_range`). ``key_hint`` is appended to a key-range error (e.g.
        what the key positions are); ``roles`` names the two rows in errors."""
        if not self._cache.get("checked"):
            src, dst = self.edge_index
            check_index_range(f"edge_index[0] ({roles[0]})", src, self.num_keys, key_hint)
            check_index_range(f"edge_index[1] ({roles[1]})", dst, self.num_queries)
            self._cache["checked"] = True

    @property
    def num_edges(self) -> int:
        """E."""
        return self.edge_index.shape[1]

    def to_regular(self) -> RegularGraph:
        """The same edges as a (1, N, k_max) :class:`RegularGraph` (k_max: largest in-degree).

        Reads the degrees (a host synchronisation): for building graphs, not for hot paths.
        """
        source, target = self.edge_index
        n = self.num_queries
        order = torch.argsort(target, stable=True)
        source, target = source[order], target[order]
        deg = torch.bincount(target, minlength=n)
        k = int(deg.max()) if self.num_edges else 0
        start = torch.cumsum(deg, 0) - deg
        slot = torch.arange(self.num_edges, device=source.device) - start[target]
        index = torch.zeros(n, max(k, 1), dtype=torch.long, device=source.device)
        mask = torch.zeros(n, max(k, 1), dtype=torch.bool, device=source.device)
        index[target, slot] = source
        mask[target, slot] = True
        return trusted(RegularGraph(index.unsqueeze(0), self.num_keys, mask.unsqueeze(0)))


def _without_cache(obj: Any) -> dict[str, Any]:
    """An object's state with its private cache emptied (caches are not pickled or copied)."""
    state = dict(obj.__dict__)
    state["_cache"] = {}
    return state


def trusted(graph: Any) -> Any:
    """Mark ``graph`` (a RegularGraph or COOGraph made by an nlgraph builder) as range-checked:
    its indices are in range by construction. Returns it."""
    graph._cache["checked"] = True
    return graph
