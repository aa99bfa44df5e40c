r"""How close an approximate k-NN graph is to the exact one: recall@k.

.. math::
    \mathrm{recall} = \frac{1}{|Q|} \sum_{i \in Q}
    \frac{|\mathcal{A}(i) \cap \mathcal{E}(i)|}{|\mathcal{E}(i)|},
    \qquad Q = \{i : \mathcal{E}(i) \neq \emptyset\}

with :math:`\mathcal{A}(i)` and :math:`\mathcal{E}(i)` the neighbour sets of query i in the
approximate and the exact graph (padding slots and duplicate edges do not count). When both
give every query k neighbours this is the usual recall@k of approximate nearest-neighbour
search (faiss's "1-recall@k" is another measure: whether the single nearest is found).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validate import check_edge_index, describe
from .base import COOGraph, RegularGraph

__all__ = ["knn_recall"]

GraphLike = RegularGraph | COOGraph | Tensor


def _edges(name: str, graph: object, query_row: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """(graph id, query, key) of every real edge, and the number of queries per graph."""
    if isinstance(graph, RegularGraph):
        g, n, k = graph.index.shape
        dev = graph.index.device
        gid = torch.arange(g, device=dev).view(g, 1, 1).expand(g, n, k)
        qid = torch.arange(n, device=dev).view(1, n, 1).expand(g, n, k)
        key = graph.index
        if graph.mask is not None:
            return gid[graph.mask], qid[graph.mask], key[graph.mask], n
        return gid.reshape(-1), qid.reshape(-1), key.reshape(-1), n
    if isinstance(graph, COOGraph):
        src, dst = graph.edge_index
        return torch.zeros_like(dst), dst, src, graph.num_queries
    if isinstance(graph, Tensor):
        ei = check_edge_index(name, graph)
        qid, key = ei[query_row], ei[1 - query_row]
        n = int(qid.max()) + 1 if qid.numel() else 0
        return torch.zeros_like(qid), qid, key, n
    raise TypeError(
        f"{name}: expected a RegularGraph, a COOGraph or an edge_index tensor, got "
        f"{type(graph).__name__}"
    )


def knn_recall(approx: GraphLike, exact: GraphLike, *, query_row: int = 1) -> float:
    r"""Mean recall of the exact neighbour sets in the approximate graph (module docstring).

    Args:
        approx (RegularGraph, COOGraph or Tensor): the approximate graph, e.g. from
            ``KNN(k, search="ivf")`` or ``knn_graph(..., search="ivf")``.
        exact (RegularGraph, COOGraph or Tensor): the reference, of the same kind and the same
            queries (for RegularGraphs: the same (G, N)).
        query_row (int): for ``edge_index`` tensors, the row that holds the queries: ``1`` for
            ``knn_graph``'s default ``flow="source_to_target"`` (row 0 the neighbour), ``0`` for
            :func:`~nlgraph.graphs.knn` (row 0 indexes y). (default: ``1``)

    Returns:
        float: in [0, 1]; 1.0 when no query has an exact neighbour.

    Example:
        >>> exact = RegularGraph(torch.tensor([[[0, 1], [1, 2]]]), 3)
        >>> approx = RegularGraph(torch.tensor([[[0, 2], [1, 2]]]), 3)
        >>> knn_recall(approx, exact)  # query 0 finds 1 of 2, query 1 both
        0.75
    """
    if query_row not in (0, 1) or isinstance(query_row, bool):
        raise ValueError(f"query_row: expected 0 or 1, got {query_row!r}")
    if type(approx) is not type(exact) and not (
        isinstance(approx, Tensor) and isinstance(exact, Tensor)
    ):
        raise TypeError(
            f"approx: expected the same kind of graph as exact ({type(exact).__name__}), got "
            f"{type(approx).__name__}"
        )
    if isinstance(approx, RegularGraph) and isinstance(exact, RegularGraph):
        if approx.index.shape[:2] != exact.index.shape[:2]:
            raise ValueError(
                f"approx: expected (G, N) = {tuple(exact.index.shape[:2])} like exact, got "
                f"index {describe(approx.index)}"
            )
    ga, qa, ka, _ = _edges("approx", approx, query_row)
    ge, qe, ke, n = _edges("exact", exact, query_row)
    if ke.numel() == 0:
        return 1.0
    ka, ke = ka.to(ke.device), ke.to(ke.device)
    n = max(n, int(qa.max()) + 1 if qa.numel() else 0)
    width = int(torch.maximum(ka.max() if ka.numel() else ke.max(), ke.max())) + 1
    row_a = ga.to(ke.device) * n + qa.to(ke.device)
    row_e = ge * n + qe
    code_a = torch.unique(row_a * width + ka)
    code_e = torch.unique(row_e * width + ke)
    row_e = torch.div(code_e, width, rounding_mode="floor")
    hit = torch.isin(code_e, code_a).to(torch.float64)
    rows, slot = torch.unique(row_e, return_inverse=True)
    found = torch.zeros(rows.numel(), dtype=torch.float64, device=ke.device).index_add_(
        0, slot, hit
    )
    total = torch.bincount(slot, minlength=rows.numel()).to(torch.float64)
    return float((found / total).mean())
