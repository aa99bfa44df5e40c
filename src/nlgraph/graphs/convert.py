r"""Conversions: feature maps ⇄ PyG ``Data``/``Batch``, edge sets ⇄ ``edge_index``.

A feature map of shape (C, \*S) becomes a graph whose nodes are its N = prod(S) positions in
row-major (C) order, as ``x.flatten(1).T`` gives them: ``data.x`` is (N, C) and ``data.pos``
the (N, len(S)) integer coordinates of each position (as floats). Edge sets use PyG's
``source_to_target`` flow: row 0 of an ``edge_index`` is the key (source) j, row 1 the query
(target) i, both flattened positions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .._validate import check_edge_index, check_float_tensor, check_nonnegative_int, describe
from .base import COOGraph, RegularGraph

if TYPE_CHECKING:  # PyG is imported by the two functions that need it, not with nlgraph
    from torch_geometric.data import Batch, Data

__all__ = [
    "data_to_feature_map",
    "feature_map_to_data",
    "from_edge_index",
    "full_edge_index",
    "grid_positions",
    "to_edge_index",
]


def full_edge_index(
    num_queries: int, num_keys: int, device: torch.device | str | None = None
) -> Tensor:
    """Every (key j, query i) pair, self-loops included, ordered by query then key: (2, N·N')."""
    check_nonnegative_int("num_queries", num_queries)
    check_nonnegative_int("num_keys", num_keys)
    target = torch.arange(num_queries, device=device).repeat_interleave(num_keys)
    source = torch.arange(num_keys, device=device).repeat(num_queries)
    return torch.stack([source, target])


def grid_positions(
    shape: Sequence[int], dtype: torch.dtype = torch.float32, device: Any = None
) -> Tensor:
    """(prod(shape), len(shape)) integer coordinates of every position, row-major, as ``dtype``."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or len(shape) == 0:
        raise TypeError(f"shape: expected a non-empty sequence of ints, got {shape!r}")
    shape = tuple(check_nonnegative_int(f"shape[{i}]", s) for i, s in enumerate(shape))
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a torch.dtype, got {type(dtype).__name__} {dtype!r}")
    axes = [torch.arange(s, device=device) for s in shape]
    grids = torch.meshgrid(*axes, indexing="ij") if axes else []
    return torch.stack([g.reshape(-1) for g in grids], dim=1).to(dtype)


def to_edge_index(
    graph: str | RegularGraph | COOGraph | Tensor,
    sample: int = 0,
    *,
    num_queries: int | None = None,
    num_keys: int | None = None,
) -> Tensor:
    r"""An edge set as a (2, E) ``edge_index`` (row 0 key j, row 1 query i).

    Args:
        graph: ``"full"`` (every pair; needs ``num_queries`` and ``num_keys``), a
            :class:`~nlgraph.graphs.RegularGraph` (padding dropped), a
            :class:`~nlgraph.graphs.COOGraph` or a (2, E) int64 tensor (returned as is).
        sample (int): which graph of a per-sample RegularGraph (G = B); ignored when the graph
            is shared. (default: ``0``)
        num_queries (int, optional): N, for ``"full"``.
        num_keys (int, optional): N', for ``"full"``.

    Shapes:
        - output: (2, E); E = N·N' for ``"full"``

    Example:
        >>> to_edge_index("full", num_queries=2, num_keys=2)
        tensor([[0, 1, 0, 1],
                [0, 0, 1, 1]])
    """
    if isinstance(graph, COOGraph):
        return graph.edge_index
    if isinstance(graph, RegularGraph):
        groups = graph.index.shape[0]
        if groups == 1:
            return graph.to_coo(0).edge_index
        if not -groups <= sample < groups:
            raise IndexError(f"sample: expected an index in [0, {groups}), got {sample}")
        return graph.to_coo(sample % groups).edge_index
    if isinstance(graph, Tensor):
        return check_edge_index("graph", graph)
    if isinstance(graph, str) and graph == "full":
        for name, value in (("num_queries", num_queries), ("num_keys", num_keys)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"{name}: expected a non-negative int for graph 'full', got {value!r}"
                )
        assert isinstance(num_queries, int) and isinstance(num_keys, int)
        return full_edge_index(num_queries, num_keys)
    raise TypeError(
        f"graph: expected 'full', a RegularGraph, a COOGraph or an edge_index tensor, got {graph!r}"
    )


def from_edge_index(edge_index: Tensor, num_queries: int, num_keys: int) -> COOGraph:
    """A :class:`~nlgraph.graphs.COOGraph` from a (2, E) ``edge_index``, checking its range.

    Raises:
        ValueError: not a (2, E) int64 tensor, or negative sizes.
        IndexError: a source outside [0, num_keys) or a target outside [0, num_queries).
    """
    edge_index = check_edge_index("edge_index", edge_index)
    for name, value in (("num_queries", num_queries), ("num_keys", num_keys)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}: expected a non-negative int, got {value!r}")
    graph = COOGraph(edge_index, num_queries, num_keys)
    graph.check_range(roles=(f"keys, num_keys={num_keys}", f"queries, num_queries={num_queries}"))
    return graph


def _map_edges(edge_set: Any, n: int, batch: int, device: torch.device) -> list[Tensor | None]:
    """The edge_index of each of the ``batch`` maps of N = ``n`` positions (None: no edges)."""
    if edge_set is None:
        return [None] * batch
    if isinstance(edge_set, str) and edge_set == "full":
        return [full_edge_index(n, n, device)] * batch
    if isinstance(edge_set, (RegularGraph, COOGraph)):
        if edge_set.num_queries != n or edge_set.num_keys != n:
            raise ValueError(
                f"edge_set: expected a graph over the map's {n} positions (queries and keys), "
                f"got {edge_set.num_queries} queries and {edge_set.num_keys} keys"
            )
        if isinstance(edge_set, RegularGraph) and edge_set.index.shape[0] not in (1, batch):
            raise ValueError(
                f"edge_set: expected a RegularGraph with 1 or {batch} graphs, "
                f"got {edge_set.index.shape[0]}"
            )
        return [to_edge_index(edge_set, s).to(device) for s in range(batch)]
    if isinstance(edge_set, Tensor):
        return [from_edge_index(edge_set, n, n).edge_index.to(device)] * batch
    raise TypeError(
        "edge_set: expected None, 'full', an edge_index tensor, a RegularGraph or a COOGraph, "
        f"got {edge_set!r}"
    )


def feature_map_to_data(
    x: Tensor,
    edge_set: str | Tensor | RegularGraph | COOGraph | None = None,
    *,
    batched: bool = True,
) -> Data | Batch:
    r"""A feature map as a PyG graph: nodes are positions, ``pos`` their coordinates.

    Args:
        x (Tensor): (B, C, \*S) with ``batched=True``, (C, \*S) with ``batched=False``; at
            least one spatial axis.
        edge_set: the edges over the flattened positions (row 0 key j, row 1 query i):
            ``None`` (no ``edge_index``), ``"full"`` (every pair, self-loops included), a
            (2, E) int64 tensor (shared by every map), a :class:`~nlgraph.graphs.COOGraph` or a
            :class:`~nlgraph.graphs.RegularGraph` (shared, or one per map when G = B), with N
            queries and N keys. (default: ``None``)
        batched (bool): whether dim 0 of ``x`` is the batch. (default: ``True``)

    Returns:
        :class:`~torch_geometric.data.Batch` of B graphs (``batched=True``), else
        :class:`~torch_geometric.data.Data`, with ``x`` (N, C), ``pos`` (N, len(S)) (float:
        ``x``'s dtype) and ``edge_index`` (2, E) when ``edge_set`` is given. The spatial shape
        is not stored: pass it to :func:`data_to_feature_map`.

    Example:
        >>> data = feature_map_to_data(torch.randn(3, 4, 5), batched=False)
        >>> data.x.shape, data.pos.shape
        (torch.Size([20, 3]), torch.Size([20, 2]))
    """
    from torch_geometric.data import Batch, Data

    check_float_tensor("x", x)
    lowest = 3 if batched else 2
    if x.dim() < lowest:
        shape = "(B, C, *S)" if batched else "(C, *S)"
        raise ValueError(
            f"x: expected a tensor {shape} with at least one spatial axis, got {describe(x)}"
        )
    maps = x if batched else x.unsqueeze(0)
    spatial = tuple(maps.shape[2:])
    n = math.prod(spatial)
    pos = grid_positions(spatial, x.dtype, x.device)
    edges = _map_edges(edge_set, n, maps.shape[0], x.device)
    graphs = []
    for sample, ei in zip(maps, edges):
        data = Data(x=sample.reshape(sample.shape[0], n).t(), pos=pos)
        if ei is not None:
            data.edge_index = ei
        graphs.append(data)
    return Batch.from_data_list(graphs) if batched else graphs[0]


def data_to_feature_map(data: Data | Batch, shape: Sequence[int]) -> Tensor:
    r"""The inverse of :func:`feature_map_to_data`: node features back to (B, C, \*S).

    Args:
        data (Data or Batch): ``data.x`` (B·N, C), each graph holding N = prod(``shape``)
            nodes in row-major position order.
        shape (sequence of int): the spatial shape S.

    Returns:
        Tensor: (B, C, \*S); B = 1 for a ``Data``.

    Raises:
        ValueError: a graph whose node count is not prod(``shape``).
    """
    from torch_geometric.data import Batch, Data

    if not isinstance(data, Data):
        raise TypeError(
            f"data: expected a torch_geometric Data or Batch, got {type(data).__name__}"
        )
    spatial = tuple(int(s) for s in shape)
    if not spatial or any(s < 1 for s in spatial):
        raise ValueError(f"shape: expected a non-empty sequence of positive ints, got {shape!r}")
    x = data.x
    if not isinstance(x, Tensor) or x.dim() != 2:
        got = describe(x) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"data.x: expected a 2-D (N, C) tensor, got {got}")
    n = math.prod(spatial)
    if isinstance(data, Batch):
        sizes = data.ptr.diff() if getattr(data, "ptr", None) is not None else None
        batch = data.num_graphs
    else:
        sizes, batch = None, 1
    if x.shape[0] != batch * n or (sizes is not None and bool((sizes != n).any())):
        per = sizes.tolist() if sizes is not None else [x.shape[0]]
        raise ValueError(
            f"data: expected {batch} graph(s) of prod({spatial}) = {n} nodes, got node counts {per}"
        )
    return x.reshape(batch, n, x.shape[1]).transpose(1, 2).reshape(batch, x.shape[1], *spatial)
