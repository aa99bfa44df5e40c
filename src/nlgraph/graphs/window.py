r"""Position-space edge sets: (dilated) windows clipped at the borders, and temporal groups.

Both are built by index arithmetic on the lattice of the feature map, directly on the target
device, with no Python loop over positions and no host read, and stored as a
:class:`~nlgraph.graphs.base.RegularGraph` shared by the batch (G = 1). A spec keeps the graphs it
built, one per (query shape, key shape, pool size, device): a block running on maps of one size
builds its window once (and the kernels prepare it once).

Positions are flattened in C order (last axis fastest): on a map of shape (S_0, ..., S_{D-1}),
coordinate c has index :math:`\sum_d c_d \prod_{e > d} S_e`. Queries live on the map of shape
``query_shape`` (N positions), keys on ``key_shape`` (N' positions), which is the query map
max-pooled with kernel = stride = ``pool_size`` and no padding:
``key_shape[d] = query_shape[d] // pool_size[d]`` (as every public non-local implementation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._validate import check_nonnegative_int, check_positive_int
from .base import RegularGraph, trusted
from .spec import GraphContext, GraphSpec

__all__ = ["TemporalGroups", "Window", "window_offsets"]

Device = torch.device | str | None


def _as_shape(name: str, value: Any, dims: int | None = None) -> tuple[int, ...]:
    """``value`` as a tuple of positive ints with 1..3 entries (``dims`` of them if given)."""
    want = "1 to 3" if dims is None else str(dims)
    if isinstance(value, Tensor) or not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"{name}: expected a tuple of {want} positive ints, got {value!r}")
    shape = tuple(value)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(f"{name}: expected a tuple of {want} positive ints, got {value!r}")
    if (dims is None and not 1 <= len(shape) <= 3) or (dims is not None and len(shape) != dims):
        raise ValueError(f"{name}: expected a tuple of {want} positive ints, got {value!r}")
    return shape


def _key_grid(
    query_shape: Any, key_shape: Any, pool_size: Any
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Validated ``(query_shape, key_shape, pool_size)``.

    ``pool_size`` alone implies ``key_shape = query_shape // pool_size``; an int pool size applies
    to every axis; without either the keys are the query lattice (pool 1).
    """
    query = _as_shape("query_shape", query_shape)
    dims = len(query)
    if pool_size is None:
        if key_shape is None:
            return query, query, (1,) * dims
        key = _as_shape("key_shape", key_shape, dims)
        if key != query:
            raise ValueError(
                f"pool_size: expected the pool size when key_shape {key} differs from "
                f"query_shape {query}, got None"
            )
        return query, key, (1,) * dims
    pool = (pool_size,) * dims if isinstance(pool_size, int) else pool_size
    pool = _as_shape("pool_size", pool, dims)
    if any(p > s for p, s in zip(pool, query)):
        raise ValueError(
            f"pool_size: expected at most query_shape {query} on every axis, got {pool}"
        )
    pooled = tuple(s // p for s, p in zip(query, pool))
    if key_shape is not None and _as_shape("key_shape", key_shape, dims) != pooled:
        raise ValueError(
            f"key_shape: expected query_shape // pool_size = {pooled}, got {tuple(key_shape)}"
        )
    return query, pooled, pool


def _strides(shape: tuple[int, ...]) -> list[int]:
    """C-order strides (in elements) of a map of shape ``shape``."""
    return [math.prod(shape[d + 1 :]) for d in range(len(shape))]


def window_offsets(radius: int, dilation: int = 1, dims: int = 2) -> Tensor:
    r"""Every lattice offset of a dilated window, in C order.

    .. math:: \{\,\mathrm{dilation} \cdot o : o \in \{-r, \dots, r\}^{D}\,\}

    Args:
        radius (int): r >= 0.
        dilation (int, optional): spacing of the lattice. (default: ``1``)
        dims (int, optional): D, 1 to 3. (default: ``2``)

    Shapes:
        - output: ((2r+1)^D, D) int64, rows in lexicographic order (last axis fastest)

    Example:
        >>> window_offsets(1, 2, dims=1).flatten().tolist()
        [-2, 0, 2]
    """
    check_nonnegative_int("radius", radius)
    check_positive_int("dilation", dilation)
    if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= 3:
        raise ValueError(f"dims: expected 1, 2 or 3, got {dims!r}")
    axis = torch.arange(-radius, radius + 1) * dilation
    grids = torch.meshgrid(*([axis] * dims), indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


def _axis_width(keys: int, radius: int, dilation: int) -> int:
    """Slots per query along one axis: min(2r+1, lattice points of one residue class)."""
    return min(2 * radius + 1, -(-keys // dilation))


def _axis_clipped(queries: int, keys: int, pool: int, radius: int, dilation: int) -> bool:
    """Whether some query along this axis has fewer than :func:`_axis_width` neighbours
    (plain integers: no tensor is read)."""
    width = _axis_width(keys, radius, dilation)
    for c in range(queries):
        cell = min(c // pool, keys - 1)
        lo = max(-(cell // dilation), -radius)
        hi = min((keys - 1 - cell) // dilation, radius)
        if hi - lo + 1 < width:
            return True
    return False


def _axis_table(
    queries: int, keys: int, pool: int, radius: int, dilation: int, device: Device
) -> tuple[Tensor, Tensor]:
    """Neighbours along one axis: (queries, w) key coordinates and validity, w the widest row.

    The query coordinate c maps to the key cell ``min(c // pool, keys - 1)``; its neighbours are
    the in-range cells ``cell + dilation * o``, o in [-radius, radius]. They form one run of
    offsets [lo, hi], stored from slot 0 upwards (ascending coordinate), then invalid slots.
    """
    cell = torch.clamp(torch.arange(queries, device=device) // pool, max=keys - 1)
    lo = torch.clamp(-(cell // dilation), min=-radius)
    hi = torch.clamp((keys - 1 - cell) // dilation, max=radius)
    slot = torch.arange(_axis_width(keys, radius, dilation), device=device)
    coord = cell[:, None] + dilation * (lo[:, None] + slot)
    valid = slot < (hi - lo + 1)[:, None]
    return coord, valid


#: Graphs a spec keeps (one per map size and device) before it starts afresh.
_KEEP = 8


def _context_args(
    ctx: GraphContext | tuple[int, ...],
    key_shape: tuple[int, ...] | None,
    pool_size: tuple[int, ...] | int | None,
    device: Device,
) -> tuple[Any, Any, Any, Device]:
    """(query_shape, key_shape, pool_size, device) from a GraphContext or the legacy arguments."""
    if isinstance(ctx, GraphContext):
        if ctx.spatial is None:
            raise ValueError(
                "ctx: expected the spatial shape of the map (a window is a position-space "
                "graph), got spatial=None"
            )
        return ctx.spatial, ctx.key_spatial, ctx.pool_size, ctx.device
    return ctx, key_shape, pool_size, device


class _LatticeSpec(GraphSpec):
    """A position-space spec built once per (query shape, key shape, pool, device)."""

    _built: dict[Any, RegularGraph]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_built": {}}  # built graphs are a cache, not state

    def build(
        self,
        ctx: GraphContext | tuple[int, ...],
        key_shape: tuple[int, ...] | None = None,
        pool_size: tuple[int, ...] | int | None = None,
        *,
        device: Device = None,
    ) -> RegularGraph:
        """The graph on a map of shape ``query_shape`` (or of a :class:`GraphContext`).

        Args:
            ctx (GraphContext or tuple of int): a context (its ``spatial``, ``key_spatial``,
                ``pool_size`` and ``device`` are used), or the query map's shape
                (S_0, ..., S_{D-1}), D = 1 to 3; N = prod S.
            key_shape (tuple of int, optional): the pooled key map; ``None``: derived from
                ``pool_size``, or the query map itself. (default: ``None``)
            pool_size (tuple of int or int, optional): the max-pool kernel (= stride) that made
                the keys; required when ``key_shape`` differs from ``query_shape``.
                (default: ``None``)
            device (torch.device or str, optional): where the index is built. (default: CPU)

        Shapes:
            - index, mask: (1, N, k), num_keys = N' = prod key_shape
        """
        query_shape, key_shape, pool_size, device = _context_args(ctx, key_shape, pool_size, device)
        grid = _key_grid(query_shape, key_shape, pool_size)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if torch.compiler.is_compiling():
            # Traced: the index arithmetic goes into the compiled graph (a few integer ops per
            # edge); filling the cache there would make the next call fail its guards and
            # compile again.
            return trusted(self._make(*grid, dev))
        cache_key = (*grid, dev)
        graph = self._built.get(cache_key)
        if graph is None:
            if len(self._built) >= _KEEP:
                self._built.clear()
            graph = trusted(self._make(*grid, dev))
            self._built[cache_key] = graph
        return graph

    def _make(
        self,
        query: tuple[int, ...],
        key: tuple[int, ...],
        pool: tuple[int, ...],
        device: torch.device,
    ) -> RegularGraph:
        raise NotImplementedError


@dataclass(frozen=True, repr=False)
class Window(_LatticeSpec):
    r"""Keys within a (dilated) window around each query, clipped at the borders.

    On a D-dimensional map (D = 1, 2, 3) without sub-sampling, query p sees the keys

    .. math::
        N(p) = \{\, p + d \cdot o \;:\; o \in \{-r, \dots, r\}^D,\;
        0 \le p_a + d\, o_a < S_a \ \forall a \,\}

    i.e. the positions on the dilation-d lattice through p at Chebyshev distance at most r·d, with
    r = ``radius`` and d = ``dilation``. Near a border the window is clipped: the query has fewer
    neighbours, never wrapped or shifted ones. An interior query has (2r+1)^D neighbours.

    With sub-sampled keys (key map = query map max-pooled by ``pool_size``), the query coordinate
    c_a is mapped onto the key grid as the pooled cell that contains it, ``c_a // pool_size[a]``,
    and the window is taken around that cell on the key grid. Queries in trailing rows that the
    floor-mode pooling drops (c_a >= key_shape[a] * pool_size[a]) are clamped onto the last key
    row ``key_shape[a] - 1``, the nearest cell.

    Storage: a (1, N, k) :class:`~nlgraph.graphs.base.RegularGraph` shared by the batch, with
    k = prod_a min(2r+1, ceil(S'_a / d)) (= (2r+1)^D whenever the window fits in the key map;
    smaller when it cannot, e.g. a radius covering the whole map gives k = N'). In each row the
    real neighbours appear in ascending key index; padding slots hold index 0 and mask False and
    may sit between them (the slots follow the window offsets axis by axis). ``mask`` is ``None``
    when no query is clipped (e.g. radius 0).

    Args:
        radius (int): r >= 0; 0 keeps the query itself (its pooled cell with sub-sampling).
        dilation (int, optional): d >= 1, the lattice spacing. (default: ``1``)

    Raises:
        TypeError: "radius: expected a non-negative int, got float 1.5"
        ValueError: "dilation: expected a positive int, got 0"

    Example:
        >>> g = Window(1).build((3, 3))
        >>> g.index.shape, g.degree()[0].tolist()
        (torch.Size([1, 9, 9]), [4, 6, 4, 6, 9, 6, 4, 6, 4])
    """

    radius: int
    dilation: int = 1
    _built: dict[Any, RegularGraph] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        check_nonnegative_int("radius", self.radius)
        check_positive_int("dilation", self.dilation)

    def __repr__(self) -> str:
        extra = f", dilation={self.dilation}" if self.dilation != 1 else ""
        return f"Window(radius={self.radius}{extra})"

    def _make(
        self,
        query: tuple[int, ...],
        key: tuple[int, ...],
        pool: tuple[int, ...],
        device: torch.device,
    ) -> RegularGraph:
        dims = len(query)
        coord_strides = _strides(key)
        index = torch.zeros((1,) * (2 * dims), dtype=torch.long, device=device)
        mask = torch.ones((1,) * (2 * dims), dtype=torch.bool, device=device)
        clipped = False
        for a in range(dims):
            args = (query[a], key[a], pool[a], self.radius, self.dilation)
            clipped = clipped or _axis_clipped(*args)
            coord, valid = _axis_table(*args, device)
            # Axis a of the query grid sits at position a, its window slots at position dims + a.
            view = [1] * (2 * dims)
            view[a], view[dims + a] = coord.shape
            index = index + (coord * coord_strides[a]).view(view)
            mask = mask & valid.view(view)
        n = math.prod(query)
        index = index.expand(*query, *index.shape[dims:]).reshape(1, n, -1)
        if not clipped:
            return RegularGraph(index.contiguous(), math.prod(key), None)
        mask = mask.expand(*query, *mask.shape[dims:]).reshape(1, n, -1)
        return RegularGraph(index.masked_fill(~mask, 0), math.prod(key), mask)


@dataclass(frozen=True, repr=False)
class TemporalGroups(_LatticeSpec):
    r"""Attention restricted to chunks of consecutive frames (block-diagonal over time).

    The temporal grouping of the Caffe2 video non-local networks and SlowFast
    (``NONLOCAL.GROUP``): on a (T, H, W) map, time is folded into the batch in chunks of
    g = ``group_size`` frames, so query (t, h, w) sees every key of its chunk,

    .. math:: N(t, h, w) = \{\, (t', h', w') : \lfloor t' p_T / g \rfloor = \lfloor t / g \rfloor \,\}

    over the whole (pooled) spatial key grid, where p_T = ``pool_size[0]`` maps key frames back
    to query frames: key frame t' pools query frames [t' p_T, (t'+1) p_T), so chunk c owns key
    frames [c g / p_T, (c+1) g / p_T). T must be divisible by g (the references reshape), and g by
    p_T (a pooled frame must not straddle two chunks).

    Storage: a (1, N, k) :class:`~nlgraph.graphs.base.RegularGraph` with k = (g / p_T)·H'·W' keys
    per query, ascending key index, no padding (``mask`` is ``None``). g = T gives the full graph.

    Args:
        group_size (int): g >= 1, frames per chunk.

    Example:
        >>> g = TemporalGroups(2).build((4, 1, 1))
        >>> g.index[0].tolist()
        [[0, 1], [0, 1], [2, 3], [2, 3]]
    """

    group_size: int
    _built: dict[Any, RegularGraph] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        check_positive_int("group_size", self.group_size)

    def __repr__(self) -> str:
        return f"TemporalGroups(group_size={self.group_size})"

    def check_dims(self, dims: int) -> None:
        """Only 3-D (video) maps have frames to group."""
        if dims != 3:
            raise ValueError(
                f"graph: expected a 3-D block for TemporalGroups, got a {dims}-D block"
            )

    def _make(
        self,
        query: tuple[int, ...],
        key: tuple[int, ...],
        pool: tuple[int, ...],
        device: torch.device,
    ) -> RegularGraph:
        """The block-diagonal graph on a (T, H, W) map (see :meth:`build`).

        Shapes:
            - index: (1, T·H·W, (g / p_T)·H'·W'), num_keys = T'·H'·W'
        """
        if len(query) != 3:
            raise ValueError(f"query_shape: expected a 3-D shape (T, H, W), got {query}")
        frames, g, pt = query[0], self.group_size, pool[0]
        if frames % g:
            raise ValueError(
                f"query_shape: expected a number of frames T divisible by group_size {g}, "
                f"got T = {frames}"
            )
        if g % pt:
            raise ValueError(
                f"pool_size: expected a temporal pool size dividing group_size {g}, got {pt}"
            )
        k = (g // pt) * key[1] * key[2]
        chunk = torch.arange(math.prod(query), device=device) // (g * query[1] * query[2])
        index = chunk[:, None] * k + torch.arange(k, device=device)
        return RegularGraph(index.unsqueeze(0), math.prod(key), None)
