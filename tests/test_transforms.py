"""nlgraph.transforms.KNNGraph against an independent construction (explicit distances)."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch_geometric.transforms
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.transforms import BaseTransform, Compose

from nlgraph.transforms import KNNGraph


def reference_edges(
    pos: Tensor, k: int, loop: bool, cosine: bool, undirected: bool
) -> set[tuple[int, int]]:
    """(source j, target i) pairs: for each i its k nearest j, ties towards the lower j."""
    p = pos.double()
    if cosine:
        unit = p / p.norm(dim=1, keepdim=True)
        d = 1.0 - unit @ unit.T
    else:
        d = ((p[:, None] - p[None]) ** 2).sum(-1)
    edges = set()
    for i in range(len(p)):
        candidates = [j for j in range(len(p)) if loop or j != i]
        for j in sorted(candidates, key=lambda j: (d[i, j].item(), j))[:k]:
            edges.add((j, i))
            if undirected:
                edges.add((i, j))
    return edges


def pairs(edge_index: Tensor) -> list[tuple[int, int]]:
    return [tuple(e) for e in edge_index.T.tolist()]


@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("force_undirected", [False, True])
@pytest.mark.parametrize("cosine", [False, True])
def test_knn_graph_transform_equals_reference(
    loop: bool, force_undirected: bool, cosine: bool
) -> None:
    pos = torch.randn(40, 3)
    data = Data(pos=pos, edge_attr=torch.randn(5, 2), edge_index=torch.zeros(2, 5).long())
    out = KNNGraph(k=4, loop=loop, force_undirected=force_undirected, cosine=cosine)(data)
    assert out.edge_attr is None
    got = pairs(out.edge_index)
    assert len(got) == len(set(got))  # no duplicate edge, even when made undirected
    assert set(got) == reference_edges(pos, 4, loop, cosine, force_undirected)
    if force_undirected:
        assert got == sorted(got, key=lambda e: (e[0], e[1]))  # to_undirected's coalesced order


def test_flow_target_to_source() -> None:
    pos = torch.randn(30, 2)
    a = KNNGraph(k=3)(Data(pos=pos)).edge_index
    b = KNNGraph(k=3, flow="target_to_source")(Data(pos=pos)).edge_index
    assert torch.equal(a.flip(0), b)
    assert torch.equal(torch.bincount(a[1], minlength=30), torch.full((30,), 3))


def test_batch_round_trip() -> None:
    graphs = [Data(pos=torch.randn(n, 3), x=torch.randn(n, 2)) for n in (12, 2, 30, 1)]
    # transform the Batch at once: each graph only links its own nodes
    out = KNNGraph(k=5, force_undirected=True)(Batch.from_data_list(graphs))
    assert isinstance(out, Batch)
    offsets = [0, 12, 14, 44, 45]
    expected = set()
    for g, start in zip(graphs, offsets):
        expected |= {
            (j + start, i + start) for j, i in reference_edges(g.pos, 5, False, False, True)
        }
    assert set(pairs(out.edge_index)) == expected
    # transform each Data then batch (PyG's pre_transform route): same edges, and they survive
    # the Batch -> Data round trip
    single = [KNNGraph(k=5, force_undirected=True)(g.clone()) for g in graphs]
    batched = Batch.from_data_list(single)
    assert torch.equal(batched.edge_index, out.edge_index)
    for g, back in zip(single, batched.to_data_list()):
        assert torch.equal(back.edge_index, g.edge_index) and torch.equal(back.x, g.x)


def test_is_a_pyg_transform_with_pyg_repr() -> None:
    t = KNNGraph(k=6)
    assert isinstance(t, BaseTransform)
    assert repr(t) == "KNNGraph(k=6)" == repr(KNNGraph())
    assert repr(KNNGraph(3, loop=True)) == "KNNGraph(k=3)"
    data = Compose([KNNGraph(k=2)])(Data(pos=torch.tensor([[0.0], [1.0], [3.0]])))
    assert data.edge_index.tolist() == [[1, 2, 0, 2, 1, 0], [0, 0, 1, 1, 2, 2]]


def test_signature_matches_pyg() -> None:
    ours = inspect.signature(KNNGraph.__init__).parameters
    pyg = inspect.signature(torch_geometric.transforms.KNNGraph.__init__).parameters
    assert [(p.name, p.default, p.kind) for p in ours.values()] == [
        (p.name, p.default, p.kind) for p in pyg.values()
    ]
    names = ["self", "k", "loop", "force_undirected", "flow", "cosine", "num_workers"]
    assert list(ours) == names


def test_num_workers_is_stored_and_changes_nothing() -> None:
    assert KNNGraph().num_workers == 1
    t = KNNGraph(3, True, False, "source_to_target", False, 4)  # PyG's positional order
    assert (t.k, t.loop, t.num_workers) == (3, True, 4)
    assert repr(t) == "KNNGraph(k=3)"  # PyG shows k only
    pos = torch.randn(25, 2)
    got = pairs(t(Data(pos=pos)).edge_index)
    assert set(got) == reference_edges(pos, 3, True, False, False)
    assert got == pairs(KNNGraph(3, loop=True)(Data(pos=pos)).edge_index)


def test_int32_batch() -> None:
    graphs = [Data(pos=torch.randn(n, 3)) for n in (9, 3, 14)]
    batch = Batch.from_data_list(graphs)
    batch.batch = batch.batch.int()
    out = KNNGraph(k=4)(batch)
    expected = set()
    for g, start in zip(graphs, (0, 9, 12)):
        expected |= {
            (j + start, i + start) for j, i in reference_edges(g.pos, 4, False, False, False)
        }
    assert out.edge_index.dtype == torch.long
    assert set(pairs(out.edge_index)) == expected


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"k": 0}, ValueError, "^k: "),
        ({"k": 2.5}, TypeError, "^k: "),
        ({"flow": "sideways"}, ValueError, "^flow: "),
        ({"loop": "yes"}, TypeError, "^loop: "),
        ({"force_undirected": None}, TypeError, "^force_undirected: "),
        ({"cosine": 1}, TypeError, "^cosine: "),
        ({"num_workers": 0}, ValueError, "^num_workers: expected a positive int, got 0$"),
        ({"num_workers": "4"}, TypeError, "^num_workers: expected a positive int, got str"),
    ],
)
def test_constructor_errors(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        KNNGraph(**kwargs)


def test_missing_pos() -> None:
    with pytest.raises(ValueError, match=r"^data\.pos: "):
        KNNGraph()(Data(x=torch.randn(3, 2)))
