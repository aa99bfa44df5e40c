r"""Drawing attention weights and edge sets over 2-D feature maps (needs matplotlib).

:func:`attention_map` draws the weights of one query as a heatmap over the key grid (or over an
image); :func:`plot_graph` draws the edges of a few queries as lines, over a grid or, with
``boxes=``, over object boxes (an :class:`~nlgraph.ObjectRelation` graph). Both take the
:class:`~nlgraph.Attention` of a block called with ``return_attention=True`` and draw on a
matplotlib ``Axes`` (the current one by default); neither calls ``plt.show()``.

matplotlib is optional (``pip install "nlgraph[viz]"``): it is imported when a function draws,
so ``import nlgraph.viz`` works without it.

**Grids.** An :class:`~nlgraph.Attention` knows its N queries and N' keys but not their 2-D
shapes. The query grid (h, w) is ``query_shape`` when given; else, with an image of size
(H, W), (floor(H / s), floor(W / s)) for the smallest integer stride s in 1..64 that gives N
positions; else the key grid when ``key_shape`` is given and N' = N; else √N × √N when N is a
perfect square. The key grid (h', w') is ``key_shape`` when given; else the query grid when
N' = N; else the query grid pooled by an integer window, (floor(h / p_h), floor(w / p_w)) with
p_h, p_w in 1..8, when that gives N' positions (equal windows first: the block's default 2x2
``sub_sample`` pooling); else √N' × √N'. Anything else raises a ``ValueError`` asking for the
shape (e.g. the M latent nodes of ``latent=Latent(M)`` have no grid: pass ``key_shape``).
Positions are flattened in C order (last axis fastest), as in the blocks; a key cell of a
pooled grid is drawn over the query cells (or image pixels) it covers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ._validate import check_choice
from .attention import Attention
from .graphs.base import COOGraph, RegularGraph

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.image import AxesImage

__all__ = ["attention_map", "plot_graph"]

_INSTALL = 'nlgraph.viz needs matplotlib: install it with `pip install "nlgraph[viz]"`'
_UPSAMPLE = ("nearest", "bilinear")


def _pyplot() -> Any:
    """matplotlib.pyplot, or an ImportError naming the ``viz`` extra."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(_INSTALL) from err
    return plt


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seq2(value: Any) -> bool:
    return isinstance(value, Sequence) and len(value) == 2 and all(_is_int(v) for v in value)


