r"""Exact k-nearest neighbours of low-dimensional points with a uniform grid (a cell list).

For points with F <= 3 coordinates (positions, box centres) the all-pairs search of
:mod:`nlgraph.graphs.point_knn` does O(N·M) work. :func:`search_grid` finds the same neighbours
with O((N + M) log N + M·c) work, c the candidates per query (a small multiple of k on spread
data), and O(N + M·k) memory, in plain PyTorch on any device:

1. **Cell size.** Each graph's points are quantised to a fine 2^b grid over its bounding cube
   and sorted by Morton (Z-order) code. One pass over the sorted codes gives the occupied cells
   at every dyadic scale ℓ (two neighbours share a cell at level ℓ iff their codes agree above
   bit F·ℓ), and a few more the occupancy a point sees, :math:`\bar n_\ell = \sum_c n_c^2 /
   N_g - 1` (n_c points in cell c; dense clusters weigh as much as their points). The cell
   side h is interpolated (log-log) between the two levels that bracket the target

   .. math::
       T = \max\bigl(\alpha\, k / V_{d'},\ 1.5\bigr), \qquad
       V_{d'} = \pi^{d'/2} / \Gamma(d'/2 + 1),

   with :math:`d' = \log_2(\text{cells}_\ell / \text{cells}_{\ell+1})` the local dimension
   seen at that scale (2 on a surface, 1 on a curve) and α = ``ALPHA``: a ball holding the k
   nearest then fits in the window of a typical query. Only occupied cells count, so
   clustered or surface-like clouds, where most of the bounding box is empty, get small cells
   where their points are; empty cells are never materialised (a dense cell table is built
   only when the grid has at most 4 cells per point, else the occupied cells are
   binary-searched).
2. **Cell list.** Points are sorted by their cell key (graph offset + row-major cell index,
   dimension 0 fastest). The 2R + 1 cells of a row of the (2R + 1)^F window around a cell are
   then one contiguous run of the sorted points: (2R + 1)^(F-1) ranges per occupied query
   cell, found with two look-ups each.
3. **Search.** The queries of a cell share its candidate list. Cells are cut into pieces of at
   most 32 queries (padded up to 1, 2, 3, 4, 6, 8, 12, … queries), bucketed by candidate
   count (within a factor 1.25) and processed in blocks of about ``BLOCK_ELEMENTS`` (query,
   candidate) pairs: one gather of the candidates, the squared distances, one ``topk`` on
   int64 keys (distance bits, index).
4. **Certainty.** With :math:`d_{(c)}` the c-th smallest squared distance of a query (c =
   min(k, points available)) and b the distance from the query to the nearest face of its
   window (faces on the grid's border do not count), the result is exact when
   :math:`d_{(c)} < b^2` strictly: every unsearched point lies beyond b. Equality, and
   rounding within a safety margin, count as uncertain. An uncertain query is searched again
   with radius :math:`R' = \lfloor \sqrt{d_{(c)}}/h \rfloor + 1` (rounded up to a short
   ladder), which makes it certain (its c-th distance can only shrink), or 2R + 1 when its
   window held fewer than c points. A window of more than ``RANGE_CAP`` rows, or holding half
   of its graph's points, is replaced by the whole graph (the exact search); graphs of at most
   max(``SMALL_GRAPH``, 4k) points are searched exactly from the start.

**Distance.** Candidates are ranked by the squared Euclidean distance
:math:`\sum_f (y_f - x_f)^2`, evaluated in float32 (float16/bfloat16/float32 inputs; the
differences of float16/bfloat16 values are exact) or float64 (float64 inputs); ties go to the
lower index of ``x``, exactly (the float32 distance and the index form one int64 key). This
differs from the brute force of :mod:`~nlgraph.graphs.point_knn`, which ranks by
:math:`\lVert x\rVert^2 - 2\,y \cdot x` (one matrix product, rounding relative to
:math:`\lVert x \rVert^2`, not to the distance): the grid is the more accurate of the two, and
both agree exactly wherever neither rounds an order (integer lattices, exact duplicates,
float64 data, dyadic coordinates). On float32 data with near-ties at the rounding level (e.g.
~0.3 % of the queries of 20 000 uniform points in the unit cube) the brute force may order two
neighbours differently; the reference semantic is the exact Euclidean distance. Squared
distances must be finite in the compute dtype (no overflow).

**Cost.** Two sorts of the points (one of the queries too), O(M·(2R+1)^(F-1)) range look-ups
and O(M·c) distances, c ≈ 3^F·T candidates per query; uncertain queries (about 1 % of a
uniform cloud, 15 % of a clustered one) are searched again. A query far from every point of
its graph (a sparse outlier) may end in the exact search of its graph, O(N_g). Memory: the
(M, k) result, an (M, k + 1) buffer of the pass, the sorted copies of the points and one
block of ``BLOCK_ELEMENTS`` pairs (16 bytes each): about 700 MiB for N = M = 10^6, k = 16,
the (2, N·k) int64 edge_index included. Host reads: a handful per pass (sizes and plans).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from .._validate import check_finite_rows, describe

__all__ = [
    "ALPHA",
    "BLOCK_ELEMENTS",
    "GRID_MAX_FEATURES",
    "RANGE_CAP",
    "SMALL_GRAPH",
    "search_grid",
]

#: Most coordinates per point that the grid handles (above, the window grows as 3^F).
GRID_MAX_FEATURES = 3
#: Target occupancy factor α: T = α·k / V_d points per occupied cell.
ALPHA = 1.5
#: Graphs of at most max(SMALL_GRAPH, 4k) points are searched exactly (no grid).
SMALL_GRAPH = 256
#: (query, candidate) pairs per block of the search (memory ≈ 16 bytes per pair; large
#: blocks mean few parallel regions, which matters when other processes share the cores).
BLOCK_ELEMENTS = 1 << 22
#: Most row ranges per window; wider windows search the whole graph instead.
RANGE_CAP = 4096
#: Most queries sharing one block row group.
_MAX_PIECE = 32
#: Candidate counts of the pieces of one block are within this factor.
_M_RATIO = 1.25
#: Query counts of the pieces are padded up to this ladder.
_PIECE_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
#: A dense cell table is used when the grid has at most this many cells per point.
_DENSE_CELLS_PER_POINT = 4
#: Levels below/above the first guess where the occupancy seen by a point is measured.
_WEIGHTED_BELOW, _WEIGHTED_ABOVE = 4, 3
#: Least target occupancy (k = 1 would otherwise ask for less than a point per cell).
_MIN_OCCUPANCY = 1.5
#: Queries decoded at once after a pass.
_DECODE_ROWS = 1 << 18
#: Range-table entries (groups × rows of the window) built at once.
_RANGE_ELEMENTS = 1 << 22
#: Window radii are rounded up to this ladder (few distinct radii: few Python iterations).
_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
_EXACT = -1
_PAD_INDEX = 0xFFFFFFFF  # the low 32 bits of a padding key (sorted after every real index)
_LOW32 = 0xFFFFFFFF
_MAX_KEY = (1 << 63) - 1
_BIG = 1 << 62  # the index of padding in the float64 path


def _spread(v: Tensor, d: int) -> Tensor:
    """The bits of ``v`` moved to positions d·i (Morton interleaving), for d in {2, 3}."""
    if d == 3:  # 21 bits
        v = (v | (v << 32)) & 0x1F00000000FFFF
        v = (v | (v << 16)) & 0x1F0000FF0000FF
        v = (v | (v << 8)) & 0x100F00F00F00F00F
        v = (v | (v << 4)) & 0x10C30C30C30C30C3
        return (v | (v << 2)) & 0x1249249249249249
    v = (v | (v << 16)) & 0x0000FFFF0000FFFF  # d == 2, 31 bits
    v = (v | (v << 8)) & 0x00FF00FF00FF00FF
    v = (v | (v << 4)) & 0x0F0F0F0F0F0F0F0F
    v = (v | (v << 2)) & 0x3333333333333333
    return (v | (v << 1)) & 0x5555555555555555


def _top_bit(v: Tensor) -> Tensor:
    """Index of the highest set bit of each non-negative int64 (-1 for 0)."""
    _, e = torch.frexp(v.to(torch.float64))
    e = e.to(torch.int64) - 1
    # The conversion may round up to the next power of two: step back where 2^e > v.
    high = torch.bitwise_left_shift(torch.ones_like(v), e.clamp(min=0))
    return torch.where((e >= 0) & (high > v), e - 1, e)


def _per(table: Tensor, g: Tensor) -> Tensor:
    """``table[g]``: the rows of a per-graph table for each entry of ``g`` (a broadcast view
    when there is one graph, else ``index_select``, much faster than advanced indexing)."""
    if table.shape[0] == 1:
        return table.expand(g.numel(), *table.shape[1:])
    return table.index_select(0, g)


def _unit_ball(dim: Tensor) -> Tensor:
    """Volume of the unit ball in (real) dimension ``dim``."""
    return torch.exp(dim / 2 * math.log(math.pi) - torch.lgamma(dim / 2 + 1))


def _segment(values: Tensor, groups: Tensor, n_groups: int, reduce: str, fill: float) -> Tensor:
    """Per-group min/max of the rows of ``values`` (N, F) -> (n_groups, F)."""
    out = values.new_full((n_groups, values.shape[1]), fill)
    index = groups[:, None].expand_as(values)
    return out.scatter_reduce_(0, index, values, reduce=reduce, include_self=True)


class _Grid:
    """The cell list of the points: cell side, per-dimension cell counts and sorted arrays."""

    def __init__(
        self, x: Tensor, y: Tensor, same: bool, gx: Tensor, gy: Tensor, size_x: Tensor, k: int
    ) -> None:
        dev = x.device
        n_graphs = size_x.shape[0]
        d = x.shape[1]
        self.d = d
        x64 = x.to(torch.float64)
        y64 = x64 if same else y.to(torch.float64)
        lo = _segment(x64, gx, n_graphs, "amin", math.inf)
        hi = _segment(x64, gx, n_graphs, "amax", -math.inf)
        if not same:
            lo = torch.minimum(lo, _segment(y64, gy, n_graphs, "amin", math.inf))
            hi = torch.maximum(hi, _segment(y64, gy, n_graphs, "amax", -math.inf))
        empty = ~torch.isfinite(lo).all(1)
        lo = torch.where(empty[:, None], 0.0, lo)
        hi = torch.where(empty[:, None], 0.0, hi)
        ext = hi - lo
        side = ext.amax(1)
        side = torch.where(side > 0, side, 1.0)
        self.lo = lo
        # Rounding in the cell assignment and the window faces: an absolute slack on b.
        scale = lo.abs().amax(1) + 4 * side
        self.tol = scale * 2.0**-44 + 1e-150
        # Cells far below the coordinates' resolution would only multiply the passes.
        self.h = torch.maximum(self._cell_side(x64, gx, size_x, lo, side, k), 64 * self.tol)
        self.nd = torch.floor(ext / self.h[:, None]).to(torch.int64) + 1  # (G, F) cells per dim
        cells = self.nd.prod(1)
        self.base = torch.cumsum(cells, 0) - cells

        key, coords = self.keys(x64, gx)
        self.keys_sorted, self.perm = torch.sort(key)
        self.cell_sorted = coords.index_select(0, self.perm)
        del key, coords
        # Few cells (spread data): a dense table of each cell's first sorted point; many cells
        # (clustered data): the occupied cells' keys, binary-searched, and their first points.
        n_cells = int(cells.sum())
        self.cell_start: Tensor | None = None
        self.occupied: Tensor | None = None
        self.occupied_start: Tensor | None = None
        if n_cells <= _DENSE_CELLS_PER_POINT * x.shape[0] + 4096:
            start = torch.zeros(n_cells + 1, dtype=torch.int64, device=dev)
            torch.cumsum(torch.bincount(self.keys_sorted, minlength=n_cells), 0, out=start[1:])
            self.cell_start = start
        else:
            occupied, per_cell = torch.unique_consecutive(self.keys_sorted, return_counts=True)
            start = torch.zeros(occupied.numel() + 1, dtype=torch.int64, device=dev)
            torch.cumsum(per_cell, 0, out=start[1:])
            self.occupied, self.occupied_start = occupied, start
        if same:
            self.qkeys, self.qperm, self.qcell = self.keys_sorted, self.perm, self.cell_sorted
        else:
            qkey, qcoords = self.keys(y64, gy)
            self.qkeys, self.qperm = torch.sort(qkey)
            self.qcell = qcoords.index_select(0, self.qperm)

    def _cell_side(
        self, x64: Tensor, gx: Tensor, size_x: Tensor, lo: Tensor, side: Tensor, k: int
    ) -> Tensor:
        """(G,) cell side per graph from the occupied-cell counts at every dyadic scale."""
        d = self.d
        n_graphs = size_x.shape[0]
        gbits = max(1, n_graphs.bit_length())
        bits = min({1: 40, 2: 30, 3: 20}[d], (61 - gbits) // d)
        u = (x64 - _per(lo, gx)) / _per(side, gx)[:, None]
        u *= float(1 << bits)
        q = u.floor_().to(torch.int64).clamp_(0, (1 << bits) - 1)
        del u
        code = q[:, 0] if d == 1 else _spread(q[:, 0], d)
        for f in range(1, d):
            code |= _spread(q[:, f], d) << f
        del q
        code |= gx << (d * bits)
        code = torch.sort(code).values  # graph-major: the sorted graph ids are gx itself
        level = torch.full_like(code, bits)  # a graph's first point opens a cell at every level
        if code.numel() > 1:
            diff = code[1:] ^ code[:-1]
            inner = torch.div(_top_bit(diff), d, rounding_mode="floor")
            level[1:] = torch.where(gx[1:] == gx[:-1], inner, bits)
        del code
        width = bits + 2
        hist = torch.bincount(gx * width + level + 1, minlength=n_graphs * width)
        hist = hist.view(n_graphs, width)[:, 1:]
        cells = hist.flip(1).cumsum(1).flip(1).to(torch.float64)  # (G, bits+1): level 0..bits
        cells = cells.clamp(min=1)
        n_g = size_x.to(torch.float64)[:, None]
        local = torch.log2(cells[:, :-1] / cells[:, 1:]).clamp(1.0, float(d))
        local = torch.cat([local, local[:, -1:]], 1)
        target = torch.log((ALPHA * k / _unit_ball(local)).clamp(min=_MIN_OCCUPANCY))
        # First guess: the mean occupancy of the occupied cells, n_g / cells.
        guess = _bracket(torch.log(n_g / cells) - target)[0]
        # Then the occupancy a point sees, Σ_c n_c² / n_g - 1 (the size-biased mean less the
        # point itself), on the levels around the guess: dense clusters weigh as much as
        # their points.
        span = torch.arange(-_WEIGHTED_BELOW, _WEIGHTED_ABOVE + 1, device=gx.device)
        levels = (guess[:, None] + span).clamp(0, bits)  # (G, S)
        seen = torch.empty(levels.shape, dtype=torch.float64, device=gx.device)
        n_pts = gx.numel()
        end = torch.tensor([n_pts], device=gx.device)
        for i in range(span.numel()):
            starts = torch.nonzero(level >= _per(levels[:, i], gx)).squeeze(1)
            run = torch.diff(starts, append=end).to(torch.float64)
            sq = torch.zeros(n_graphs, dtype=torch.float64, device=gx.device)
            sq.index_add_(0, gx[starts], run * run)
            seen[:, i] = sq
        seen = (seen / n_g - 1).clamp(min=1e-3)
        excess = torch.log(seen) - target.gather(1, levels)
        at, frac = _bracket(excess)
        lev = levels.gather(1, at[:, None]).squeeze(1)
        step = levels.gather(1, (at + 1).clamp(max=span.numel() - 1)[:, None]).squeeze(1) - lev
        return side * torch.exp2(lev.to(torch.float64) + frac * step - bits)

    def keys(self, p64: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """Cell key (graph offset + row-major cell index) and (N, F) cell coordinates."""
        nd = _per(self.nd, g)
        coords = p64 - _per(self.lo, g)
        coords /= _per(self.h, g)[:, None]
        coords = coords.floor_().to(torch.int64)
        coords = torch.minimum(coords.clamp_(min=0), nd - 1)
        lin = coords[:, -1].clone()
        for f in range(self.d - 2, -1, -1):
            lin *= nd[:, f]
            lin += coords[:, f]
        return lin + _per(self.base, g), coords


def _bracket(f: Tensor) -> tuple[Tensor, Tensor]:
    """For rows of ``f`` (G, L) increasing along the row (log occupancy over target, level by
    level): the column j with f[j] <= 0 < f[j + 1] and the fraction in [0, 1] at which the
    line through them crosses 0; j = 0, fraction 0 if f[0] > 0; j = L - 2, fraction 1 if
    f[L-1] <= 0."""
    last = f.shape[1] - 1
    at = ((f <= 0).sum(1) - 1).clamp(0, max(last - 1, 0))
    f0 = f.gather(1, at[:, None]).squeeze(1)
    f1 = f.gather(1, (at + 1).clamp(max=last)[:, None]).squeeze(1)
    frac = torch.where(f1 > f0, -f0 / (f1 - f0), 0.0).clamp(0.0, 1.0)
    return at, torch.where(f0 > 0, 0.0, frac)


def _ladder(r: Tensor) -> Tensor:
    """Round window radii up to the ladder (beyond it: powers of two)."""
    steps = torch.tensor(_LADDER, device=r.device)
    i = torch.searchsorted(steps, r.clamp(max=_LADDER[-1]))
    up = steps[i.clamp(max=len(_LADDER) - 1)]
    big = r > _LADDER[-1]
    if bool(big.any()):
        up = torch.where(big, torch.exp2(torch.ceil(torch.log2(r.double()))).long(), up)
    return up


class _Search:
    """One call of :func:`search_grid`: the sorted arrays, the result table and the passes."""

    def __init__(
        self, x: Tensor, y: Tensor, k: int, ptr_x: list[int], ptr_y: list[int], own: bool
    ) -> None:
        dev = x.device
        same = y is x and ptr_x == ptr_y
        self.k = k
        self.d = x.shape[1]
        self.cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.margin = 1.0 - 16 * torch.finfo(self.cdt).eps
        n_graphs = len(ptr_x) - 1
        self.ptr = torch.tensor(ptr_x, device=dev)
        self.size_x = self.ptr.diff()
        size_y = torch.tensor(ptr_y, device=dev).diff()
        ids = torch.arange(n_graphs, device=dev)
        gx = torch.repeat_interleave(ids, self.size_x, output_size=x.shape[0])
        gy = gx if same else torch.repeat_interleave(ids, size_y, output_size=y.shape[0])
        self.grid = grid = _Grid(x, y, same, gx, gy, self.size_x, k)
        # Sorted points as rows (coordinates, original index), plus a sentinel row N for the
        # padding: infinite coordinates (infinite distance) and index 0xFFFFFFFF (float32; the
        # int32 bits are stored in the float column) or 2^62 (float64, exact).
        n_pts, d = x.shape
        pts = torch.empty((n_pts + 1, d + 1), dtype=self.cdt, device=dev)
        pts[:n_pts, :d] = x.to(self.cdt).index_select(0, grid.perm)  # (no strided out=)
        pts[n_pts, :d] = math.inf
        if self.cdt == torch.float32:
            pts.view(torch.int32)[:n_pts, d] = grid.perm.to(torch.int32)
            pts.view(torch.int32)[n_pts, d] = -1
        else:
            pts[:n_pts, d] = grid.perm.to(torch.float64)
            pts[n_pts, d] = float(_BIG)
        self.pts = pts
        self.sentinel = n_pts
        self.ys = (  # (M, F) sorted queries
            pts[:n_pts, :d] if same else y.to(self.cdt).index_select(0, grid.qperm)
        )
        self.gq = gy  # graph of each sorted query (the sort keeps graphs contiguous)
        self.own = int(own)
        self.total = (self.size_x - self.own).clamp(min=0)  # points a query may get, per graph
        self.need = self.total.clamp(max=k)
        self.width = k + self.own  # top entries kept per query (the query itself included)
        # Every row of a query with neighbours is written by its last pass; others are unread.
        self.result = torch.empty((y.shape[0], k), dtype=torch.long, device=dev)
        self.exact_graph = self.size_x <= max(SMALL_GRAPH, 4 * k)

    # ------------------------------------------------------------------ passes
    def run(self) -> tuple[Tensor, Tensor]:
        """Search every query, widening the uncertain ones; return ``(rows, cols)``."""
        count = self.need[self.gq]  # graphs are contiguous runs in both query orders
        pos = torch.nonzero(count > 0).squeeze(1)
        radius = torch.where(self.exact_graph[self.gq[pos]], _EXACT, 1)
        first = True
        while pos.numel():
            if not first:  # by radius, then position
                order = torch.argsort(pos)
                pos, radius = pos[order], radius[order]
            if not first or bool((radius != radius[0]).any()):
                order = torch.argsort(radius, stable=True)
                pos, radius = pos[order], radius[order]
            first = False
            values, counts = torch.unique_consecutive(radius, return_counts=True)
            next_pos, next_radius = [], []
            start = 0
            for r, c in zip(values.tolist(), counts.tolist()):
                p, nr = self._pass(pos[start : start + c], r)
                next_pos.append(p)
                next_radius.append(nr)
                start += c
            pos, radius = torch.cat(next_pos), torch.cat(next_radius)
        k = self.k
        rows_all = torch.arange(count.numel(), device=count.device)
        if bool((count == k).all()):
            return rows_all.repeat_interleave(k), self.result.view(-1)
        keep = torch.arange(k, device=count.device)[None, :] < count[:, None]
        return rows_all[:, None].expand(-1, k)[keep], self.result[keep]

    def _pass(self, pos: Tensor, radius: int) -> tuple[Tensor, Tensor]:
        """Search the queries at sorted positions ``pos`` (ascending) with one window radius;
        write the certain ones; return the uncertain ones and their next radius."""
        d = self.d
        exact = radius == _EXACT or (2 * radius + 1) ** (d - 1) > RANGE_CAP
        by = self.gq.index_select(0, pos) if exact else self.grid.qkeys.index_select(0, pos)
        new = torch.ones_like(by, dtype=torch.bool)
        new[1:] = by[1:] != by[:-1]
        gstart = torch.nonzero(new).squeeze(1)
        gcount = torch.diff(gstart, append=gstart.new_tensor([pos.numel()]))
        rows = 1 if exact else (2 * radius + 1) ** (d - 1)
        per = max(1, _RANGE_ELEMENTS // rows)
        uncertain, nxt = [], []
        for s in range(0, gstart.numel(), per):
            gs, gc = gstart[s : s + per], gcount[s : s + per]
            lo_q, hi_q = int(gs[0]), int(gs[-1] + gc[-1])
            sub = pos[lo_q:hi_q]
            gs = gs - lo_q
            first = sub.index_select(0, gs)
            graph = self.gq.index_select(0, first)
            if exact:
                rs, rc = _per(self.ptr, graph)[:, None], _per(self.size_x, graph)[:, None]
            else:
                rs, rc = self._ranges(first, graph, radius)
            u, r = self._evaluate(sub, gs, gc, rs, rc, radius, exact)
            uncertain.append(u)
            nxt.append(r)
        return torch.cat(uncertain), torch.cat(nxt)

    def _ranges(self, first: Tensor, graph: Tensor, radius: int) -> tuple[Tensor, Tensor]:
        """(G, W) start and length in the sorted points of each row of each cell's window;
        windows holding half of their graph are replaced by the whole graph (one range)."""
        grid, d = self.grid, self.d
        dev = first.device
        cell = grid.qcell.index_select(0, first)  # (G, F)
        nd = _per(grid.nd, graph)
        x_lo = (cell[:, 0] - radius).clamp(min=0)
        x_hi = torch.minimum(cell[:, 0] + radius, nd[:, 0] - 1)
        if d == 1:
            lin = torch.zeros_like(x_lo)[:, None]
            valid = torch.ones_like(lin, dtype=torch.bool)
        else:
            offsets = torch.tensor(
                list(itertools.product(range(-radius, radius + 1), repeat=d - 1)), device=dev
            ).flip(1)  # (W, F-1): dimension 1 first, rows in increasing key order
            other = cell[:, None, 1:] + offsets[None]
            valid = ((other >= 0) & (other < nd[:, None, 1:])).all(-1)
            lin = other[..., -1]
            for f in range(d - 3, -1, -1):
                lin = lin * nd[:, None, f + 1] + other[..., f]
            lin = lin * nd[:, None, 0]
        row0 = _per(grid.base, graph)[:, None] + lin
        if grid.cell_start is not None:
            row0 = torch.where(valid, row0, 0)  # rows outside the grid: any key, masked below
            start = grid.cell_start[row0 + x_lo[:, None]]
            end = grid.cell_start[row0 + x_hi[:, None] + 1]
        else:
            assert grid.occupied is not None and grid.occupied_start is not None
            first_cell = torch.searchsorted(grid.occupied, row0 + x_lo[:, None])
            after = torch.searchsorted(grid.occupied, row0 + x_hi[:, None], right=True)
            start = grid.occupied_start[first_cell]
            end = grid.occupied_start[after]
        count = torch.where(valid, end - start, 0)
        start = torch.where(valid, start, 0)
        size = _per(self.size_x, graph)
        whole = count.sum(1) * 2 >= size
        start = torch.where(whole[:, None], 0, start)
        count = torch.where(whole[:, None], 0, count)
        start[:, 0] = torch.where(whole, _per(self.ptr, graph), start[:, 0])
        count[:, 0] = torch.where(whole, size, count[:, 0])
        return start, count

    def _threshold(self, sub: Tensor, radius: int) -> Tensor:
        """(U,) bound on the squared distance below which a query's result is certain: the
        squared distance to its window's nearest inner face, less the rounding slack."""
        grid = self.grid
        g = self.gq.index_select(0, sub)
        cell = grid.qcell.index_select(0, sub)
        nd = _per(grid.nd, g)
        lo, h = _per(grid.lo, g), _per(grid.h, g)[:, None]
        q = self.ys.index_select(0, sub).to(torch.float64)
        low, high = cell - radius, cell + radius
        inf = torch.tensor(math.inf, dtype=torch.float64, device=sub.device)
        d_low = torch.where(low > 0, q - (lo + low * h), inf)
        d_high = torch.where(high < nd - 1, (lo + (high + 1) * h) - q, inf)
        b = torch.minimum(d_low.amin(1), d_high.amin(1)) - _per(grid.tol, g)
        return torch.where(b > 0, b * b * self.margin, -1.0)

    # ------------------------------------------------------------------ blocks
    def _evaluate(
        self,
        sub: Tensor,
        gstart: Tensor,
        gcount: Tensor,
        rs: Tensor,
        rc: Tensor,
        radius: int,
        exact: bool,
    ) -> tuple[Tensor, Tensor]:
        """Search the queries ``sub`` (groups of gcount queries from gstart sharing the row
        ranges rs/rc), write their results, return the uncertain ones and their next radius."""
        dev = sub.device
        n_sub = sub.numel()
        m_group = rc.sum(1)
        cap = (BLOCK_ELEMENTS // m_group.clamp(min=1)).clamp(1, _MAX_PIECE)
        pieces = (gcount + cap - 1) // cap
        n_pieces = int(pieces.sum())
        group = torch.repeat_interleave(
            torch.arange(gcount.numel(), device=dev), pieces, output_size=n_pieces
        )
        first_piece = torch.cumsum(pieces, 0) - pieces
        rank = torch.arange(n_pieces, device=dev) - first_piece[group]
        p_start = gstart[group] + rank * cap[group]
        p_count = torch.minimum(cap[group], gcount[group] - rank * cap[group])
        p_m = m_group[group]
        # Blocks: pieces with the same padded query count, sorted by candidate count and cut
        # where the running number of (query, candidate) pairs passes BLOCK_ELEMENTS.
        ladder = torch.tensor(_PIECE_LADDER, device=dev)
        n_class = torch.searchsorted(ladder, p_count)
        m_class = torch.log(p_m.clamp(min=1).double()).mul_(1 / math.log(_M_RATIO)).long()
        cls = (n_class << 8) | m_class  # candidate counts within a factor _M_RATIO
        order = torch.argsort((cls << 40) | p_m)
        group, p_start, p_count, p_m, n_class, cls = (
            t.index_select(0, order) for t in (group, p_start, p_count, p_m, n_class, cls)
        )
        pairs = ladder[n_class] * p_m
        before = torch.cumsum(pairs, 0) - pairs
        chunk = (cls << 40) | torch.div(before, BLOCK_ELEMENTS, rounding_mode="floor")
        _, sizes = torch.unique_consecutive(chunk, return_counts=True)
        ends = torch.cumsum(sizes, 0)
        last = ends - 1
        plan = torch.stack([ends - sizes, ends, ladder[n_class[last]], p_m[last]], 1).tolist()

        # Each query's best ``width`` (distance, index) pairs, in the order of ``sub``.
        # Every row is written by its block, or below for empty windows.
        w = self.width
        top = torch.empty((n_sub, w), dtype=torch.int64, device=dev)
        top_d = None if self.cdt == torch.float32 else torch.empty_like(top, dtype=torch.float64)
        for a, b, n, m in plan:
            if m:
                self._block(sub, group[a:b], p_start[a:b], p_count[a:b], n, m, rs, rc, top, top_d)
            else:  # empty windows (they sort first): no candidates, uncertain
                rows = torch.nonzero(torch.repeat_interleave(m_group == 0, gcount)).squeeze(1)
                top[rows] = _MAX_KEY if top_d is None else _BIG
                if top_d is not None:
                    top_d[rows] = math.inf

        # Decode, leave the query itself out, check certainty, write the results.
        got = torch.repeat_interleave(m_group, gcount, output_size=n_sub) - self.own
        graph = self.gq.index_select(0, sub)
        need = _per(self.need, graph)
        total = _per(self.total, graph)
        qo = self.grid.qperm.index_select(0, sub)
        thr = None if exact else self._threshold(sub, radius)
        k = self.k
        certain = torch.empty(n_sub, dtype=torch.bool, device=dev)
        kth = torch.empty(n_sub, dtype=torch.float64, device=dev)
        for s in range(0, n_sub, _DECODE_ROWS):
            sl = slice(s, s + _DECODE_ROWS)
            if top_d is None:
                t = top[sl]
                ids = t & _LOW32
                ids = torch.where(ids == _PAD_INDEX, -1, ids)
                dist = (t >> 32).to(torch.int32).view(torch.float32)
            else:
                ids = torch.where(top[sl] >= _BIG, -1, top[sl])
                dist = top_d[sl]
            if self.own:  # drop the query's own point (or the last entry when it is absent)
                hit = ids == qo[sl, None]
                at = torch.where(hit.any(1), hit.int().argmax(1), w - 1)
                col = torch.arange(k, device=dev)[None, :]
                col = col + (col >= at[:, None]).long()
                ids, dist = ids.gather(1, col), dist.gather(1, col)
            self.result.index_copy_(0, qo[sl], ids)
            nd = need[sl]
            d_need = dist.gather(1, (nd - 1).clamp(min=0)[:, None]).squeeze(1).to(torch.float64)
            enough = got[sl] >= nd
            d_need = torch.where(enough, d_need, math.inf)
            ok = got[sl] >= total[sl]
            if thr is not None:
                ok |= enough & (d_need < thr[sl])
            certain[sl] = ok
            kth[sl] = d_need
        unc = torch.nonzero(~certain).squeeze(1)
        g = graph[unc]
        h = _per(self.grid.h, g)
        enough = got[unc] >= need[unc]
        reach = torch.sqrt(kth[unc]) * (1 + 1e-5) + _per(self.grid.tol, g)
        jump = torch.floor(reach / h).nan_to_num(posinf=2.0**42).clamp(max=2.0**42).long() + 1
        step = max(radius, 0)
        r_next = torch.where(enough, torch.clamp(jump, min=step + 1), 2 * step + 1)
        return sub[unc], _ladder(r_next.clamp(max=1 << 42))  # beyond every grid: all cells

    def _block(
        self,
        sub: Tensor,
        group: Tensor,
        p_start: Tensor,
        p_count: Tensor,
        n: int,
        m: int,
        rs: Tensor,
        rc: Tensor,
        top: Tensor,
        top_d: Tensor | None,
    ) -> None:
        """One block: ``group.numel()`` pieces of at most n queries (a shorter piece repeats its
        last query), candidates padded to m; writes each query's best pairs into ``top``."""
        dev = sub.device
        n_p = group.numel()
        d = self.d
        starts, counts = rs.index_select(0, group), rc.index_select(0, group)  # (P, W)
        cum = torch.cumsum(counts, 1)
        col = torch.arange(m, device=dev)
        if counts.shape[1] == 1:
            idx = starts + col
        else:
            which = torch.searchsorted(cum, col.expand(n_p, m).contiguous(), right=True)
            which.clamp_(max=counts.shape[1] - 1)
            idx = (starts - cum + counts).gather(1, which) + col
        idx = torch.where(col < cum[:, -1:], idx, self.sentinel)
        cand = self.pts.index_select(0, idx.view(-1)).view(n_p, m, d + 1)
        rank = torch.minimum(torch.arange(n, device=dev), p_count[:, None] - 1)
        slot = (p_start[:, None] + rank).view(-1)  # (P·n,) positions in sub
        qry = self.ys.index_select(0, sub.index_select(0, slot)).view(n_p, n, d)
        w = self.width
        kk = min(w, m)
        if self.cdt == torch.float32:
            key = torch.empty((n_p, n, m), dtype=torch.int64, device=dev)
            dist = key.view(torch.float32)[..., 1::2]  # the high halves (little-endian)
        else:
            dist = torch.empty((n_p, n, m), dtype=torch.float64, device=dev)
        buf = torch.empty((n_p, n, m), dtype=self.cdt, device=dev) if d > 1 else None
        for f in range(d):
            diff = dist if buf is None or f == 0 else buf
            torch.sub(qry[:, :, f, None], cand[:, None, :, f], out=diff)
            diff.square_()
            if f:
                dist.add_(diff)
        del buf
        if top_d is None:
            key.view(torch.int32)[..., 0::2].copy_(cand.view(torch.int32)[:, None, :, d])
            best = torch.topk(key.view(n_p * n, m), kk, dim=1, largest=False).values
            if kk < w:  # (index_copy_ into a column slice would copy the whole table)
                best = torch.nn.functional.pad(best, (0, w - kk), value=_MAX_KEY)
            top.index_copy_(0, slot, best)
        else:
            ids = cand[:, None, :, d].to(torch.int64).expand(n_p, n, m)
            best_d, best_i = _smallest(dist.view(n_p * n, m), ids, kk)
            if kk < w:
                best_d = torch.nn.functional.pad(best_d, (0, w - kk), value=math.inf)
                best_i = torch.nn.functional.pad(best_i, (0, w - kk), value=_BIG)
            top_d.index_copy_(0, slot, best_d)
            top.index_copy_(0, slot, best_i)


def _smallest(dist: Tensor, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k smallest (distance, id) pairs of every row, in lexicographic order: distances
    (R, M) of any float dtype, ids (R, M) int64 (distinct within a row)."""
    vals, col = torch.topk(dist, k, dim=1, largest=False, sorted=True)
    t = vals[:, -1:]
    below = vals < t  # every entry below the k-th value is among topk's k
    n_below = below.sum(1, keepdim=True)
    big = _BIG
    ids = ids.reshape(dist.shape)
    tied = torch.topk(torch.where(dist == t, ids, big), k, dim=1, largest=False).values
    slot = torch.arange(k, device=dist.device)[None, :]
    take = slot < k - n_below
    inf = torch.tensor(math.inf, dtype=dist.dtype, device=dist.device)
    cand_v = torch.cat([torch.where(below, vals, inf), torch.where(take, t, inf)], 1)
    cand_i = torch.cat(
        [torch.where(below, ids.gather(1, col), big), torch.where(take, tied, big)], 1
    )
    o = torch.argsort(cand_i, dim=1, stable=True)
    cand_v, cand_i = cand_v.gather(1, o), cand_i.gather(1, o)
    o = torch.argsort(cand_v, dim=1, stable=True)
    return cand_v.gather(1, o)[:, :k].to(torch.float64), cand_i.gather(1, o)[:, :k]


@torch.no_grad()
def search_grid(
    x: Tensor,
    y: Tensor,
    k: int,
    ptr_x: list[int],
    ptr_y: list[int],
    *,
    exclude_self: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""Exact k nearest points of ``x`` for every query of ``y`` by a uniform grid (F <= 3).

    .. math::
        \mathcal{N}(i) = \operatorname{arg\,top\text{-}k}_{j:\ b^x_j = b^y_i,\ j \ne i
        \text{ if exclude\_self}}\ -\sum_f (y_{if} - x_{jf})^2

    ties towards the lower j; the algorithm, the distance formula and the cost are in the
    module docstring. The same (query, point) pairs, in the same order, as the brute force
    ``_search_torch`` of :mod:`nlgraph.graphs.point_knn` (with ``self_index = arange(N)`` for
    ``exclude_self``), up to that search's rounding (see the module docstring).

    Args:
        x (Tensor): (N, F) points, F in {1, 2, 3}, floating point, finite.
        y (Tensor): (M, F) queries, same dtype and device; pass ``x`` itself for a k-NN graph.
        k (int): neighbours per query, k >= 1; a query whose graph has fewer points gets all.
        ptr_x (list of int): G + 1 offsets of the graphs' points in x (PyG's ``ptr``).
        ptr_y (list of int): G + 1 offsets of the graphs' queries in y.
        exclude_self (bool): leave out point i for query i (``y`` must be ``x``): the k-NN
            graph without self-loops. (default: ``False``)

    Returns:
        tuple[Tensor, Tensor]: ``(rows, cols)`` int64 of length E = Σ_i min(k, candidates of
        i): query i and its neighbour j, queries ascending, each query's neighbours nearest
        first.

    Raises:
        ValueError: ``x``/``y`` not 2-D with 1 to 3 features, or with a non-finite coordinate;
            ``exclude_self`` with ``y`` other than ``x``.

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
        >>> rows, cols = search_grid(x, x, 2, [0, 4], [0, 4], exclude_self=True)
        >>> torch.stack([rows, cols])
        tensor([[0, 0, 1, 1, 2, 2, 3, 3],
                [1, 2, 0, 2, 0, 1, 2, 1]])
    """
    for name, t in (("x", x), ("y", y)):
        if t.dim() != 2 or not 1 <= t.shape[1] <= GRID_MAX_FEATURES:
            raise ValueError(
                f"{name}: expected a (num_points, F) tensor with 1 <= F <= "
                f"{GRID_MAX_FEATURES} for the grid search, got {describe(t)}"
            )
        check_finite_rows(name, t, " for the grid search")
        if y is x:
            break
    if exclude_self and (y is not x or ptr_y != ptr_x):
        raise ValueError(
            "exclude_self: expected y to be x with the same graphs (a k-NN graph), got other "
            "queries"
        )
    dev = x.device
    empty = torch.empty(0, dtype=torch.long, device=dev)
    if x.shape[0] == 0 or y.shape[0] == 0:
        return empty, empty
    if x.shape[0] >= _LOW32:
        raise ValueError(f"x: expected fewer than {_LOW32} points, got {x.shape[0]}")
    return _Search(x.detach(), y.detach(), k, ptr_x, ptr_y, exclude_self).run()
