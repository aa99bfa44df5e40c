"""PyG code that calls ``knn``/``knn_graph`` internally, run with nlgraph's builders patched in.

PyG 2.8.1's ``torch_geometric.nn.knn``/``knn_graph`` need pyg-lib. Each test replaces the exact
module attribute the PyG code looks up (``monkeypatch.setattr``) with nlgraph's function and
checks the PyG result against an independent reference: brute-force distances (``torch.cdist``
without the matrix-multiply shortcut, float64) ranked by a stable sort, ties to the lower index.

Callers covered:

- ``torch_geometric.nn.unpool.knn_interpolate`` (module global ``knn``; passes ``batch_x``,
  ``batch_y`` and ``num_workers`` by keyword);
- ``torch_geometric.transforms.KNNGraph`` (calls ``torch_geometric.nn.knn_graph`` with
  ``loop``, ``flow``, ``cosine`` and ``num_workers``);
- ``torch_geometric.llm.models.ProteinMPNN`` (module global ``knn_graph``, ``loop=True``, per
  protein of ``batch``).
"""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch
import torch_geometric.nn
import torch_geometric.transforms
import torch_geometric.typing
from torch import Tensor
from torch_geometric.data import Batch, Data

from nlgraph.graphs import knn, knn_graph
from nlgraph.transforms import KNNGraph

#: The module (not the function of the same name) whose global ``knn`` knn_interpolate calls.
INTERPOLATE = importlib.import_module("torch_geometric.nn.unpool.knn_interpolate")
PROTEIN_MPNN = importlib.import_module("torch_geometric.llm.models.protein_mpnn")
#: Without pyg-lib, PyG's own builders raise ImportError: the patched calls are then the only
#: route, so a passing test cannot have used PyG's builder by accident.
NO_PYG_KNN = not torch_geometric.typing.WITH_KNN


def batch_of(sizes: list[int], dtype: torch.dtype = torch.long) -> Tensor:
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).to(dtype)


def brute_neighbours(
    pos_x: Tensor,
    pos_y: Tensor,
    k: int,
    batch_x: Tensor | None = None,
    batch_y: Tensor | None = None,
    cosine: bool = False,
    exclude_self: bool = False,
) -> list[list[int]]:
    """For each query of ``pos_y``: its k nearest points of ``pos_x`` (same graph), nearest
    first, equal distances in ascending index."""
    px, py = pos_x.double(), pos_y.double()
    if cosine:
        d = 1.0 - (py / py.norm(dim=1, keepdim=True)) @ (px / px.norm(dim=1, keepdim=True)).T
    else:
        d = torch.cdist(py, px, compute_mode="donot_use_mm_for_euclid_dist")
    bx = torch.zeros(len(px), dtype=torch.long) if batch_x is None else batch_x.long()
    by = torch.zeros(len(py), dtype=torch.long) if batch_y is None else batch_y.long()
    allowed = by[:, None] == bx[None, :]
    if exclude_self:
        allowed &= ~torch.eye(len(py), len(px), dtype=torch.bool)
    order = torch.sort(d.masked_fill(~allowed, float("inf")), dim=1, stable=True).indices
    return [order[i, : min(k, int(allowed[i].sum()))].tolist() for i in range(len(py))]


def idw_reference(
    feats: Tensor,
    pos_x: Tensor,
    pos_y: Tensor,
    k: int,
    batch_x: Tensor | None,
    batch_y: Tensor | None,
) -> Tensor:
    """Inverse squared-distance weighted mean of the features of each query's k nearest."""
    out = torch.empty(len(pos_y), feats.shape[1], dtype=torch.float64)
    for i, nbrs in enumerate(brute_neighbours(pos_x, pos_y, k, batch_x, batch_y)):
        num, den = torch.zeros(feats.shape[1], dtype=torch.float64), 0.0
        for j in nbrs:
            w = 1.0 / max(float(((pos_x[j] - pos_y[i]) ** 2).sum()), 1e-16)
            num += w * feats[j].double()
            den += w
        out[i] = num / den
    return out


def edge_pairs(edge_index: Tensor) -> list[tuple[int, int]]:
    return [tuple(e) for e in edge_index.T.tolist()]


@pytest.mark.parametrize(
    ("ours", "pyg"),
    [(knn, torch_geometric.nn.knn), (knn_graph, torch_geometric.nn.knn_graph)],
)
def test_signatures_extend_pyg(ours, pyg) -> None:
    """PyG's parameters, in its positional order with its defaults; nlgraph's own extras are
    keyword-only after them."""
    mine = list(inspect.signature(ours).parameters.values())
    theirs = list(inspect.signature(pyg).parameters.values())
    assert [(p.name, p.default) for p in mine[: len(theirs)]] == [
        (p.name, p.default) for p in theirs
    ]
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in mine[: len(theirs)])
    assert [p.name for p in mine[len(theirs) :]] == [
        "metric",
        "block_size",
        "backend",
        "search",
        "n_clusters",
        "n_probe",
    ]
    assert all(p.kind is p.KEYWORD_ONLY for p in mine[len(theirs) :])


