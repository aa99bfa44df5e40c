"""Attention weights returned by ``return_attention=True``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["Attention"]


class Attention:
    r"""Normalised non-local weights :math:`w_{ij} = f(q_i, k_j) / C_i` over an edge set.

    This release holds the full graph as a dense (B, N, N') tensor (building it is the one
    place where nlgraph materialises N×N'); graph kernels of later releases fill the same
    interface from their edge lists.

    Args:
        dense (Tensor): (B, N, N') weights; row i holds the weights of query i over the keys.

    Shapes:
        - :meth:`to_dense`: (B, N, N')
        - :attr:`edge_index`: (2, N·N'), row 0 key j, row 1 query i (PyG's source→target)
        - :attr:`weights`: (B, N·N'), aligned with :attr:`edge_index`
    """

    def __init__(self, dense: Tensor) -> None:
        if dense.dim() != 3:
            raise ValueError(f"dense: expected a (B, N, N') tensor, got shape {tuple(dense.shape)}")
        self._dense = dense

    @property
    def num_queries(self) -> int:
        """N, the number of queries (targets)."""
        return self._dense.shape[1]

    @property
    def num_keys(self) -> int:
        """N', the number of keys (sources)."""
        return self._dense.shape[2]

    def to_dense(self) -> Tensor:
        """The weights as a (B, N, N') tensor; zero where there is no edge."""
        return self._dense

    @property
    def edge_index(self) -> Tensor:
        """Edges as a (2, E) LongTensor, row 0 key (source) j, row 1 query (target) i."""
        n, m = self.num_queries, self.num_keys
        dev = self._dense.device
        target = torch.arange(n, device=dev).repeat_interleave(m)
        source = torch.arange(m, device=dev).repeat(n)
        return torch.stack([source, target])

    @property
    def weights(self) -> Tensor:
        """Edge weights (B, E), in the order of :attr:`edge_index`."""
        return self._dense.reshape(self._dense.shape[0], -1)

    def to_networkx(self, sample: int = 0) -> nx.DiGraph:
        """A weighted ``networkx.DiGraph`` of one sample: edge j→i with attribute ``weight``.

        Nodes ``("k", j)`` are keys and ``("q", i)`` queries, since after sub-sampling keys and
        queries are different position sets.
        """
        import networkx as nx

        b = self._dense.shape[0]
        if not -b <= sample < b:
            raise IndexError(f"sample: expected an index in [0, {b}), got {sample}")
        g = nx.DiGraph()
        g.add_nodes_from(("q", i) for i in range(self.num_queries))
        g.add_nodes_from(("k", j) for j in range(self.num_keys))
        src, dst = self.edge_index.tolist()
        w = self.weights[sample].detach().cpu().tolist()
        g.add_weighted_edges_from((("k", j), ("q", i), x) for j, i, x in zip(src, dst, w))
        return g

    def __repr__(self) -> str:
        b, n, m = self._dense.shape
        return f"Attention(batch={b}, num_queries={n}, num_keys={m}, graph='full')"
