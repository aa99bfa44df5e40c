"""The exact blocked k-NN builders against brute force (cdist / explicit distances + stable sort).

The references rank every candidate by (distance, index) with a stable sort over all points of
the query's graph; edge sets are compared as sorted lists of (query, point) pairs, and the
per-query order (nearest first) is checked where distances are distinct.
"""

from __future__ import annotations

import importlib
import types

import pytest
import torch
from torch import Tensor

from nlgraph._measure import memory_stats
from nlgraph.graphs.point_knn import knn, knn_graph
from tests.helpers import needs_package, with_device


def reference_distance(x: Tensor, y: Tensor, metric: str) -> Tensor:
    """(M, N) distance of every query to every point, float64, smaller = nearer."""
    x, y = x.double(), y.double()
    if metric == "l2":
        return ((y[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    if metric == "ip":
        return -(y @ x.T)
    norms = y.norm(dim=1)[:, None] * x.norm(dim=1)[None, :]
    return 1.0 - (y @ x.T) / norms.clamp_min(1e-12)


def reference_knn(
    x: Tensor,
    y: Tensor,
    k: int,
    batch_x: Tensor | None = None,
    batch_y: Tensor | None = None,
    metric: str = "l2",
    exclude_self: bool = False,
) -> list[tuple[int, int]]:
    """(query, point) pairs in output order: queries ascending, each (distance, index) sorted."""
    d = reference_distance(x, y, metric)
    bx = torch.zeros(len(x), dtype=torch.long) if batch_x is None else batch_x.cpu()
    by = torch.zeros(len(y), dtype=torch.long) if batch_y is None else batch_y.cpu()
    allowed = by[:, None] == bx[None, :]
    if exclude_self:
        allowed &= ~torch.eye(len(y), len(x), dtype=torch.bool)
    d = d.cpu().masked_fill(~allowed, float("inf"))
    order = torch.sort(d, dim=1, stable=True).indices  # ties: lower index first
    pairs = []
    for i in range(len(y)):
        take = min(k, int(allowed[i].sum()))
        pairs += [(i, j) for j in order[i, :take].tolist()]
    return pairs


def as_pairs(edge_index: Tensor) -> list[tuple[int, int]]:
    return [tuple(p) for p in edge_index.T.tolist()]


def batch_of(sizes: list[int]) -> Tensor:
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
@pytest.mark.parametrize("block_size", [1, 7, 64, 1024])
def test_knn_equals_brute_force(metric: str, block_size: int) -> None:
    x = torch.randn(150, 5, dtype=torch.float64)
    y = torch.randn(97, 5, dtype=torch.float64)
    out = knn(x, y, 6, metric=metric, block_size=block_size)
    assert out.dtype == torch.long and out.shape == (2, 97 * 6)
    assert as_pairs(out) == reference_knn(x, y, 6, metric=metric)  # order too: nearest first


def test_cosine_flag_is_the_cosine_metric() -> None:
    x, y = torch.randn(40, 3, dtype=torch.float64), torch.randn(30, 3, dtype=torch.float64)
    out = knn(x, y, 4, cosine=True, block_size=8)
    assert torch.equal(out, knn(x, y, 4, metric="cosine"))
    assert as_pairs(out) == reference_knn(x, y, 4, metric="cosine")


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
@pytest.mark.parametrize("block_size", [3, 50, 1000])
def test_knn_batches_of_unequal_sizes(metric: str, block_size: int) -> None:
    # graph 1 has fewer points than k, graph 3 has points but no query, graph 4 queries but
    # no point (its queries get no neighbour), graph 2 is empty on both sides
    sizes_x, sizes_y = [60, 3, 0, 25, 0, 41], [33, 5, 0, 0, 4, 58]
    x = torch.randn(sum(sizes_x), 4, dtype=torch.float64)
    y = torch.randn(sum(sizes_y), 4, dtype=torch.float64)
    bx, by = batch_of(sizes_x), batch_of(sizes_y)
    out = knn(x, y, 5, bx, by, metric=metric, block_size=block_size)
    expected = reference_knn(x, y, 5, bx, by, metric=metric)
    assert as_pairs(out) == expected
    assert len(expected) == 33 * 5 + 5 * 3 + 58 * 5


@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("flow", ["source_to_target", "target_to_source"])
@pytest.mark.parametrize("block_size", [5, 1024])
def test_knn_graph_equals_brute_force(loop: bool, flow: str, block_size: int) -> None:
    sizes = [70, 4, 1, 33]
    x = torch.randn(sum(sizes), 3, dtype=torch.float64)
    batch = batch_of(sizes)
    out = knn_graph(x, 6, batch, loop=loop, flow=flow, block_size=block_size)
    expected = reference_knn(x, x, 6, batch, batch, exclude_self=not loop)
    query, point = (out[1], out[0]) if flow == "source_to_target" else (out[0], out[1])
    assert as_pairs(torch.stack([query, point])) == expected
    if not loop:
        assert not bool((out[0] == out[1]).any())


def test_knn_graph_flow_flips_the_rows() -> None:
    x = torch.randn(50, 2)
    a = knn_graph(x, 3, flow="source_to_target")
    b = knn_graph(x, 3, flow="target_to_source")
    assert torch.equal(a, b.flip(0))
    assert torch.equal(torch.bincount(a[1]), torch.full((50,), 3))  # each target: k sources


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("block_size", [4, 1000])
def test_ties_go_to_the_lower_index(metric: str, block_size: int) -> None:
    # integer grid with duplicates: distances are exact in float32, many ties across the k-th
    grid = torch.stack(torch.meshgrid(torch.arange(5), torch.arange(5), indexing="ij"), -1)
    x = torch.cat([grid.reshape(-1, 2), grid.reshape(-1, 2)[::3]]).float()
    x = x[torch.randperm(len(x))]
    y = torch.cat([x[:10], torch.tensor([[2.0, 2.0], [0.5, 0.5]])])
    for k in (1, 4, 5, 9):
        out = knn(x, y, k, metric=metric, block_size=block_size)
        assert as_pairs(out) == reference_knn(x, y, k, metric=metric)
        graph = knn_graph(x, k, block_size=block_size, metric=metric)
        assert as_pairs(graph.flip(0)) == reference_knn(x, x, k, metric=metric, exclude_self=True)


def test_duplicates_all_equal() -> None:
    x = torch.ones(20, 3)
    assert knn(x, x[:2], 4).tolist() == [[0, 0, 0, 0, 1, 1, 1, 1], [0, 1, 2, 3, 0, 1, 2, 3]]
    graph = knn_graph(x, 2, block_size=3)  # self left out even among duplicates
    assert graph[0].view(20, 2).tolist() == [[1, 2], [0, 2]] + [[0, 1]] * 18


def test_k_at_least_the_graph_size_gives_every_candidate() -> None:
    x = torch.randn(7, 2, dtype=torch.float64)
    assert as_pairs(knn(x, x, 50)) == reference_knn(x, x, 50)
    assert knn_graph(x, 6).shape[1] == knn_graph(x, 50).shape[1] == 7 * 6


@with_device
def test_device_and_gradients(device: str) -> None:
    x = torch.randn(300, 8, device=device, dtype=torch.float64, requires_grad=True)
    batch = batch_of([100, 200]).to(device)
    out = knn_graph(x, 5, batch, block_size=64)
    assert out.device.type == torch.device(device).type and not out.requires_grad
    expected = reference_knn(x.detach(), x.detach(), 5, batch, batch, exclude_self=True)
    assert as_pairs(out.flip(0)) == expected


def test_empty_inputs() -> None:
    x = torch.randn(0, 3)
    assert knn(x, torch.randn(4, 3), 2).shape == (2, 0)
    assert knn(torch.randn(4, 3), x, 2).shape == (2, 0)
    assert knn_graph(x, 2).shape == (2, 0)
    assert knn_graph(torch.randn(1, 3), 2).shape == (2, 0)


def test_peak_memory_is_blocked() -> None:
    n = 4096
    x, y = torch.randn(n, 16), torch.randn(n, 16)
    stats = memory_stats(lambda: knn(x, y, 8, block_size=256))
    assert stats.largest_bytes < n * n * 4 / 8
    assert stats.peak_bytes < n * n * 4 / 4
    batch = batch_of([1000, 1500, 1596])
    stats = memory_stats(lambda: knn_graph(x, 8, batch, block_size=256))
    assert stats.largest_bytes < n * n * 4 / 8


@needs_package("faiss")
@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_faiss_backend_same_results(metric: str) -> None:
    sizes = [40, 3, 0, 57]
    x = torch.randn(sum(sizes), 6)
    batch = batch_of(sizes)
    for loop in (False, True):
        ref = knn_graph(x, 5, batch, loop=loop, metric=metric)
        assert torch.equal(knn_graph(x, 5, batch, loop=loop, metric=metric, backend="faiss"), ref)
    y, by = torch.randn(30, 6), batch_of([10, 10, 0, 10])
    ref = knn(x, y, 5, batch, by, metric=metric)
    assert torch.equal(knn(x, y, 5, batch, by, metric=metric, backend="faiss", block_size=7), ref)


@needs_package("faiss")
def test_faiss_backend_ties() -> None:
    grid = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij"), -1)
    x = torch.cat([grid.reshape(-1, 2)] * 2).float()
    for k in (1, 3, 5):
        assert torch.equal(knn_graph(x, k, backend="faiss"), knn_graph(x, k))
        assert torch.equal(knn(x, x[:5], k, backend="faiss"), knn(x, x[:5], k))


def test_faiss_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    with pytest.raises(ImportError, match=r"pip install nlgraph\[faiss\]"):
        knn_graph(torch.randn(5, 2), 2, backend="faiss")


def test_module_is_not_shadowed_by_the_function() -> None:
    import nlgraph.graphs
    import nlgraph.graphs.point_knn as module

    assert isinstance(module, types.ModuleType)
    assert nlgraph.graphs.knn is module.knn and nlgraph.graphs.knn_graph is module.knn_graph
    assert isinstance(nlgraph.graphs.knn, types.FunctionType)
    with pytest.raises(ModuleNotFoundError):  # the old module path is gone
        importlib.import_module("nlgraph.graphs.knn")


@pytest.mark.parametrize("metric", ["l2", "ip"])  # cosine ties are not exact in floating point
def test_many_ties_in_long_rows(metric: str) -> None:
    # 3-D integer grid, every point twice: rows of 1000 columns (the grouped top-k path),
    # distances exact in float32, ties across the k-th place everywhere
    grid = torch.stack(torch.meshgrid(*[torch.arange(-4, 4)] * 3, indexing="ij"), -1)
    x = torch.cat([grid.reshape(-1, 3)] * 2)[:1000].float()
    x = x[torch.randperm(len(x))]
    y = torch.cat([x[:40], torch.tensor([[0.5, 0.5, 0.5], [0.0, 0.0, 0.0]])])
    for k in (1, 7, 30):
        assert as_pairs(knn(x, y, k, metric=metric)) == reference_knn(x, y, k, metric=metric)
        assert as_pairs(knn(x.double(), y.double(), k, metric=metric, block_size=9)) == (
            reference_knn(x, y, k, metric=metric)
        )


def test_pyg_positional_order() -> None:
    sizes_x, sizes_y = [30, 4, 20], [10, 3, 12]
    x = torch.randn(sum(sizes_x), 3, dtype=torch.float64)
    y = torch.randn(sum(sizes_y), 3, dtype=torch.float64)
    bx, by = batch_of(sizes_x), batch_of(sizes_y)
    # (x, y, k, batch_x, batch_y, cosine, num_workers, batch_size)
    out = knn(x, y, 5, bx, by, True, 4, 3)
    assert as_pairs(out) == reference_knn(x, y, 5, bx, by, metric="cosine")
    # (x, k, batch, loop, flow, cosine, num_workers, batch_size)
    out = knn_graph(x, 5, bx, True, "target_to_source", False, 2, 3)
    assert as_pairs(out) == reference_knn(x, x, 5, bx, bx)


@pytest.mark.parametrize("num_workers", [1, 3, 64])
def test_num_workers_changes_nothing(num_workers: int) -> None:
    x, batch = torch.randn(60, 4), batch_of([25, 35])
    expected = reference_knn(x, x, 4, batch, batch, exclude_self=True)
    out = knn_graph(x, 4, batch, num_workers=num_workers)
    assert as_pairs(out.flip(0)) == expected
    assert as_pairs(knn(x, x[:9], 4, num_workers=num_workers)) == reference_knn(x, x[:9], 4)


@pytest.mark.parametrize("batch_size", [None, 4, 6])
def test_batch_size_is_the_number_of_graphs(batch_size: int | None) -> None:
    # graph 3 is empty on both sides; with batch_size=6 graphs 4 and 5 are empty too
    sizes_x, sizes_y = [20, 1, 9, 0], [5, 2, 7, 0]
    x = torch.randn(sum(sizes_x), 2, dtype=torch.float64)
    y = torch.randn(sum(sizes_y), 2, dtype=torch.float64)
    bx, by = batch_of(sizes_x), batch_of(sizes_y)
    out = knn(x, y, 3, bx, by, batch_size=batch_size)
    assert as_pairs(out) == reference_knn(x, y, 3, bx, by)
    graph = knn_graph(x, 3, bx, batch_size=batch_size)
    assert as_pairs(graph.flip(0)) == reference_knn(x, x, 3, bx, bx, exclude_self=True)
    # without batch vectors batch_size has nothing to describe
    assert torch.equal(knn(x, y, 3, batch_size=batch_size), knn(x, y, 3))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8, torch.int64])
def test_integer_batch_dtypes(dtype: torch.dtype) -> None:
    sizes_x, sizes_y = [15, 6, 22], [4, 8, 5]
    x = torch.randn(sum(sizes_x), 3, dtype=torch.float64)
    y = torch.randn(sum(sizes_y), 3, dtype=torch.float64)
    bx, by = batch_of(sizes_x), batch_of(sizes_y)
    out = knn(x, y, 4, bx.to(dtype), by.to(dtype))
    assert out.dtype == torch.long
    assert as_pairs(out) == reference_knn(x, y, 4, bx, by)
    assert as_pairs(knn(x, y, 4, bx.to(dtype), by)) == reference_knn(x, y, 4, bx, by)
    graph = knn_graph(x, 4, bx.to(dtype), batch_size=3)
    assert graph.dtype == torch.long
    assert as_pairs(graph.flip(0)) == reference_knn(x, x, 4, bx, bx, exclude_self=True)


def test_one_dimensional_points_are_one_feature() -> None:
    x = torch.tensor([0.0, 4.0, 1.0, 9.0, 3.0, 1.5])
    y = torch.tensor([2.0, 8.0])
    out = knn(x, y, 3)
    # by hand: from 2.0 the distances are 2, 2, 1, 7, 1, 0.5 -> 5 (0.5), 2 (1), 4 (1)
    # from 8.0: 8, 4, 7, 1, 5, 6.5 -> 3 (1), 1 (4), 4 (5); in the graph 5 (1.5) has 2 (0.5)
    # and then 0 and 4 tied at 1.5: the lower index 0
    assert out.tolist() == [[0, 0, 0, 1, 1, 1], [5, 2, 4, 3, 1, 4]]
    assert torch.equal(out, knn(x.view(-1, 1), y.view(-1, 1), 3))
    assert torch.equal(knn(x, y.view(-1, 1), 3), out)  # 1-D against (M, 1) too
    graph = knn_graph(x, 2)
    assert as_pairs(graph.flip(0)) == reference_knn(x[:, None], x[:, None], 2, exclude_self=True)
    assert graph[0].view(6, 2).tolist() == [[2, 5], [4, 5], [5, 0], [1, 4], [1, 5], [2, 0]]


NW, BS = r"^num_workers: expected a positive int", r"^batch_size: expected"


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: knn(torch.randn(5, 1, 1), torch.randn(5, 1), 2), ValueError, "^x: "),
        (lambda: knn(torch.randn(5, 2), torch.randn(5), 2), ValueError, "^y: "),
        (lambda: knn_graph(torch.tensor(1.0), 2), ValueError, "^x: "),
        (lambda: knn(torch.randn(5, 2), torch.randn(5, 3), 2), ValueError, "^y: "),
        (lambda: knn(torch.randn(5, 2), torch.randn(5, 2).double(), 2), ValueError, "^y: "),
        (lambda: knn(torch.arange(4).view(2, 2), torch.randn(2, 2), 2), TypeError, "^x: "),
        (lambda: knn([[0.0]], torch.randn(2, 1), 2), TypeError, "^x: "),
        (lambda: knn(torch.randn(5, 2), torch.randn(5, 2), 0), ValueError, "^k: "),
        (lambda: knn(torch.randn(5, 2), torch.randn(5, 2), 2.0), TypeError, "^k: "),
        (lambda: knn_graph(torch.randn(5, 2), 2, block_size=0), ValueError, "^block_size: "),
        (lambda: knn_graph(torch.randn(5, 2), 2, batch_of([2, 2])), ValueError, "^batch: "),
        (lambda: knn_graph(torch.randn(4, 2), 2, torch.zeros(4)), ValueError, "^batch: "),
        (
            lambda: knn_graph(torch.randn(4, 2), 2, torch.zeros(4, dtype=torch.bool)),
            ValueError,
            "^batch: ",
        ),
        (lambda: knn_graph(torch.randn(3, 2), 2, torch.tensor([1, 0, 1])), ValueError, "^batch: "),
        (lambda: knn_graph(torch.randn(2, 2), 1, torch.tensor([-1, 0])), ValueError, "^batch: "),
        (lambda: knn_graph(torch.randn(4, 2), 2, [0, 0, 0, 0]), TypeError, "^batch: "),
        (
            lambda: knn(torch.randn(4, 2), torch.randn(3, 2), 2, None, batch_of([4])),
            ValueError,
            "^batch_y: ",
        ),
        (
            lambda: knn(torch.randn(4, 2), torch.randn(3, 2), 2, batch_of([3])),
            ValueError,
            "^batch_x: ",
        ),
        (lambda: knn_graph(torch.randn(5, 2), 2, flow="both"), ValueError, "^flow: "),
        (lambda: knn_graph(torch.randn(5, 2), 2, loop=1), TypeError, "^loop: "),
        (lambda: knn_graph(torch.randn(5, 2), 2, metric="l1"), ValueError, "^metric: "),
        (
            lambda: knn_graph(torch.randn(5, 2), 2, cosine=True, metric="ip"),
            ValueError,
            "^cosine: ",
        ),
        (lambda: knn_graph(torch.randn(5, 2), 2, backend="keops"), ValueError, "^backend: "),
        (lambda: knn(torch.randn(5, 2), torch.randn(5, 2), 2, num_workers=0), ValueError, NW),
        (lambda: knn_graph(torch.randn(5, 2), 2, num_workers=-3), ValueError, NW),
        (lambda: knn_graph(torch.randn(5, 2), 2, num_workers=2.0), TypeError, NW),
        (lambda: knn_graph(torch.randn(5, 2), 2, num_workers=True), TypeError, NW),
        (lambda: knn_graph(torch.randn(5, 2), 2, num_workers=None), TypeError, NW),
        (lambda: knn(torch.randn(5, 2), torch.randn(5, 2), 2, batch_size=0), ValueError, BS),
        (lambda: knn_graph(torch.randn(5, 2), 2, batch_size=1.0), TypeError, BS),
        (lambda: knn_graph(torch.randn(5, 2), 2, batch_size=False), TypeError, BS),
        (lambda: knn_graph(torch.randn(5, 2), 2, batch_of([2, 3]), batch_size=1), ValueError, BS),
        (
            lambda: knn(
                torch.randn(4, 2), torch.randn(3, 2), 2, None, batch_of([1, 0, 2]), batch_size=1
            ),
            ValueError,
            r"^batch_size: expected an int >= 3 \(the number of graphs in batch_y\), got 1$",
        ),
    ],
)
def test_errors_name_the_argument(call, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("features", [2, 5])
def test_non_finite_points_are_refused(features):
    """Regression: a NaN point (F > 3, the matmul search) got neighbours of NaN distance and, as
    a query, could be its own neighbour with loop=False. Every search now refuses non-finite
    points, naming the row."""
    x = torch.randn(6, features)
    x[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^x: expected finite coordinates .*row 2"):
        knn_graph(x, 2, loop=False)
    y = torch.randn(3, features)
    y[1, -1] = float("inf")
    with pytest.raises(ValueError, match=r"^y: expected finite coordinates .*row 1"):
        knn(torch.randn(6, features), y, 2)