@pytest.mark.parametrize("batch_dtype", [None, torch.long, torch.int32])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_knn_interpolate(
    monkeypatch: pytest.MonkeyPatch, batch_dtype: torch.dtype | None, k: int
) -> None:
    # graph 1 has fewer points (4) than k=6: its queries average all of them
    sizes_x, sizes_y = [30, 4, 25], [50, 7, 33]
    pos_x = torch.randn(sum(sizes_x), 3, dtype=torch.float64)
    pos_y = torch.randn(sum(sizes_y), 3, dtype=torch.float64)
    pos_y[5] = pos_x[2]  # a query on a point: weight 1e16, its value is that point's
    feats = torch.randn(sum(sizes_x), 4, dtype=torch.float64)
    if batch_dtype is None:
        bx = by = None
    else:
        bx, by = batch_of(sizes_x, batch_dtype), batch_of(sizes_y, batch_dtype)
    if NO_PYG_KNN:
        with pytest.raises(ImportError):
            torch_geometric.nn.knn_interpolate(feats, pos_x, pos_y, bx, by, k)
    monkeypatch.setattr(INTERPOLATE, "knn", knn)
    out = torch_geometric.nn.knn_interpolate(feats, pos_x, pos_y, bx, by, k=k, num_workers=4)
    expected = idw_reference(feats, pos_x, pos_y, k, bx, by)
    assert out.shape == (sum(sizes_y), 4)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out[5], feats[2], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("flow", ["source_to_target", "target_to_source"])
@pytest.mark.parametrize("cosine", [False, True])
def test_pyg_knn_graph_transform(
    monkeypatch: pytest.MonkeyPatch, loop: bool, flow: str, cosine: bool
) -> None:
    sizes = [20, 3, 31]
    graphs = [Data(pos=torch.randn(n, 3)) for n in sizes]
    data = Batch.from_data_list(graphs)
    pyg_transform = torch_geometric.transforms.KNNGraph(
        k=5, loop=loop, flow=flow, cosine=cosine, num_workers=2
    )
    if NO_PYG_KNN:
        with pytest.raises(ImportError):
            pyg_transform(data.clone())
    monkeypatch.setattr(torch_geometric.nn, "knn_graph", knn_graph)
    out = pyg_transform(data.clone())
    nbrs = brute_neighbours(
        data.pos, data.pos, 5, data.batch, data.batch, cosine=cosine, exclude_self=not loop
    )
    # (source j, target i) in order: targets ascending, each one's sources nearest first
    expected = [(j, i) for i, js in enumerate(nbrs) for j in js]
    got = edge_pairs(out.edge_index if flow == "source_to_target" else out.edge_index.flip(0))
    assert got == expected
    assert len(expected) == 20 * 5 + 3 * (3 if loop else 2) + 31 * 5
    assert out.edge_attr is None
    ours = KNNGraph(k=5, loop=loop, flow=flow, cosine=cosine, num_workers=2)(data.clone())
    assert torch.equal(out.edge_index, ours.edge_index)


def test_pyg_knn_graph_transform_undirected(monkeypatch: pytest.MonkeyPatch) -> None:
    pos = torch.randn(40, 2)
    monkeypatch.setattr(torch_geometric.nn, "knn_graph", knn_graph)
    out = torch_geometric.transforms.KNNGraph(k=3, force_undirected=True)(Data(pos=pos))
    nbrs = brute_neighbours(pos, pos, 3, exclude_self=True)
    directed = {(j, i) for i, js in enumerate(nbrs) for j in js}
    assert edge_pairs(out.edge_index) == sorted(directed | {(i, j) for j, i in directed})


def protein(sizes: list[int], masked: list[int]) -> dict[str, Tensor]:
    """Inputs of ProteinMPNN.forward: a random backbone (N, Ca, C, O) per residue."""
    n = sum(sizes)
    ca = torch.cumsum(torch.randn(n, 3) * 2.0, 0)  # a random walk, like a chain
    x = ca[:, None, :] + 0.8 * torch.randn(n, 4, 3)
    x[:, 1] = ca
    mask = torch.ones(n)
    mask[masked] = 0.0
    return {
        "x": x,
        "chain_seq_label": torch.randint(0, 21, (n,)),
        "mask": mask,
        "chain_mask_all": torch.ones(n),
        "residue_idx": torch.cat([torch.arange(s) for s in sizes]),
        "chain_encoding_all": torch.ones(n, dtype=torch.long),
        "batch": batch_of(sizes),
    }


def test_protein_mpnn(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = protein([18, 25], masked=[3, 20, 21])
    model = PROTEIN_MPNN.ProteinMPNN(
        hidden_dim=16, num_encoder_layers=1, num_decoder_layers=1, num_neighbors=6
    ).eval()
    if NO_PYG_KNN:
        with pytest.raises(ImportError):
            model(**inputs)
    monkeypatch.setattr(PROTEIN_MPNN, "knn_graph", knn_graph)
    edge_index, edge_attr = model._featurize(inputs["x"], inputs["mask"], inputs["batch"])
    # reference: each valid residue's 6 nearest valid Ca of its protein, itself included
    valid = inputs["mask"].bool().nonzero().squeeze(1)
    ca, batch = inputs["x"][valid, 1], inputs["batch"][valid]
    nbrs = brute_neighbours(ca, ca, 6, batch, batch)
    expected = [(int(valid[j]), int(valid[i])) for i, js in enumerate(nbrs) for j in js]
    assert edge_pairs(edge_index) == expected
    assert edge_attr.shape == (len(expected), 25 * 16)
    with torch.no_grad():
        log_probs = model(**inputs)
    assert log_probs.shape == (43, 21) and bool(log_probs.isfinite().all())
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(43))
