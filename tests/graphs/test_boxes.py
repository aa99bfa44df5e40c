"""Box graphs and pair geometry against hand computations and brute force."""

from __future__ import annotations

import math

import networkx as nx
import pytest
import torch

from nlgraph.graphs import BoxKNN, box_geometry, box_graph, box_iou, geometry_embedding


def _random_boxes(r: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(r, 2, generator=g, dtype=dtype) * 100
    wh = torch.rand(r, 2, generator=g, dtype=dtype) * 30 + 1
    return torch.cat([xy, xy + wh], 1)


def _edges(edge_index: torch.Tensor) -> list[tuple[int, int]]:
    return list(zip(edge_index[0].tolist(), edge_index[1].tolist()))


def test_geometry_hand_computation() -> None:
    boxes = torch.tensor([[0.0, 0.0, 4.0, 2.0], [6.0, 4.0, 8.0, 10.0]], dtype=torch.float64)
    geo = box_geometry(boxes, torch.tensor([[0, 1, 0], [1, 0, 0]]))
    # m = 0: centre (2, 1), w 4, h 2; n = 1: centre (7, 7), w 2, h 6.
    want_01 = [math.log(5 / 4), math.log(6 / 2), math.log(2 / 4), math.log(6 / 2)]
    want_10 = [math.log(5 / 2), math.log(6 / 6), math.log(4 / 2), math.log(2 / 6)]
    want_00 = [math.log(1e-3), math.log(1e-3), 0.0, 0.0]  # coincident centres: clamped
    torch.testing.assert_close(geo, torch.tensor([want_01, want_10, want_00], dtype=torch.float64))


def test_embedding_hand_computation() -> None:
    geo = torch.tensor([[0.3, -1.2, 0.05, 2.0]], dtype=torch.float64)
    emb = geometry_embedding(geo, dim=16, wave_length=1000.0)
    want = []
    for f in range(4):
        angles = [100 * geo[0, f].item() / 1000 ** (8 * t / 16) for t in range(2)]
        want += [math.sin(a) for a in angles] + [math.cos(a) for a in angles]
    torch.testing.assert_close(emb[0], torch.tensor(want, dtype=torch.float64))


def test_geometry_gradient_flows_to_boxes() -> None:
    boxes = _random_boxes(5).requires_grad_(True)
    ei = box_graph(boxes.detach())
    assert torch.autograd.gradcheck(lambda b: geometry_embedding(box_geometry(b, ei), 8), (boxes,))


@pytest.mark.parametrize("shuffle", [False, True])
def test_full_graph_is_all_pairs_per_image(shuffle: bool) -> None:
    sizes = [3, 0, 1, 5]  # image 1 has no box
    batch = torch.repeat_interleave(torch.arange(4), torch.tensor(sizes))
    if shuffle:
        batch = batch[torch.randperm(batch.numel(), generator=torch.Generator().manual_seed(1))]
    boxes = _random_boxes(batch.numel())
    ei = box_graph(boxes, batch)
    want = {(m, n) for n in range(9) for m in range(9) if batch[m] == batch[n]}
    assert set(_edges(ei)) == want and ei.shape[1] == len(want)
    assert bool((ei[1][1:] >= ei[1][:-1]).all())  # sorted by query box
    # Networkx: the graph's weakly connected components are the images.
    g = nx.DiGraph(_edges(ei))
    comps = sorted(sorted(c) for c in nx.weakly_connected_components(g))
    want_comps = sorted(sorted(torch.nonzero(batch == i).flatten().tolist()) for i in (0, 2, 3))
    assert comps == want_comps


@pytest.mark.parametrize("metric", ["center", "iou"])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_knn_matches_brute_force(metric: str, k: int) -> None:
    batch = torch.tensor([0] * 6 + [1] * 2 + [2] * 7)
    boxes = _random_boxes(15, seed=3)
    boxes[9] = boxes[10]  # a duplicate box: ties go to the lower index, the box itself first
    ei = box_graph(boxes, batch, k=k, metric=metric)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    want = []
    for n in range(15):
        cands = [m for m in range(15) if batch[m] == batch[n] and m != n]
        if metric == "center":
            key = [(math.dist(centres[n].tolist(), centres[m].tolist()), m) for m in cands]
        else:
            key = [(-_iou(boxes[n], boxes[m]), m) for m in cands]
        ranked = [n] + [m for _, m in sorted(key)]
        want += [(m, n) for m in ranked[:k]]
    assert _edges(ei) == want


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def test_box_iou_matches_loop() -> None:
    a, b = _random_boxes(6, 4), _random_boxes(5, 5)
    a[0] = torch.tensor([3.0, 3.0, 3.0, 3.0])  # zero area
    got = box_iou(a, b)
    want = torch.tensor([[_iou(x, y) for y in b] for x in a], dtype=torch.float64)
    torch.testing.assert_close(got, want)


def test_knn_spec_and_edge_cases() -> None:
    boxes = _random_boxes(4)
    torch.testing.assert_close(BoxKNN(2)(boxes), box_graph(boxes, k=2))
    assert box_graph(boxes[:0]).shape == (2, 0)
    assert box_graph(boxes[:0], k=3).shape == (2, 0)
    assert _edges(box_graph(boxes[:1], k=5)) == [(0, 0)]


def test_errors() -> None:
    boxes = _random_boxes(3)
    bad = boxes.clone()
    bad[1, 2] = bad[1, 0] - 1
    with pytest.raises(ValueError, match="boxes: expected x1 <= x2.*row 1.*x2 < x1"):
        box_graph(bad)
    nan = boxes.clone()
    nan[2, 1] = float("nan")
    with pytest.raises(ValueError, match="boxes: expected finite coordinates, got row 2"):
        box_graph(nan)
    with pytest.raises(ValueError, match=r"boxes: expected a 2-D \(R, 4\)"):
        box_graph(boxes[:, :3])
    with pytest.raises(ValueError, match="metric: expected one of"):
        box_graph(boxes, k=2, metric="l1")
    with pytest.raises(ValueError, match="k: expected a positive int"):
        box_graph(boxes, k=0)
    with pytest.raises(ValueError, match="batch: expected a 1-D tensor of length 3"):
        box_graph(boxes, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="dim: expected a positive multiple of 8"):
        geometry_embedding(torch.zeros(2, 4), dim=12)
    with pytest.raises(ValueError, match=r"geometry: expected an \(E, 4\) tensor"):
        geometry_embedding(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"edge_index: expected a \(2, E\) int64 tensor"):
        box_geometry(boxes, torch.zeros(3, 2, dtype=torch.long))
