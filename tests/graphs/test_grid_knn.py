"""The uniform-grid k-NN search against the brute force and an independent fp64 reference.

The reference (:func:`reference`) ranks every candidate of a query's graph by its float64
``torch.cdist`` distance (direct differences, no matrix-product expansion) with a stable sort,
so ties go to the lower index. Three kinds of data make the comparison exact for everyone:

- float64 data (rounding differences ~1e-16 do not reorder any pair of these samples);
- float32 data on a dyadic grid (multiples of 2^-10 in [-1, 1]): every distance, and the brute
  force's score 2 y·x - |x|², is exact in float32, so all three searches see the same values and
  ties (many) must be broken identically;
- integer lattices and exact duplicates (massive exact ties).

Full-precision float32 data is compared with the fp64 reference only: the brute force's score
rounds relative to |x|² and may order near-ties differently (documented in grid_knn).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

import nlgraph.graphs.grid_knn as grid_knn
from nlgraph._measure import memory_stats
from nlgraph.graphs import point_knn
from nlgraph.graphs.boxes import box_graph
from nlgraph.graphs.grid_knn import search_grid
from nlgraph.graphs.point_knn import knn, knn_graph

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "grid_knn.py"
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    ),
]


# --------------------------------------------------------------------------- references
def reference_order(
    x: Tensor, y: Tensor, sizes_x: list[int], sizes_y: list[int], exclude_self: bool = False
) -> list[tuple[int, int, Tensor]]:
    """Per graph (first query, first point, (queries, candidates) order): fp64 cdist (direct
    differences, no matrix-product expansion) + stable sort, so ties go to the lower index."""
    x, y = x.double().cpu(), y.double().cpu()
    out = []
    sx = sy = 0
    for nx, ny in zip(sizes_x, sizes_y):
        if nx and ny:
            d = torch.cdist(
                y[sy : sy + ny], x[sx : sx + nx], compute_mode="donot_use_mm_for_euclid_dist"
            )
            if exclude_self:
                d.fill_diagonal_(float("inf"))
                d = d[:, :-1] if nx == 1 else d
            out.append((sy, sx, torch.sort(d, dim=1, stable=True).indices))
        sx, sy = sx + nx, sy + ny
    return out


def pairs(order: list[tuple[int, int, Tensor]], k: int, exclude_self: bool = False) -> Tensor:
    """(2, E) (query, point) pairs, queries ascending, from :func:`reference_order`."""
    rows, cols = [], []
    for sy, sx, o in order:
        take = min(k, o.shape[1] - int(exclude_self))
        if take > 0:
            rows.append((torch.arange(o.shape[0]) + sy).repeat_interleave(take))
            cols.append(o[:, :take].reshape(-1) + sx)
    if not rows:
        return torch.zeros(2, 0, dtype=torch.long)
    return torch.stack([torch.cat(rows), torch.cat(cols)])


def reference(
    x: Tensor,
    y: Tensor,
    k: int,
    sizes_x: list[int],
    sizes_y: list[int],
    exclude_self: bool = False,
) -> Tensor:
    """(2, E) (query, point) pairs of the k nearest, per graph, queries ascending."""
    return pairs(reference_order(x, y, sizes_x, sizes_y, exclude_self), k, exclude_self)


def batch_of(sizes: list[int], device: str = "cpu") -> Tensor:
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).to(device)


def dyadic(t: Tensor) -> Tensor:
    """Round to multiples of 2^-10 in [-1, 1] (float32 arithmetic on them is exact)."""
    return (t.clamp(-1, 1) * 1024).round() / 1024


def cloud(kind: str, n: int, d: int, gen: torch.Generator) -> Tensor:
    """Float32 points of one of the test distributions (dyadic except ``"float"``)."""
    if kind == "float":
        return torch.rand(n, d, generator=gen)
    if kind == "uniform":
        return dyadic(torch.rand(n, d, generator=gen) * 2 - 1)
    if kind == "clusters":
        centres = torch.rand(5, d, generator=gen) * 1.6 - 0.8
        which = torch.randint(0, 5, (n,), generator=gen)
        return dyadic(centres[which] + 0.05 * torch.randn(n, d, generator=gen))
    if kind == "duplicates":
        base = dyadic(torch.rand(n // 3, d, generator=gen))
        pick = torch.randint(0, base.shape[0], (n - base.shape[0],), generator=gen)
        return torch.cat([base, base[pick]])[torch.randperm(n, generator=gen)]
    if kind == "collinear":  # t·(1, -1, 1/2), t a multiple of 2^-9: still multiples of 2^-10
        t = (torch.rand(n, 1, generator=gen) * 512).round() / 512
        return t * torch.tensor([1.0, -1.0, 0.5])[:d]
    if kind == "lattice":
        side = round(n ** (1 / d)) + 1
        axes = [torch.arange(side, dtype=torch.float32)] * d
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
        return grid[torch.randperm(grid.shape[0], generator=gen)[:n]]
    raise AssertionError(kind)


KINDS = ["uniform", "clusters", "duplicates", "collinear", "lattice"]


# --------------------------------------------------------------------------- knn_graph
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_knn_graph_equals_brute_force_and_reference(kind: str, d: int) -> None:
    gen = torch.Generator().manual_seed(7 * d + len(kind))
    sizes = [300, 0, 40, 450, 3]  # an empty graph, small ones (k > graph size), grid ones
    x = cloud(kind, sum(sizes), d, gen)
    batch = batch_of(sizes)
    order = {loop: reference_order(x, x, sizes, sizes, not loop) for loop in (False, True)}
    for k, loop in ((1, False), (8, True), (16, False), (45, False)):
        got = knn_graph(x, k, batch, loop=loop, flow="target_to_source")
        assert torch.equal(got, pairs(order[loop], k, not loop)), (kind, d, k, loop)
        exact = knn_graph(x, k, batch, loop=loop, search="exact")  # source_to_target
        assert torch.equal(knn_graph(x, k, batch, loop=loop), exact), (kind, d, k, loop)
        assert torch.equal(exact, got.flip(0))


@pytest.mark.parametrize("d", [1, 2, 3])
def test_float64_and_full_precision_float32(d: int) -> None:
    gen = torch.Generator().manual_seed(d)
    sizes = [600, 300]
    x64 = torch.randn(sum(sizes), d, generator=gen, dtype=torch.float64)
    batch = batch_of(sizes)
    got = knn_graph(x64, 12, batch, flow="target_to_source")
    assert torch.equal(got, knn_graph(x64, 12, batch, flow="target_to_source", search="exact"))
    assert torch.equal(got, reference(x64, x64, 12, sizes, sizes, exclude_self=True))
    x32 = cloud("float", sum(sizes), d, gen)  # the brute force may round near-ties: fp64 only
    got = knn_graph(x32, 12, batch, loop=True, flow="target_to_source", search="grid")
    assert torch.equal(got, reference(x32, x32, 12, sizes, sizes))


def test_twenty_thousand_points() -> None:
    gen = torch.Generator().manual_seed(3)
    n = 20000
    x = cloud("uniform", n, 3, gen)
    got = knn_graph(x, 16, flow="target_to_source")
    assert torch.equal(got, knn_graph(x, 16, flow="target_to_source", search="exact"))
    queries = torch.randperm(n, generator=gen)[:200]  # the fp64 reference on a sample of rows
    d = torch.cdist(x[queries].double(), x.double(), compute_mode="donot_use_mm_for_euclid_dist")
    d[torch.arange(200), queries] = float("inf")
    want = torch.sort(d, dim=1, stable=True).indices[:, :16]
    assert torch.equal(got[1].view(n, 16)[queries], want)


def test_memory_is_linear() -> None:
    x = torch.rand(5000, 3, generator=torch.Generator().manual_seed(0))
    stats = memory_stats(lambda: knn_graph(x, 16))
    # The (2, N·k) result is 1.3 MB; an N×N float32 matrix alone would be 100 MB.
    assert stats.peak_bytes < 8 * 2**20 and stats.largest_bytes < 4 * 2**20, stats


# --------------------------------------------------------------------------- knn (x != y)
@pytest.mark.parametrize("kind", ["uniform", "clusters", "lattice"])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_knn_queries_with_batches(kind: str, d: int) -> None:
    gen = torch.Generator().manual_seed(11 * d)
    sizes_x, sizes_y = [300, 0, 20, 450], [100, 30, 0, 200]  # queries of a graph without points
    x = cloud(kind, sum(sizes_x), d, gen)
    y = cloud(kind, sum(sizes_y), d, gen) * 2  # some queries outside the points' box
    bx, by = batch_of(sizes_x), batch_of(sizes_y)
    order = reference_order(x, y, sizes_x, sizes_y)
    for k in (1, 5, 16, 700):
        got = knn(x, y, k, bx, by)
        assert torch.equal(got, knn(x, y, k, bx, by, search="exact")), (kind, d, k)
        assert torch.equal(got, pairs(order, k)), (kind, d, k)


# --------------------------------------------------------------------------- internals
@pytest.mark.parametrize(
    ("alpha", "range_cap", "small"),
    [(0.02, 4096, 0), (1.5, 9, 0), (60.0, 4096, 0), (1.5, 4096, 10**9)],
    ids=["tiny-cells", "range-cap", "one-cell", "all-exact"],
)
def test_exact_whatever_the_cell_size(
    monkeypatch: pytest.MonkeyPatch, alpha: float, range_cap: int, small: int
) -> None:
    """Tiny cells force many widening passes, a small range cap the whole-graph fallback, a
    huge α one cell per graph; every graph size goes through the grid (SMALL_GRAPH = 0)."""
    monkeypatch.setattr(grid_knn, "ALPHA", alpha)
    monkeypatch.setattr(grid_knn, "RANGE_CAP", range_cap)
    monkeypatch.setattr(grid_knn, "SMALL_GRAPH", small)
    gen = torch.Generator().manual_seed(5)
    sizes = [300, 1, 2, 0, 500]
    ptr = [0, 300, 301, 303, 303, 803]
    for kind in ("clusters", "lattice", "duplicates"):
        x = cloud(kind, sum(sizes), 3, gen)
        rows, cols = search_grid(x, x, 10, ptr, ptr, exclude_self=True)
        assert torch.equal(torch.stack([rows, cols]), reference(x, x, 10, sizes, sizes, True))


def test_auto_picks_the_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def spy(*args: object, **kwargs: object) -> tuple[Tensor, Tensor]:
        calls.append(1)
        return search_grid(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(point_knn, "search_grid", spy)
    x = torch.rand(50, 3)
    knn_graph(x, 4)
    knn(x, x[:5], 4, search="grid")
    assert len(calls) == 2
    knn_graph(x, 4, search="exact")
    knn_graph(torch.rand(50, 4), 4)  # F = 4
    knn_graph(x, 4, metric="cosine")
    assert len(calls) == 2


@pytest.mark.parametrize("device", DEVICES)
def test_devices_and_half_inputs(device: str) -> None:
    gen = torch.Generator().manual_seed(2)
    sizes = [400, 0, 300]
    x = cloud("clusters", sum(sizes), 3, gen)
    batch = batch_of(sizes)
    want = reference(x, x, 9, sizes, sizes, exclude_self=True)
    got = knn_graph(x.to(device), 9, batch.to(device), flow="target_to_source")
    assert got.device.type == device and torch.equal(got.cpu(), want)
    # float16 holds these dyadic values exactly and the grid ranks them in float32
    got = knn_graph(x.half().to(device), 9, batch.to(device), flow="target_to_source")
    assert torch.equal(got.cpu(), want)


def test_empty_and_tiny_inputs() -> None:
    assert knn_graph(torch.rand(0, 2), 3).shape == (2, 0)
    assert knn_graph(torch.rand(1, 2), 3).shape == (2, 0)
    assert knn(torch.rand(0, 3), torch.rand(4, 3), 2).shape == (2, 0)
    assert knn(torch.rand(4, 3), torch.rand(0, 3), 2).shape == (2, 0)
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    assert knn_graph(x, 5, loop=True, flow="target_to_source").tolist() == [
        [0, 0, 0, 1, 1, 1, 2, 2, 2],
        [0, 1, 2, 0, 1, 2, 2, 0, 1],
    ]


# --------------------------------------------------------------------------- boxes
@pytest.mark.parametrize("grid", [True, False])
def test_box_graph_centre_knn_matches_reference(
    grid: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The centre k-NN of box_graph, by the grid (large images) and by row blocks (small)."""
    from nlgraph.graphs import boxes as boxes_module

    monkeypatch.setattr(boxes_module, "_GRID_MIN_BOXES", 0 if grid else 10**9)
    gen = torch.Generator().manual_seed(4)
    sizes = [400, 0, 7, 350]
    corner = dyadic(torch.rand(sum(sizes), 2, generator=gen))
    boxes = torch.cat([corner, corner + dyadic(torch.rand(sum(sizes), 2, generator=gen) / 4)], 1)
    boxes[50] = boxes[20]  # a duplicate: the box itself first, then the lower index
    batch = batch_of(sizes)
    perm = torch.randperm(boxes.shape[0], generator=gen)  # images in any order
    boxes, batch = boxes[perm], batch[perm]
    centre = ((boxes[:, :2] + boxes[:, 2:]) / 2).double()
    for k in (1, 4, 16):
        want = []  # (source m, target n) by target: the box itself, then (distance, index)
        for n in range(boxes.shape[0]):
            same = torch.nonzero(batch == batch[n]).squeeze(1)
            same = same[same != n]
            dist = torch.cdist(centre[n : n + 1], centre[same]).squeeze(0)
            order = torch.sort(dist, stable=True).indices[: k - 1]
            want += [(n, n)] + [(int(m), n) for m in same[order]]
        got = box_graph(boxes, batch, k=k)
        assert [tuple(e) for e in got.T.tolist()] == want, k


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: knn_graph(torch.rand(9, 4), 2, search="grid"), ValueError, "^search: .*got 4"),
        (
            lambda: knn_graph(torch.rand(9, 3), 2, metric="cosine", search="grid"),
            ValueError,
            "^search: .*cosine",
        ),
        (lambda: knn(torch.rand(9, 2), torch.rand(3, 2), 2, search="ip"), ValueError, "^search: "),
        (
            lambda: knn_graph(torch.rand(9, 2), 2, backend="faiss", search="grid"),
            ValueError,
            "^search: .*faiss",
        ),
        (
            lambda: knn_graph(torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]), 1),
            ValueError,
            r"^x: expected finite coordinates .* row 1",
        ),
        (
            lambda: knn(torch.rand(4, 2), torch.tensor([[0.0, float("inf")]]), 1),
            ValueError,
            "^y: expected finite",
        ),
        (
            lambda: search_grid(
                torch.rand(4, 2), torch.rand(4, 2), 1, [0, 4], [0, 4], exclude_self=True
            ),
            ValueError,
            "^exclude_self: ",
        ),
    ],
)
def test_errors_name_the_argument(call, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


# --------------------------------------------------------------------------- benchmark
@pytest.mark.slow
@pytest.mark.skipif(not BENCH.is_file(), reason="needs the source checkout's benchmarks/")
def test_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "grid_knn.md"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    for heading in ("## Machine", "## Results", "## Targets", "## Command"):
        assert heading in text
    assert "cKDTree" in text and "--quick" in text
    agreement = [line for line in text.splitlines() if "agreement with cKDTree" in line]
    assert len(agreement) == 3 and all(a.endswith("unexplained differences: 0)") for a in agreement)
