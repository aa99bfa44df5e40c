r"""PyG transforms built on nlgraph's builders (no pyg-lib needed).

:class:`KNNGraph` takes the arguments of ``torch_geometric.transforms.KNNGraph`` and gives the
same graph, built with the exact blocked :func:`nlgraph.graphs.knn_graph`.
"""

from __future__ import annotations

from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform
from torch_geometric.utils import to_undirected

from ._validate import check_bool, check_choice, check_positive_int
from .graphs.point_knn import FLOWS, knn_graph

__all__ = ["KNNGraph"]


class KNNGraph(BaseTransform):
    r"""Sets ``data.edge_index`` to the k-NN graph of the node positions ``data.pos``.

    .. math::
        (j \to i) \in E \iff j \in \mathcal{N}_k(i) \text{ in } \lVert pos_i - pos_j \rVert
        \text{ (or cosine distance)},\quad b_j = b_i

    per graph of ``data.batch`` when present; ties go to the lower index. ``data.edge_attr`` is
    reset to ``None`` (old attributes no longer match the edges), as PyG's transform does.

    Args:
        k (int, optional): neighbours per node. (default: ``6``)
        loop (bool, optional): keep self-loops. (default: ``False``)
        force_undirected (bool, optional): add each edge's reverse and remove duplicates
            (``torch_geometric.utils.to_undirected``). (default: ``False``)
        flow (str, optional): ``"source_to_target"`` (every target gets k sources) or
            ``"target_to_source"``. (default: ``"source_to_target"``)
        cosine (bool, optional): rank by cosine distance. (default: ``False``)
        num_workers (int, optional): PyG's CPU worker count, accepted for compatibility and
            stored as ``self.num_workers``: a positive int with no other effect (the search
            uses torch's intra-op threads; see :func:`nlgraph.graphs.knn`). (default: ``1``)

    Example:
        >>> import torch
        >>> from torch_geometric.data import Data
        >>> data = KNNGraph(k=2)(Data(pos=torch.tensor([[0.0], [1.0], [3.0]])))
        >>> data.edge_index
        tensor([[1, 2, 0, 2, 1, 0],
                [0, 0, 1, 1, 2, 2]])
    """

    def __init__(
        self,
        k: int = 6,
        loop: bool = False,
        force_undirected: bool = False,
        flow: str = "source_to_target",
        cosine: bool = False,
        num_workers: int = 1,
    ) -> None:
        self.k = check_positive_int("k", k)
        self.loop = check_bool("loop", loop)
        self.force_undirected = check_bool("force_undirected", force_undirected)
        check_choice("flow", flow, FLOWS)
        self.flow = flow
        self.cosine = check_bool("cosine", cosine)
        self.num_workers = check_positive_int("num_workers", num_workers)

    def forward(self, data: Data) -> Data:
        """Return ``data`` with ``edge_index`` built from ``pos`` and ``edge_attr = None``."""
        pos = getattr(data, "pos", None)
        if pos is None:
            raise ValueError("data.pos: expected a (num_nodes, D) float tensor, got None")
        edge_index = knn_graph(
            pos,
            self.k,
            data.batch,
            loop=self.loop,
            flow=self.flow,
            cosine=self.cosine,
            num_workers=self.num_workers,
        )
        if self.force_undirected:
            edge_index = to_undirected(edge_index, num_nodes=data.num_nodes)
        data.edge_index = edge_index
        data.edge_attr = None
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(k={self.k})"
