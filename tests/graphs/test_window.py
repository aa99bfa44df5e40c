"""Window and TemporalGroups edge sets against brute force: explicit loops over every pair."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from nlgraph.graphs.base import RegularGraph
from nlgraph.graphs.window import TemporalGroups, Window, window_offsets
from tests.helpers import with_device


def containing_cell(c: int, keys: int, pool: int) -> int:
    """The pooled cell whose window [j*pool, (j+1)*pool) holds c; the last cell if it was dropped."""
    cells = [j for j in range(keys) if j * pool <= c < (j + 1) * pool]
    return cells[0] if cells else keys - 1


def brute_window(query_shape, radius, dilation, pool=None):
    """Sorted (key, query) pairs: Chebyshev distance <= r*d on the d-lattice through the cell."""
    pool = pool or (1,) * len(query_shape)
    key_shape = tuple(s // p for s, p in zip(query_shape, pool))
    queries = list(itertools.product(*(range(s) for s in query_shape)))
    keys = list(itertools.product(*(range(s) for s in key_shape)))
    edges = []
    for i, c in enumerate(queries):
        cell = [containing_cell(c[a], key_shape[a], pool[a]) for a in range(len(c))]
        for j, kk in enumerate(keys):
            diffs = [kk[a] - cell[a] for a in range(len(c))]
            if all(abs(x) <= radius * dilation and x % dilation == 0 for x in diffs):
                edges.append((j, i))
    return sorted(edges), len(queries), len(keys)


def brute_groups(query_shape, group, pool=(1, 1, 1)):
    """Sorted (key, query) pairs: the key frame's pooled frames lie in the query's chunk."""
    key_shape = tuple(s // p for s, p in zip(query_shape, pool))
    queries = list(itertools.product(*(range(s) for s in query_shape)))
    keys = list(itertools.product(*(range(s) for s in key_shape)))
    edges = []
    for i, (t, _, _) in enumerate(queries):
        for j, (tk, _, _) in enumerate(keys):
            frames = range(tk * pool[0], (tk + 1) * pool[0])
            if all(f // group == t // group for f in frames):
                edges.append((j, i))
    return sorted(edges), len(queries), len(keys)


def edges_of(graph: RegularGraph) -> list[tuple[int, int]]:
    coo = graph.to_coo()
    return sorted(map(tuple, coo.edge_index.t().tolist()))


def check_layout(graph: RegularGraph, edges, num_queries, num_keys) -> None:
    """Edge set, shapes, degrees, padding (index 0, mask False) and ascending rows."""
    assert graph.index.shape[:2] == (1, num_queries)
    assert graph.num_keys == num_keys
    assert edges_of(graph) == edges
    degree = torch.zeros(num_queries, dtype=torch.long)
    for _, i in edges:
        degree[i] += 1
    assert torch.equal(graph.degree()[0].cpu(), degree)
    assert graph.k == int(degree.max())  # no column is padding in every row
    mask = graph.mask if graph.mask is not None else torch.ones_like(graph.index, dtype=torch.bool)
    assert (graph.index[~mask] == 0).all()
    for row, keep in zip(graph.index[0].tolist(), mask[0].tolist()):
        real = [j for j, m in zip(row, keep) if m]
        assert real == sorted(real) and len(set(real)) == len(real)


SHAPES = [(7,), (10,), (7, 9), (4, 4), (3, 5, 6), (4, 4, 4)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("radius", [0, 1, 2])
@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_window_matches_brute_force(shape, radius, dilation):
    graph = Window(radius, dilation).build(shape)
    check_layout(graph, *brute_window(shape, radius, dilation))


POOLED = [((7,), (2,)), ((10,), (3,)), ((7, 9), (2, 2)), ((5, 6), (2, 3)), ((3, 5, 6), (1, 2, 2))]
POOLED += [((4, 5, 7), (2, 2, 2))]


@pytest.mark.parametrize(("shape", "pool"), POOLED, ids=str)
@pytest.mark.parametrize(("radius", "dilation"), [(0, 1), (1, 1), (2, 1), (1, 2), (2, 2)])
def test_window_pooled_matches_brute_force(shape, pool, radius, dilation):
    key_shape = tuple(s // p for s, p in zip(shape, pool))
    expected = brute_window(shape, radius, dilation, pool)
    check_layout(Window(radius, dilation).build(shape, key_shape, pool), *expected)
    # pool_size alone implies key_shape
    assert edges_of(Window(radius, dilation).build(shape, pool_size=pool)) == expected[0]


def test_window_int_pool_size():
    expected, _, _ = brute_window((6, 7), 1, 1, (2, 2))
    assert edges_of(Window(1).build((6, 7), pool_size=2)) == expected


def test_dropped_trailing_rows_clamp_to_last_key_row():
    # 1-D: query 6 is dropped by the pooling (7 // 2 = 3 cells), it maps onto cell 2
    graph = Window(0).build((7,), pool_size=2)
    assert graph.index[0, :, 0].tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert graph.mask is None


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize(("radius", "dilation"), [(1, 1), (2, 1), (1, 2), (2, 3)])
def test_interior_queries_see_full_window(dims, radius, dilation):
    side = 2 * radius * dilation + 3
    shape = (side,) * dims
    graph = Window(radius, dilation).build(shape)
    full = (2 * radius + 1) ** dims
    assert graph.k == full
    degree = graph.degree()[0].view(shape)
    core = tuple(slice(radius * dilation, side - radius * dilation) for _ in range(dims))
    assert (degree[core] == full).all()
    assert degree.min() < full  # clipped at the borders
    # interior neighbours are exactly query + offsets, in ascending order
    centre = tuple([side // 2] * dims)
    flat = sum(c * s for c, s in zip(centre, [math.prod(shape[a + 1 :]) for a in range(dims)]))
    coords = torch.tensor(centre) + window_offsets(radius, dilation, dims)
    strides = torch.tensor([math.prod(shape[a + 1 :]) for a in range(dims)])
    assert graph.index[0, flat].tolist() == (coords * strides).sum(1).tolist()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_radius_zero_is_self_loop(shape):
    graph = Window(0, dilation=2).build(shape)
    n = math.prod(shape)
    assert graph.mask is None
    assert graph.index.tolist() == [[[i] for i in range(n)]]


@pytest.mark.parametrize(("shape", "pool"), [((7, 9), None), ((3, 5, 6), (1, 2, 2)), ((10,), (3,))])
def test_large_radius_is_full_graph(shape, pool):
    graph = Window(radius=9).build(shape, pool_size=pool)
    n = math.prod(shape)
    assert graph.mask is None
    assert graph.k == graph.num_keys
    assert graph.index.tolist() == [[list(range(graph.num_keys))] * n]


def test_to_coo_round_trip():
    graph = Window(1, 2).build((5, 7))
    back = graph.to_coo().to_regular()
    assert back.k == graph.k
    assert torch.equal(back.degree(), graph.degree())
    for g_row, g_mask, b_row, b_mask in zip(
        graph.index[0], graph.mask[0], back.index[0], back.mask[0]
    ):
        assert g_row[g_mask].tolist() == b_row[b_mask].tolist()
    assert edges_of(back) == edges_of(graph)


def test_window_offsets():
    offsets = window_offsets(1, 2, dims=2)
    expected = [[a, b] for a in (-2, 0, 2) for b in (-2, 0, 2)]
    assert offsets.tolist() == expected and offsets.dtype == torch.long
    assert window_offsets(0, 1, 3).tolist() == [[0, 0, 0]]
    assert window_offsets(2, 1, 1).flatten().tolist() == [-2, -1, 0, 1, 2]


@with_device
def test_window_device(device):
    graph = Window(1).build((6, 7), pool_size=(2, 2), device=device)
    assert graph.index.device.type == device and graph.mask.device.type == device
    assert edges_of(graph) == brute_window((6, 7), 1, 1, (2, 2))[0]


def test_builds_on_meta_device():
    """No data-dependent host synchronisation on the target device."""
    graph = Window(2, 2).build((6, 7, 8), device="meta")
    assert graph.index.is_meta and graph.index.shape == (1, 336, 3 * 4 * 4)  # min(2r+1, ceil(S/d))
    assert TemporalGroups(2).build((4, 3, 3), device="meta").index.is_meta


def test_window_spec():
    assert repr(Window(2)) == "Window(radius=2)"
    assert repr(Window(radius=2, dilation=2)) == "Window(radius=2, dilation=2)"
    assert Window(2) == Window(2, 1) and hash(Window(2)) == hash(Window(2, 1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        Window(2).radius = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"radius": -1}, ValueError, r"^radius: expected a non-negative int, got -1"),
        ({"radius": 1.5}, TypeError, r"^radius: expected a non-negative int, got float"),
        ({"radius": True}, TypeError, r"^radius: expected"),
        ({"radius": 1, "dilation": 0}, ValueError, r"^dilation: expected a positive int, got 0"),
        ({"radius": 1, "dilation": 2.0}, TypeError, r"^dilation: expected a positive int"),
    ],
)
def test_window_spec_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        Window(**kwargs)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (((),), r"^query_shape: expected a tuple of 1 to 3 positive ints"),
        (((2, 2, 2, 2),), r"^query_shape: expected a tuple of 1 to 3"),
        (((4, 0),), r"^query_shape: expected"),
        (((4, 2.0),), r"^query_shape: expected"),
        ((5,), r"^query_shape: expected"),
        (((4, 4), (2,), (2, 2)), r"^key_shape: expected a tuple of 2 positive ints"),
        (((4, 4), (2, 2)), r"^pool_size: expected the pool size when key_shape"),
        (((4, 4), (3, 2), (2, 2)), r"^key_shape: expected query_shape // pool_size = \(2, 2\)"),
        (((4, 4), None, (2,)), r"^pool_size: expected a tuple of 2 positive ints"),
        (((4, 4), None, (5, 1)), r"^pool_size: expected at most query_shape"),
        (((4, 4), None, (0, 1)), r"^pool_size: expected"),
    ],
)
def test_build_errors(args, match):
    with pytest.raises(ValueError, match=match):
        Window(1).build(*args)


@pytest.mark.parametrize(
    ("shape", "group", "pool"),
    [
        ((4, 3, 5), 2, (1, 1, 1)),
        ((6, 2, 3), 3, (1, 1, 1)),
        ((4, 5, 6), 4, (1, 2, 2)),
        ((8, 4, 5), 4, (2, 2, 2)),
        ((4, 3, 3), 1, (1, 2, 2)),
        ((6, 3, 4), 6, (2, 1, 2)),
    ],
    ids=str,
)
def test_temporal_groups_match_brute_force(shape, group, pool):
    graph = TemporalGroups(group).build(shape, pool_size=pool)
    edges, n, n_keys = brute_groups(shape, group, pool)
    check_layout(graph, edges, n, n_keys)
    assert graph.mask is None
    assert graph.k == (group // pool[0]) * (shape[1] // pool[1]) * (shape[2] // pool[2])


def test_temporal_groups_block_diagonal():
    t, h, w, g = 6, 2, 2, 2
    graph = TemporalGroups(g).build((t, h, w))
    dense = torch.zeros(t * h * w, t * h * w, dtype=torch.bool)
    dense[torch.arange(t * h * w)[:, None], graph.index[0]] = True
    block = torch.ones(g * h * w, g * h * w, dtype=torch.bool)
    assert torch.equal(dense, torch.block_diag(*[block] * (t // g)))
    # one chunk = the full graph
    full = TemporalGroups(t).build((t, h, w))
    assert full.index.tolist() == [[list(range(t * h * w))] * (t * h * w)]


def test_temporal_groups_spec_and_errors():
    assert repr(TemporalGroups(4)) == "TemporalGroups(group_size=4)"
    with pytest.raises(ValueError, match=r"^group_size: expected a positive int, got 0"):
        TemporalGroups(0)
    with pytest.raises(TypeError, match=r"^group_size: expected a positive int"):
        TemporalGroups(2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^query_shape: expected a 3-D shape \(T, H, W\)"):
        TemporalGroups(2).build((4, 4))
    with pytest.raises(ValueError, match=r"^query_shape: expected a number of frames T divisible"):
        TemporalGroups(4).build((6, 2, 2))
    with pytest.raises(ValueError, match=r"^pool_size: expected a temporal pool size dividing"):
        TemporalGroups(3).build((6, 4, 4), pool_size=(2, 2, 2))
    with pytest.raises(ValueError, match=r"^pool_size: expected the pool size"):
        TemporalGroups(2).build((4, 4, 4), key_shape=(4, 2, 2))
