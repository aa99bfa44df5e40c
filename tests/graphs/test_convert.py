"""Feature map <-> PyG Data/Batch and edge set <-> edge_index conversions, against explicit loops."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch_geometric.data import Batch, Data

from nlgraph.graphs import COOGraph, RegularGraph
from nlgraph.graphs.convert import (
    data_to_feature_map,
    feature_map_to_data,
    from_edge_index,
    to_edge_index,
)


def edge_set(ei: torch.Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, ei.t().tolist()))


@pytest.mark.parametrize("spatial", [(7,), (3, 4), (2, 3, 2)])
def test_round_trip_batched(spatial: tuple[int, ...]) -> None:
    x = torch.randn(2, 5, *spatial, dtype=torch.float64)
    batch = feature_map_to_data(x)
    assert isinstance(batch, Batch) and batch.num_graphs == 2
    n = len(list(itertools.product(*map(range, spatial))))
    assert batch.x.shape == (2 * n, 5) and batch.pos.shape == (2 * n, len(spatial))
    assert "edge_index" not in batch
    for b in range(2):
        for node, coord in enumerate(itertools.product(*map(range, spatial))):
            row = b * n + node
            assert batch.pos[row].tolist() == list(map(float, coord))
            assert torch.equal(batch.x[row], x[(b, slice(None), *coord)])
    assert batch.pos.dtype == torch.float64
    assert torch.equal(data_to_feature_map(batch, spatial), x)


def test_round_trip_single_map() -> None:
    x = torch.randn(3, 4, 5)
    data = feature_map_to_data(x, batched=False)
    assert type(data) is Data and data.x.shape == (20, 3)
    assert data.pos[7].tolist() == [1.0, 2.0]
    assert torch.equal(data.x[7], x[:, 1, 2])
    assert torch.equal(data_to_feature_map(data, (4, 5)), x.unsqueeze(0))


def test_full_edges_per_graph() -> None:
    batch = feature_map_to_data(torch.randn(2, 3, 2, 2), "full")
    expected = {(j, i) for g in (0, 4) for i in range(g, g + 4) for j in range(g, g + 4)}
    assert batch.edge_index.shape == (2, 32)
    assert edge_set(batch.edge_index) == expected


def test_tensor_and_graph_edge_sets() -> None:
    ei = torch.tensor([[0, 2, 5], [1, 1, 3]])
    x = torch.randn(2, 3, 6)
    for spec in (ei, COOGraph(ei, 6, 6)):
        batch = feature_map_to_data(x, spec)
        assert edge_set(batch.edge_index) == edge_set(ei) | edge_set(ei + 6)
    index = torch.tensor([[[1], [2], [3], [4], [5], [0]], [[0], [0], [0], [0], [0], [0]]])
    mask = torch.ones(2, 6, 1, dtype=torch.bool)
    mask[1, 3:] = False
    batch = feature_map_to_data(x, RegularGraph(index, 6, mask))
    expected = {(int(index[0, i, 0]), i) for i in range(6)} | {(6, 6 + i) for i in range(3)}
    assert edge_set(batch.edge_index) == expected


def test_to_edge_index() -> None:
    full = to_edge_index("full", num_queries=3, num_keys=2)
    assert full.tolist() == [[0, 1, 0, 1, 0, 1], [0, 0, 1, 1, 2, 2]]
    index = torch.randint(0, 5, (2, 4, 3))
    mask = torch.rand(2, 4, 3) < 0.6
    graph = RegularGraph(index, 5, mask)
    for sample in range(2):
        expected = [(int(index[sample, i, s]), i)
                    for i in range(4) for s in range(3) if mask[sample, i, s]]  # fmt: skip
        got = to_edge_index(graph, sample)
        assert sorted(map(tuple, got.t().tolist())) == sorted(expected)
    shared = RegularGraph(index[:1], 5)
    assert to_edge_index(shared, 1).shape == (2, 12)
    ei = torch.tensor([[0, 1], [2, 0]])
    assert to_edge_index(COOGraph(ei, 3, 2)) is ei
    assert to_edge_index(ei) is ei


def test_from_edge_index_round_trip() -> None:
    ei = torch.tensor([[0, 4, 4], [2, 0, 1]])
    graph = from_edge_index(ei, 3, 5)
    assert (graph.num_queries, graph.num_keys) == (3, 5)
    assert torch.equal(to_edge_index(graph), ei)
    dense = graph.to_regular().to_coo().edge_index
    assert edge_set(dense) == edge_set(ei)


def test_errors() -> None:
    with pytest.raises(ValueError, match="^num_queries: expected"):
        to_edge_index("full", num_keys=3)
    with pytest.raises(TypeError, match="^graph: expected"):
        to_edge_index("knn")
    with pytest.raises(
        IndexError, match=r"^edge_index\[0\] \(keys, num_keys=2\): expected indices in \[0, 2\)"
    ):
        from_edge_index(torch.tensor([[2], [0]]), 3, 2)
    with pytest.raises(IndexError, match=r"^edge_index\[1\] \(queries, num_queries=3\)"):
        from_edge_index(torch.tensor([[0], [3]]), 3, 2)
    with pytest.raises(ValueError, match="^edge_index: expected a \\(2, E\\) int64"):
        from_edge_index(torch.tensor([[0.0], [1.0]]), 3, 2)
    with pytest.raises(ValueError, match="^x: expected a tensor \\(B, C, \\*S\\)"):
        feature_map_to_data(torch.randn(3, 4))
    with pytest.raises(TypeError, match="^x: expected a floating-point"):
        feature_map_to_data(torch.ones(1, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="^edge_set: expected a graph over the map's 4"):
        feature_map_to_data(
            torch.randn(1, 3, 4), COOGraph(torch.zeros(2, 1, dtype=torch.long), 4, 2)
        )
    with pytest.raises(TypeError, match="^edge_set: expected"):
        feature_map_to_data(torch.randn(1, 3, 4), "knn")
    batch = feature_map_to_data(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="^data: expected 2 graph\\(s\\) of prod\\(\\(5,\\)\\)"):
        data_to_feature_map(batch, (5,))
    with pytest.raises(TypeError, match="^data: expected"):
        data_to_feature_map(torch.randn(4, 3), (4,))
