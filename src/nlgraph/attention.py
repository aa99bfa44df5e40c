"""Attention weights returned by ``return_attention=True``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    import networkx as nx

    from .graphs.base import COOGraph, RegularGraph

__all__ = ["Attention"]


class Attention:
    r"""Normalised non-local weights :math:`w_{ij} = f(q_i, k_j) / C_i` over an edge set.

    Built by the kernels: from a dense (B, N, N') matrix (full graph), from the (B, N, k) slot
    weights of a :class:`~nlgraph.graphs.RegularGraph` (:meth:`from_regular`) or from the (B, E)
    edge weights of a :class:`~nlgraph.graphs.COOGraph` (:meth:`from_coo`).

    Args:
        dense (Tensor): (B, N, N') weights; row i holds the weights of query i over the keys.

    Shapes:
        - :meth:`to_dense`: (B, N, N'), zero where there is no edge
        - :meth:`edges`: ``(edge_index (2, E), weights (E,))`` of one sample, row 0 key j, row 1
          query i (PyG's source→target)
        - :attr:`edge_index`: (2, E) and :attr:`weights`: (B, E), when the batch shares one graph
    """

    def __init__(self, dense: Tensor) -> None:
        if not isinstance(dense, Tensor):
            raise TypeError(
                f"dense: expected a (B, N, N') torch.Tensor, got {type(dense).__name__}"
            )
        if dense.dim() != 3:
            raise ValueError(f"dense: expected a (B, N, N') tensor, got shape {tuple(dense.shape)}")
        self._dense: Tensor | None = dense
        self._regular: tuple[RegularGraph, Tensor] | None = None
        self._coo: tuple[COOGraph, Tensor] | None = None
        self._shape = (dense.shape[0], dense.shape[1], dense.shape[2])

    @classmethod
    def from_regular(cls, weights: Tensor, graph: RegularGraph) -> Attention:
        """From (B, N, k) slot weights of ``graph`` (padding slots ignored)."""
        self = cls.__new__(cls)
        self._dense, self._coo = None, None
        self._regular = (graph, weights)
        self._shape = (weights.shape[0], graph.num_queries, graph.num_keys)
        return self

    @classmethod
    def from_coo(cls, weights: Tensor, graph: COOGraph) -> Attention:
        """From (B, E) edge weights aligned with ``graph.edge_index``."""
        self = cls.__new__(cls)
        self._dense, self._regular = None, None
        self._coo = (graph, weights)
        self._shape = (weights.shape[0], graph.num_queries, graph.num_keys)
        return self

    @property
    def num_queries(self) -> int:
        """N, the number of queries (targets)."""
        return self._shape[1]

    @property
    def num_keys(self) -> int:
        """N', the number of keys (sources)."""
        return self._shape[2]

    @property
    def shared(self) -> bool:
        """True when every sample of the batch has the same edge set."""
        return self._regular is None or self._regular[0].index.shape[0] == 1

    def to_dense(self) -> Tensor:
        """The weights as a (B, N, N') tensor; zero where there is no edge."""
        if self._dense is not None:
            return self._dense
        b, n, m = self._shape
        if self._coo is not None:
            coo, w = self._coo
            src, dst = coo.edge_index
            out = w.new_zeros(b, n * m)
            return out.index_add_(1, dst * m + src, w).view(b, n, m)
        assert self._regular is not None
        regular, w = self._regular
        if regular.mask is not None:
            w = w.masked_fill(~regular.mask, 0.0)
        out = w.new_zeros(b, n, m)
        return out.scatter_add_(2, regular.index.expand(b, -1, -1), w)

    def edges(self, sample: int = 0) -> tuple[Tensor, Tensor]:
        """``(edge_index (2, E), weights (E,))`` of one sample of the batch."""
        b = self._shape[0]
        if not -b <= sample < b:
            raise IndexError(f"sample: expected an index in [0, {b}), got {sample}")
        if self._dense is not None:
            return self._full_edge_index(), self._dense[sample].reshape(-1)
        if self._coo is not None:
            coo, w = self._coo
            return coo.edge_index, w[sample]
        assert self._regular is not None
        regular, w = self._regular
        g = 0 if regular.index.shape[0] == 1 else sample
        w = w[sample].reshape(-1)
        if regular.mask is not None:
            w = w[regular.mask[g].reshape(-1)]
        return regular.to_coo(g).edge_index, w

    @property
    def edge_index(self) -> Tensor:
        """Edges as a (2, E) LongTensor, row 0 key (source) j, row 1 query (target) i.

        Raises:
            ValueError: the samples have different graphs (per-sample k-NN): use :meth:`edges`.
        """
        if not self.shared:
            raise ValueError(
                "edge_index: expected a graph shared by the batch, got one graph per sample; "
                "use edges(sample)"
            )
        return self.edges(0)[0]

    @property
    def weights(self) -> Tensor:
        """Edge weights (B, E), in the order of :attr:`edge_index` (shared graphs only)."""
        if self._dense is not None:
            return self._dense.reshape(self._shape[0], -1)
        _ = self.edge_index  # raises for per-sample graphs
        return torch.stack([self.edges(s)[1] for s in range(self._shape[0])])

    def _full_edge_index(self) -> Tensor:
        n, m = self.num_queries, self.num_keys
        dev = self._dense.device if self._dense is not None else None
        target = torch.arange(n, device=dev).repeat_interleave(m)
        source = torch.arange(m, device=dev).repeat(n)
        return torch.stack([source, target])

    def to_networkx(self, sample: int = 0) -> nx.DiGraph:
        """A weighted ``networkx.DiGraph`` of one sample: edge j→i with attribute ``weight``.

        Nodes ``("k", j)`` are keys and ``("q", i)`` queries, since after sub-sampling keys and
        queries are different position sets.
        """
        import networkx as nx

        edge_index, w = self.edges(sample)
        g = nx.DiGraph()
        g.add_nodes_from(("q", i) for i in range(self.num_queries))
        g.add_nodes_from(("k", j) for j in range(self.num_keys))
        src, dst = edge_index.tolist()
        g.add_weighted_edges_from(
            (("k", j), ("q", i), x) for j, i, x in zip(src, dst, w.detach().cpu().tolist())
        )
        return g

    def __repr__(self) -> str:
        b, n, m = self._shape
        kind = "full" if self._dense is not None else ("coo" if self._coo else "regular")
        return f"Attention(batch={b}, num_queries={n}, num_keys={m}, graph={kind!r})"