def _check_pair(name: str, shape: Any) -> tuple[int, int]:
    """``shape`` as (h, w) of positive ints."""
    if not _is_seq2(shape):
        raise TypeError(f"{name}: expected a (h, w) tuple of ints, got {shape!r}")
    h, w = int(shape[0]), int(shape[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"{name}: expected (h, w) of positive ints, got ({h}, {w})")
    return h, w


def _check_shape(name: str, shape: Any, size: int, what: str) -> tuple[int, int]:
    """``shape`` as (h, w) of positive ints with h·w = ``size``."""
    h, w = _check_pair(name, shape)
    if h * w != size:
        raise ValueError(f"{name}: expected (h, w) with h * w = {size} {what}, got ({h}, {w})")
    return h, w


def _square(n: int) -> tuple[int, int] | None:
    r = math.isqrt(n)
    return (r, r) if r * r == n else None


def _query_grid(
    n: int, m: int, query_shape: Any, key_shape: Any, image_hw: tuple[int, int] | None
) -> tuple[int, int]:
    if query_shape is not None:
        return _check_shape("query_shape", query_shape, n, "(the number of queries)")
    if image_hw is not None:
        h, w = image_hw
        strided = [(h // s, w // s) for s in range(1, 65) if (h // s) * (w // s) == n]
        if strided:
            return strided[0]
    if key_shape is not None and m == n:
        return _check_shape("key_shape", key_shape, m, "(the number of keys)")
    sq = _square(n)
    if sq is None:
        raise ValueError(
            f"query_shape: cannot infer the (h, w) grid of {n} queries (not a perfect square); "
            "pass query_shape=(h, w)"
        )
    return sq


def _key_grid(m: int, key_shape: Any, query_hw: tuple[int, int]) -> tuple[int, int]:
    if key_shape is not None:
        return _check_shape("key_shape", key_shape, m, "(the number of keys)")
    h, w = query_hw
    if h * w == m:
        return query_hw
    pooled = [(h // p, w // p) for p in range(2, 9) if (h // p) * (w // p) == m]
    if pooled:
        return pooled[0]
    shapes = {
        (h // ph, w // pw) for ph in range(1, 9) for pw in range(1, 9) if (h // ph) * (w // pw) == m
    }
    if len(shapes) == 1:
        return shapes.pop()
    sq = _square(m)
    if sq is None:
        raise ValueError(
            f"key_shape: cannot infer the (h, w) grid of {m} keys from the {h}x{w} query grid "
            "(no integer pooling of it, not a perfect square); pass key_shape=(h, w)"
        )
    return sq


def _check_attention(name: str, attn: Any) -> Attention:
    if not isinstance(attn, Attention):
        raise TypeError(
            f"{name}: expected an nlgraph.Attention (block(x, return_attention=True)), "
            f"got {type(attn).__name__}"
        )
    return attn


def _check_sample(sample: Any, batch: int) -> int:
    if not _is_int(sample):
        raise TypeError(f"sample: expected an int, got {type(sample).__name__} {sample!r}")
    if not -batch <= sample < batch:
        raise IndexError(f"sample: expected an index in [-{batch}, {batch}), got {sample}")
    return sample % batch


def _check_query(name: str, query: Any, grid: tuple[int, int]) -> int:
    """The flat index of ``query`` = (y, x) on ``grid``."""
    if not _is_seq2(query):
        raise TypeError(f"{name}: expected a (y, x) tuple of ints, got {query!r}")
    y, x = int(query[0]), int(query[1])
    h, w = grid
    if not (0 <= y < h and 0 <= x < w):
        raise IndexError(
            f"{name}: expected (y, x) with 0 <= y < {h} and 0 <= x < {w} "
            f"(the {h}x{w} query grid), got ({y}, {x})"
        )
    return y * w + x


def _image(image: Any) -> Tensor:
    """``image`` as an (H, W) or (H, W, C) CPU tensor ready for ``imshow``."""
    try:
        t = torch.as_tensor(image).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"image: expected a torch.Tensor or numpy array, got {type(image).__name__}"
        ) from err
    channels = (1, 3, 4)
    if t.dim() == 3 and t.shape[-1] not in channels and t.shape[0] in channels:
        t = t.permute(1, 2, 0)
    if t.dim() == 3 and t.shape[-1] == 1:
        t = t[..., 0]
    if not (t.dim() == 2 or (t.dim() == 3 and t.shape[-1] in (3, 4))):
        raise ValueError(
            f"image: expected an (H, W), (3, H, W) or (H, W, 3) image, got shape {tuple(t.shape)}"
        )
    if t.dtype == torch.uint8:
        return t
    t = t.float()
    if t.numel() and (t.min() < 0 or t.max() > 1):  # rescale to [0, 1] for display
        lo, hi = t.min(), t.max()
        t = (t - lo) / (hi - lo) if hi > lo else torch.zeros_like(t)
    return t


def _query_row(attn: Attention, sample: int, qi: int) -> Tensor:
    """The (N',) weights of query ``qi`` in ``sample``, zero outside its edges (float, CPU)."""
    if attn._dense is not None:
        return attn._dense[sample, qi].detach().float().cpu()
    edge_index, w = attn.edges(sample)
    sel = edge_index[1] == qi
    row = torch.zeros(attn.num_keys, dtype=torch.float32)
    return row.index_add_(0, edge_index[0][sel].cpu(), w[sel].detach().float().cpu())


def _resolve_upsample(upsample: Any) -> str:
    check_choice("upsample", upsample, _UPSAMPLE)
    return str(upsample)


def _to_frame(yx: Tensor, grid: tuple[int, int], frame: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Cell centres of ``grid`` coordinates (E, 2) in the pixel coordinates of ``frame``."""
    y = (yx[:, 0].float() + 0.5) * (frame[0] / grid[0]) - 0.5
    x = (yx[:, 1].float() + 0.5) * (frame[1] / grid[1]) - 0.5
    return y, x


def attention_map(
    attn: Attention,
    query: tuple[int, int],
    image: Tensor | np.ndarray | None = None,
    sample: int = 0,
    ax: Axes | None = None,
    *,
    query_shape: tuple[int, int] | None = None,
    key_shape: tuple[int, int] | None = None,
    upsample: str = "nearest",
    cmap: str = "viridis",
    alpha: float = 0.6,
    mark_query: bool = True,
) -> AxesImage:
    """Draw the attention weights of one query as a heatmap over the key grid or an image.

    Row i of ``attn.to_dense()[sample]`` (i the flat index of ``query``), reshaped to the key
    grid: zero outside the query's edges, so k-NN, window and ``edge_index`` graphs show only
    their neighbours. Over an image the heatmap is resized to the image's (H, W) (``upsample``)
    and drawn with transparency ``alpha``; without one it is drawn on the key grid itself. The
    query is marked by a red cross at its position (query cells mapped onto the key grid or the
    image). How the grids are found is described in the module docstring.

    Args:
        attn (Attention): weights of a 2-D block called with ``return_attention=True``.
        query (tuple of int): (y, x), the query position on the query grid.
        image (Tensor or numpy array, optional): (3, H, W), (H, W, 3) or (H, W) image to draw
            under the heatmap; floats outside [0, 1] are min-max rescaled. (default: ``None``)
        sample (int): which sample of the batch (negative counts from the end). (default: 0)
        ax (matplotlib Axes, optional): where to draw. (default: ``plt.gca()``)
        query_shape (tuple of int, optional): (h, w) of the query grid. (default: inferred)
        key_shape (tuple of int, optional): (h', w') of the key grid. (default: inferred)
        upsample (str): ``"nearest"`` (each key cell a flat block) or ``"bilinear"``, used
            when the key grid differs from the image. (default: ``"nearest"``)
        cmap (str): matplotlib colormap of the heatmap. (default: ``"viridis"``)
        alpha (float): opacity of the heatmap over an image, in [0, 1]. (default: 0.6)
        mark_query (bool): mark the query position. (default: ``True``)

    Returns:
        matplotlib.image.AxesImage: the heatmap; ``get_array()`` is the drawn (h', w') weights,
        or (H, W) over an image.

    Shapes:
        - ``attn.to_dense()``: (B, N, N') with N = h·w and N' = h'·w'
        - drawn array: (h', w'), or (H, W) with an image

    Raises:
        TypeError: ``attn`` not an Attention; ``query``, ``query_shape`` or ``key_shape`` not a
            pair of ints; ``sample`` not an int; ``image`` not an array.
        ValueError: a grid shape that does not match N or N' or cannot be inferred; an image
            that is not (3, H, W), (H, W, 3) or (H, W); an unknown ``upsample``; ``alpha``
            outside [0, 1].
        IndexError: ``query`` outside the query grid, ``sample`` outside [-B, B).
        ImportError: matplotlib is not installed.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> block = NonLocalBlock2d(8, graph=Window(1), sub_sample=False)
        >>> _, attn = block(torch.randn(1, 8, 6, 6), return_attention=True)
        >>> im = attention_map(attn, (2, 3))
        >>> im.get_array().shape
        (6, 6)
    """
    attn = _check_attention("attn", attn)
    upsample = _resolve_upsample(upsample)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha: expected a float in [0, 1], got {alpha!r}")
    img = None if image is None else _image(image)
    image_hw = None if img is None else (int(img.shape[0]), int(img.shape[1]))
    n, m = attn.num_queries, attn.num_keys
    qgrid = _query_grid(n, m, query_shape, key_shape, image_hw)
    kgrid = _key_grid(m, key_shape, qgrid)
    b = _check_sample(sample, attn._shape[0])
    qi = _check_query("query", query, qgrid)
    plt = _pyplot()
    ax = plt.gca() if ax is None else ax

    heat = _query_row(attn, b, qi).view(kgrid)
    frame = kgrid if image_hw is None else image_hw
    if img is not None:
        if kgrid != frame:
            extra = {"align_corners": False} if upsample == "bilinear" else {}
            heat = torch.nn.functional.interpolate(
                heat[None, None], size=frame, mode=upsample, **extra
            )
            heat = heat[0, 0]
        ax.imshow(img.numpy(), cmap="gray" if img.dim() == 2 else None)
        im = ax.imshow(heat.numpy(), cmap=cmap, alpha=float(alpha), interpolation="nearest")
    else:
        im = ax.imshow(heat.numpy(), cmap=cmap, interpolation="nearest")
    if mark_query:
        qy, qx = _to_frame(torch.tensor([[query[0], query[1]]]), qgrid, frame)
        ax.plot(qx.tolist(), qy.tolist(), marker="x", color="red", markersize=8, linestyle="")
    ax.set_title(f"attention of query ({query[0]}, {query[1]}), sample {b}")
    return im


def _edges_of(
    source: Any, sample: int, query_shape: Any, key_shape: Any, image_hw: tuple[int, int] | None
) -> tuple[Tensor, Tensor | None, tuple[int, int], tuple[int, int]]:
    """(edge_index (2, E), weights (E,) or None, query grid, key grid) of one sample."""
    if isinstance(source, Attention):
        b = _check_sample(sample, source._shape[0])
        n, m = source.num_queries, source.num_keys
        qgrid = _query_grid(n, m, query_shape, key_shape, image_hw)
        kgrid = _key_grid(m, key_shape, qgrid)
        edge_index, w = source.edges(b)
        return edge_index.cpu(), w.detach().float().cpu(), qgrid, kgrid
    if isinstance(source, RegularGraph):
        g = _check_sample(sample, source.index.shape[0])
        n, m = source.num_queries, source.num_keys
        edge_index = source.to_coo(g).edge_index
    elif isinstance(source, COOGraph):
        n, m = source.num_queries, source.num_keys
        edge_index = source.edge_index
    elif isinstance(source, Tensor):
        if source.dim() != 2 or source.shape[0] != 2 or source.dtype != torch.long:
            raise ValueError(
                "attn_or_graph: expected a (2, E) int64 edge_index, got shape "
                f"{tuple(source.shape)}, dtype {source.dtype}"
            )
        if query_shape is not None:
            qgrid = _check_pair("query_shape", query_shape)
        elif image_hw is not None:
            qgrid = image_hw
        else:
            raise ValueError(
                "query_shape: expected (h, w) for a plain edge_index (its grid is not stored), "
                "got None"
            )
        kgrid = qgrid if key_shape is None else _check_pair("key_shape", key_shape)
        edge_index = source.cpu()
        for row, grid, role in ((0, kgrid, "key"), (1, qgrid, "query")):
            size = grid[0] * grid[1]
            vals = edge_index[row]
            if vals.numel() and (int(vals.min()) < 0 or int(vals.max()) >= size):
                raise IndexError(
                    f"attn_or_graph: expected edge_index[{row}] ({role}s) in [0, {size}) "
                    f"(the {grid[0]}x{grid[1]} {role} grid), got values in "
                    f"[{int(vals.min())}, {int(vals.max())}]"
                )
        return edge_index, None, qgrid, kgrid
    else:
        raise TypeError(
            "attn_or_graph: expected an Attention, a (2, E) edge_index tensor, a COOGraph or a "
            f"RegularGraph, got {type(source).__name__}"
        )
    qgrid = _query_grid(n, m, query_shape, key_shape, image_hw)
    kgrid = _key_grid(m, key_shape, qgrid)
    return edge_index.cpu(), None, qgrid, kgrid


def _weights_segments(
    edge_index: Tensor, w: Tensor | None, flat: list[int], color: str, linewidth: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(keys, queries, widths, rgba) of the edges into ``flat``: widths and opacity in
    proportion to the weights (the heaviest drawn edge gets ``linewidth``), or all alike."""
    from matplotlib.colors import to_rgba

    sel = torch.isin(edge_index[1], torch.tensor(flat, dtype=torch.long))
    src, dst = edge_index[0][sel], edge_index[1][sel]
    rgba = torch.tensor(to_rgba(color)).repeat(len(src), 1)
    widths = torch.full((len(src),), float(linewidth))
    if w is not None and len(src):
        ws = w[sel].clamp(min=0)
        top = float(ws.max())
        rel = ws / top if top > 0 else torch.zeros_like(ws)
        widths = rel * float(linewidth)
        rgba[:, 3] = rel
    return src, dst, widths, rgba


def _check_linewidth(linewidth: Any) -> None:
    if not isinstance(linewidth, (int, float)) or isinstance(linewidth, bool) or linewidth <= 0:
        raise ValueError(f"linewidth: expected a positive float, got {linewidth!r}")


def _plot_box_graph(
    source: Any,
    queries: Any,
    image: Any,
    ax: Any,
    boxes: Any,
    sample: Any,
    color: str,
    linewidth: float,
    mark_queries: bool,
) -> Axes:
    """:func:`plot_graph` over object boxes: nodes are the R boxes, lines join box centres."""
    from .nodes import check_boxes

    boxes = check_boxes(boxes).detach().float().cpu()
    r = boxes.shape[0]
    ids = [queries] if _is_int(queries) else queries
    if not isinstance(ids, Sequence) or isinstance(ids, (str, bytes)) or not ids:
        raise ValueError(
            f"queries: expected a box index or a non-empty sequence of them, got {queries!r}"
        )
    for i, q in enumerate(ids):
        if not _is_int(q):
            raise TypeError(f"queries[{i}]: expected a box index (int), got {q!r}")
        if not 0 <= int(q) < r:
            raise IndexError(f"queries[{i}]: expected a box index in [0, {r}), got {int(q)}")
    _check_linewidth(linewidth)
    if isinstance(source, Attention):
        b = _check_sample(sample, source._shape[0])
        n, m = source.num_queries, source.num_keys
        edge_index, wt = source.edges(b)
        w: Tensor | None = wt.detach().float().cpu()
    elif isinstance(source, RegularGraph):
        n, m = source.num_queries, source.num_keys
        edge_index, w = source.to_coo(_check_sample(sample, source.index.shape[0])).edge_index, None
    elif isinstance(source, COOGraph):
        n, m, edge_index, w = source.num_queries, source.num_keys, source.edge_index, None
    elif isinstance(source, Tensor):
        if source.dim() != 2 or source.shape[0] != 2 or source.dtype != torch.long:
            raise ValueError(
                "attn_or_graph: expected a (2, E) int64 edge_index, got shape "
                f"{tuple(source.shape)}, dtype {source.dtype}"
            )
        n = m = r
        edge_index, w = source, None
        if source.numel() and (int(source.min()) < 0 or int(source.max()) >= r):
            raise IndexError(
                f"attn_or_graph: expected edge_index values in [0, {r}) (the boxes), got values "
                f"in [{int(source.min())}, {int(source.max())}]"
            )
    else:
        raise TypeError(
            "attn_or_graph: expected an Attention, a (2, E) edge_index tensor, a COOGraph or a "
            f"RegularGraph, got {type(source).__name__}"
        )
    if (n, m) != (r, r):
        raise ValueError(f"boxes: expected one box per node ({n} queries, {m} keys), got {r} boxes")
    plt = _pyplot()
    from matplotlib.collections import LineCollection
    from matplotlib.patches import Rectangle

    ax = plt.gca() if ax is None else ax
    edge_index = edge_index.cpu()
    loops = edge_index[0] == edge_index[1]  # a box to itself: no line to draw
    edge_index, w = edge_index[:, ~loops], None if w is None else w[~loops]
    src, dst, widths, rgba = _weights_segments(
        edge_index, w, [int(q) for q in ids], color, linewidth
    )
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # (R, 2) as (x, y)
    segments = torch.stack([centres[src], centres[dst]], 1)
    if image is not None:
        img = _image(image)
        ax.imshow(img.numpy(), cmap="gray" if img.dim() == 2 else None)
    else:
        lo, hi = boxes[:, :2].min(0).values, boxes[:, 2:].max(0).values
        pad = 0.05 * float((hi - lo).max().clamp(min=1.0))
        ax.set_xlim(float(lo[0]) - pad, float(hi[0]) + pad)
        ax.set_ylim(float(hi[1]) + pad, float(lo[1]) - pad)
        ax.set_aspect("equal")
    marked = {int(q) for q in ids} if mark_queries else set()
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        edge = "red" if i in marked else "white" if image is not None else "gray"
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=edge, lw=1.2))
    ax.add_collection(
        LineCollection(segments.tolist(), linewidths=widths.numpy(), colors=rgba.numpy())
    )
    return ax


def plot_graph(
    attn_or_graph: Attention | Tensor | COOGraph | RegularGraph,
    queries: Sequence[tuple[int, int]] | tuple[int, int],
    image: Tensor | np.ndarray | None = None,
    ax: Axes | None = None,
    *,
    sample: int = 0,
    query_shape: tuple[int, int] | None = None,
    key_shape: tuple[int, int] | None = None,
    color: str = "tab:orange",
    linewidth: float = 2.0,
    mark_queries: bool = True,
    boxes: Tensor | None = None,
) -> Axes:
    """Draw the edges of a few queries as lines from each key to its query.

    With an :class:`~nlgraph.Attention`, line width and opacity are proportional to the
    attention weight (the largest weight among the drawn edges gets ``linewidth`` and opacity
    1); with a graph every edge is drawn alike. Lines join cell centres in the pixel coordinates
    of ``image`` when given (the grids stretched over it), else of the query grid (keys of a
    pooled grid at the centre of the query cells they pool). All the edges go into one
    ``matplotlib.collections.LineCollection``, one segment per edge (self-loops are
    zero-length segments, a duplicated edge one segment per copy), in edge order.

    Args:
        attn_or_graph (Attention, Tensor, COOGraph or RegularGraph): the weights of a 2-D block
            (``return_attention=True``), or an edge set: a (2, E) int64 ``edge_index`` (row 0
            key j, row 1 query i; needs ``query_shape`` or an image of the query grid's size),
            a :class:`~nlgraph.graphs.COOGraph` or a :class:`~nlgraph.graphs.RegularGraph`.
        queries (sequence of tuple): the (y, x) query positions whose edges are drawn; a
            single (y, x) pair is accepted too.
        image (Tensor or numpy array, optional): (3, H, W), (H, W, 3) or (H, W) background.
            (default: ``None``: an empty frame the size of the query grid)
        ax (matplotlib Axes, optional): where to draw. (default: ``plt.gca()``)
        sample (int): the sample of an Attention (or of a per-sample RegularGraph). (default: 0)
        query_shape (tuple of int, optional): (h, w) of the query grid. (default: inferred, see
            the module docstring; required for a plain ``edge_index`` without an image)
        key_shape (tuple of int, optional): (h', w') of the key grid. (default: inferred; the
            query grid for a plain ``edge_index``)
        color (str): line colour. (default: ``"tab:orange"``)
        linewidth (float): width of the heaviest (or every) line, > 0. (default: 2.0)
        mark_queries (bool): mark the query positions with red dots (with ``boxes``: draw the
            query boxes in red). (default: ``True``)
        boxes (Tensor, optional): (R, 4) boxes ``(x1, y1, x2, y2)`` in the pixels of ``image``:
            the nodes are then boxes, not grid cells. ``queries`` are box indices, lines join
            box centres (self-loops are left out, and so is their weight from the scaling),
            every box is drawn as a rectangle, and the graph must have R queries
            and R keys (an :class:`~nlgraph.ObjectRelation`'s attention, whose ``sample`` is
            the head, or an edge set over the boxes). (default: ``None``)

    Returns:
        matplotlib.axes.Axes: ``ax``, with the LineCollection in ``ax.collections`` (and, with
        ``boxes``, one Rectangle per box in ``ax.patches``).

    Shapes:
        - ``edge_index``: (2, E); the LineCollection: one segment per edge whose query is in
          ``queries``

    Raises:
        TypeError: an unsupported ``attn_or_graph``; a query or shape that is not a pair of
            ints; ``sample`` not an int.
        ValueError: an ``edge_index`` that is not (2, E) int64, a grid shape that does not
            match or cannot be inferred, no ``queries``, ``linewidth`` <= 0, a bad image.
        IndexError: a query outside the query grid, ``sample`` out of range, an edge outside
            the grids.
        ImportError: matplotlib is not installed.

    Example:
        >>> import matplotlib.pyplot as plt
        >>> fig, ax = plt.subplots()
        >>> ax = plot_graph(Window(1).build((4, 4)), [(0, 0), (2, 2)], query_shape=(4, 4), ax=ax)
        >>> len(ax.collections[0].get_segments())  # 4 + 9 neighbours
        13
        >>> plt.close(fig)

        Over boxes, with an object graph's weights:

        >>> from nlgraph import ObjectRelation
        >>> boxes = torch.tensor([[0.0, 0, 8, 8], [10, 0, 20, 6], [4, 12, 12, 20]])
        >>> _, attn = ObjectRelation(16, num_heads=2)(torch.randn(3, 16), boxes, return_attention=True)
        >>> fig, ax = plt.subplots()
        >>> ax = plot_graph(attn, [0], ax=ax, boxes=boxes)  # box 0's edges, head 0
        >>> len(ax.collections[0].get_segments()), len(ax.patches)  # boxes 1, 2 -> box 0
        (2, 3)
        >>> plt.close(fig)
    """
    if boxes is not None:
        return _plot_box_graph(
            attn_or_graph, queries, image, ax, boxes, sample, color, linewidth, mark_queries
        )
    if _is_seq2(queries):
        pairs: list[Any] = [queries]
    elif isinstance(queries, Sequence) and not isinstance(queries, (str, bytes)) and queries:
        pairs = list(queries)
    else:
        raise ValueError(f"queries: expected a non-empty sequence of (y, x) pairs, got {queries!r}")
    _check_linewidth(linewidth)
    img = None if image is None else _image(image)
    image_hw = None if img is None else (int(img.shape[0]), int(img.shape[1]))
    edge_index, w, qgrid, kgrid = _edges_of(attn_or_graph, sample, query_shape, key_shape, image_hw)
    flat = [_check_query(f"queries[{i}]", q, qgrid) for i, q in enumerate(pairs)]
    plt = _pyplot()
    from matplotlib.collections import LineCollection

    ax = plt.gca() if ax is None else ax
    frame = qgrid if image_hw is None else image_hw
    src, dst, widths, rgba = _weights_segments(edge_index, w, flat, color, linewidth)
    ky, kx = _to_frame(torch.stack([src // kgrid[1], src % kgrid[1]], 1), kgrid, frame)
    qy, qx = _to_frame(torch.stack([dst // qgrid[1], dst % qgrid[1]], 1), qgrid, frame)
    segments = torch.stack([torch.stack([kx, ky], 1), torch.stack([qx, qy], 1)], 1)
    if img is not None:
        ax.imshow(img.numpy(), cmap="gray" if img.dim() == 2 else None)
    else:
        ax.set_xlim(-0.5, frame[1] - 0.5)
        ax.set_ylim(frame[0] - 0.5, -0.5)
        ax.set_aspect("equal")
    ax.add_collection(
        LineCollection(segments.tolist(), linewidths=widths.numpy(), colors=rgba.numpy())
    )
    if mark_queries:
        my, mx = _to_frame(torch.tensor([[int(q[0]), int(q[1])] for q in pairs]), qgrid, frame)
        ax.plot(mx.tolist(), my.tolist(), marker="o", color="red", markersize=5, linestyle="")
    return ax
