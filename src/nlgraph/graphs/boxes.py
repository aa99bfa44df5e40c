r"""Object proposals as graph nodes: edge sets between boxes and their pair geometry.

Boxes are ``(R, 4)`` rows ``(x1, y1, x2, y2)`` in image coordinates with a ``batch`` vector
(the image of each box, PyG's convention). Edges never join boxes of different images. Edge
``(m -> n)`` runs from the key (source) box m to the query (target) box n, row 0 and row 1 of
``edge_index`` as everywhere in nlgraph.

The pair geometry follows Hu et al., "Relation Networks for Object Detection", CVPR 2018,
https://arxiv.org/abs/1711.11575, eq. (5): with centres :math:`(x, y)`, widths :math:`w` and
heights :math:`h`,

.. math::
    \varepsilon_G(m, n) = \Bigl(\log\frac{|x_m - x_n|}{w_m},\ \log\frac{|y_m - y_n|}{h_m},\
        \log\frac{w_n}{w_m},\ \log\frac{h_n}{h_m}\Bigr),

and :func:`geometry_embedding` lifts each of the four to sines and cosines of several
wavelengths (the Transformer's positional encoding), as the official code does.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._validate import (
    check_choice,
    check_edge_index,
    check_float_tensor,
    check_positive_int,
    describe,
)
from ..nodes import check_batch, check_boxes
from ._topk import topk_tie_low
from .base import COOGraph, trusted
from .grid_knn import search_grid
from .spec import Graph, GraphContext, GraphSpec

__all__ = [
    "BOX_METRICS",
    "BoxKNN",
    "box_geometry",
    "box_graph",
    "box_iou",
    "geometry_embedding",
]

#: Neighbour rankings of :func:`box_graph`: centre distance (nearest first) or IoU (largest first).
BOX_METRICS: tuple[str, ...] = ("center", "iou")

#: Rows of one image scored at a time by the k-NN search (memory O(rows · boxes of the image)).
_ROW_BLOCK = 1024
#: Images with more boxes than this use the grid search for the centre k-NN; below, the row
#: blocks (one pass, no host read: detection batches hold a few hundred boxes per image).
_GRID_MIN_BOXES = 2048


@dataclass(frozen=True)
class BoxKNN(GraphSpec):
    """The k-nearest-box graph spec (see :func:`box_graph`): a module option, built per call.

    Args:
        k (int): neighbours per box (itself included); an image with fewer boxes gives all.
        metric (str): ``"center"`` (Euclidean centre distance) or ``"iou"``. (default: ``"center"``)
    """

    k: int
    metric: str = "center"

    def __post_init__(self) -> None:
        check_positive_int("k", self.k)
        check_choice("metric", self.metric, BOX_METRICS)

    def __call__(self, boxes: Tensor, batch: Tensor | None = None) -> Tensor:
        """``box_graph(boxes, batch, k=self.k, metric=self.metric)``."""
        return box_graph(boxes, batch, k=self.k, metric=self.metric)

    def build(self, ctx: GraphContext) -> Graph:
        """The k-nearest-box COOGraph of ``ctx.boxes`` (checked) and ``ctx.batch``, sorted by
        query box."""
        if ctx.boxes is None or ctx.batch is None:
            raise ValueError("ctx: expected boxes and batch (a box graph), got None")
        edge_index = build_box_graph(ctx.boxes, ctx.batch, self.k, self.metric)
        r = ctx.boxes.shape[0]
        return trusted(COOGraph(edge_index, r, r, query_sorted=True))


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    r"""Intersection over union of every pair, (Ra, Rb): :math:`|a \cap b| / |a \cup b|`.

    Two zero-area boxes have IoU 0 (not 0/0), a box with itself 1 unless its area is 0.

    Shapes:
        - a: (Ra, 4), b: (Rb, 4) -> (Ra, Rb)
    """
    check_boxes(a, "a")
    check_boxes(b, "b")
    if b.device != a.device or b.dtype != a.dtype:
        raise ValueError(f"b: expected dtype {a.dtype} on {a.device} as a, got {describe(b)}")
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(torch.finfo(a.dtype).tiny), 0.0)


def image_runs(batch: Tensor) -> tuple[Tensor, Tensor | None, list[int]]:
    """(sorted batch, stable sorting permutation or ``None`` when already sorted, boxes per
    image index 0..max): the images as contiguous runs. Two host reads: whether ``batch`` is
    sorted together with its largest index, then the counts."""
    if batch.numel() == 0:
        return batch, None, []
    ordered = (
        (batch[1:] >= batch[:-1]).all()
        if batch.numel() > 1
        else batch.new_ones((), dtype=torch.bool)
    )
    is_sorted, top = torch.stack([ordered.long(), batch.max()]).tolist()
    order = None
    if not is_sorted:
        order = torch.argsort(batch, stable=True)
        batch = batch.index_select(0, order)
    counts = torch.zeros(top + 1, dtype=torch.long, device=batch.device)
    counts.index_add_(0, batch, torch.ones_like(batch))
    return batch, order, counts.tolist()


def box_graph(
    boxes: Tensor,
    batch: Tensor | None = None,
    k: int | None = None,
    metric: str = "center",
) -> Tensor:
    r"""Edges between the boxes of each image: all pairs, or each box's k nearest boxes.

    .. math::
        \mathcal{N}(n) = \{m : b_m = b_n\}\ (k = \text{None}),\qquad
        \mathcal{N}(n) = \operatorname{top\text{-}k}_{m:\, b_m = b_n}\ \mathrm{score}(m, n)

    with score the negated centre distance (``metric="center"``) or the IoU (``"iou"``); ties
    go to the lower box index. Every box is its own neighbour (distance 0, IoU 1), as in the
    relation module where a box attends to itself; an image with fewer than k boxes gives all
    of them.

    Cost: the centre k-NN of a batch with an image of more than 2048 boxes uses the
    uniform-grid search of :mod:`nlgraph.graphs.grid_knn`
    (2-D centres, l2: the rule of ``knn_graph(search="auto")``), O(R log R + R·c) work with c
    a small multiple of k, ranking by the squared centre distance
    :math:`\sum (c_m - c_n)^2` (exact up to float rounding of near-ties); smaller batches and
    the IoU k-NN score each image's pairs in blocks of rows, O(Σ_images R_g²) work.

    Args:
        boxes (Tensor): (R, 4) ``(x1, y1, x2, y2)`` boxes, x1 <= x2 and y1 <= y2.
        batch (Tensor, optional): (R,) int64 image of each box, any order; ``None``: one image.
            (default: ``None``)
        k (int, optional): neighbours per box; ``None`` for the full graph of each image.
            (default: ``None``)
        metric (str): ``"center"`` or ``"iou"``, the k-NN ranking. (default: ``"center"``)

    Returns:
        Tensor: ``edge_index`` (2, E) int64 on the boxes' device, row 0 the neighbour (key) box
        m, row 1 the box n it flows into, sorted by n (then nearest first for k-NN, by m for
        the full graph). E = Σ_images R_g² (full) or Σ_images R_g·min(k, R_g) (k-NN).

    Raises:
        TypeError / ValueError: bad boxes (shape, dtype, NaN, x2 < x1), bad batch, k or metric.

    Example:
        >>> boxes = torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3], [5, 5, 6, 6]])
        >>> box_graph(boxes, torch.tensor([0, 0, 1]))
        tensor([[0, 1, 0, 1, 2],
                [0, 0, 1, 1, 2]])
    """
    check_boxes(boxes)
    batch = check_batch(batch, boxes.shape[0], boxes.device)
    if k is not None:
        k = check_positive_int("k", k)
    check_choice("metric", metric, BOX_METRICS)
    return build_box_graph(boxes, batch, k, metric)


def build_box_graph(boxes: Tensor, batch: Tensor, k: int | None, metric: str) -> Tensor:
    """:func:`box_graph` on inputs that are already checked (the modules' path): two host
    reads (the image sizes, :func:`image_runs`), none in the search."""
    sorted_batch, order, counts = image_runs(batch)
    sorted_boxes = boxes if order is None else boxes[order]
    if k is None:
        edge_index = _full_edges(sorted_batch, counts)
    else:
        edge_index = _knn_edges(sorted_boxes.detach(), counts, k, metric)
    if order is None:
        return edge_index
    edge_index = order[edge_index]  # back to the caller's box numbering
    perm = torch.argsort(edge_index[1], stable=True)
    return edge_index[:, perm]


def _full_edges(batch: Tensor, counts: list[int]) -> Tensor:
    """All ordered pairs (self included) inside each run of a sorted batch."""
    device = batch.device
    if not counts:
        return torch.zeros(2, 0, dtype=torch.long, device=device)
    sizes = torch.tensor(counts, device=device)
    start = torch.cumsum(sizes, 0) - sizes
    degree = sizes[batch]  # every box receives an edge from each box of its image
    target = torch.repeat_interleave(torch.arange(batch.shape[0], device=device), degree)
    first = torch.cumsum(degree, 0) - degree  # first edge of each target
    slot = torch.arange(target.shape[0], device=device) - first[target]
    source = start[batch[target]] + slot
    return torch.stack([source, target])


def _knn_edges(boxes: Tensor, counts: list[int], k: int, metric: str) -> Tensor:
    """Each box's k best boxes of its own image, scored in row blocks (ties: lower index)."""
    if metric == "center" and max(counts, default=0) > _GRID_MIN_BOXES:
        return _centre_knn_edges(boxes, counts, k)
    sources, targets = [], []
    start = 0
    for size in counts:
        if size == 0:
            continue
        part = boxes[start : start + size]
        if part.dtype in (torch.float16, torch.bfloat16):  # cdist has no half-precision kernel
            part = part.float()
        kk = min(k, size)
        centre = (part[:, :2] + part[:, 2:]) / 2
        for lo in range(0, size, _ROW_BLOCK):
            rows = part[lo : lo + _ROW_BLOCK]
            if metric == "center":
                score = -torch.cdist(centre[lo : lo + _ROW_BLOCK], centre)
            else:
                score = box_iou(rows, part)
            # The box itself first (distance 0 / IoU 1 may tie with duplicates of it).
            n_rows = rows.shape[0]
            own = torch.arange(lo, lo + n_rows, device=boxes.device)
            score[torch.arange(n_rows, device=boxes.device), own] = math.inf
            best = topk_tie_low(score, kk, order="score")  # exact, ties to the lower index
            sources.append(best.reshape(-1) + start)
            targets.append((own + start).repeat_interleave(kk))
        start += size
    if not sources:
        return torch.zeros(2, 0, dtype=torch.long, device=boxes.device)
    return torch.stack([torch.cat(sources), torch.cat(targets)])


def _centre_knn_edges(boxes: Tensor, counts: list[int], k: int) -> Tensor:
    """Each box, then its k - 1 nearest other boxes of its image by centre distance (the grid
    search; ties to the lower index): (2, E) with E = Σ_images R_g·min(k, R_g), by target."""
    dev = boxes.device
    sizes = torch.tensor(counts, dtype=torch.long, device=dev)
    degree = sizes.clamp(max=k).repeat_interleave(sizes)  # edges into each box
    n_boxes = boxes.shape[0]
    own = torch.arange(n_boxes, device=dev)
    target = own.repeat_interleave(degree)
    source = torch.empty_like(target)
    first = torch.cumsum(degree, 0) - degree
    source[first] = own  # the box itself first
    if k > 1 and n_boxes:
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        ptr = [0, *itertools.accumulate(counts)]
        _, near = search_grid(centre, centre, k - 1, ptr, ptr, exclude_self=True)
        others = torch.ones_like(target, dtype=torch.bool)
        others[first] = False
        source[others] = near
    return torch.stack([source, target])


def box_geometry(boxes: Tensor, edge_index: Tensor, eps: float = 1e-3) -> Tensor:
    r"""The relative geometry of each edge (m -> n), Hu et al. eq. (5): (E, 4).

    .. math::
        \Bigl(\log\max\bigl(\tfrac{|x_m - x_n|}{w_m}, \epsilon\bigr),\
              \log\max\bigl(\tfrac{|y_m - y_n|}{h_m}, \epsilon\bigr),\
              \log\tfrac{w_n}{w_m},\ \log\tfrac{h_n}{h_m}\Bigr)

    with m = ``edge_index[0]`` (the key box), n = ``edge_index[1]`` (the query box), centres
    :math:`x = (x_1 + x_2)/2`, :math:`w = x_2 - x_1`. The centre offsets are clamped at
    ``eps`` before the log as in the official code (log 0 for coincident centres, e.g. a box
    with itself, would be -inf); widths and heights at ``eps`` too (zero-size boxes). The
    official code measures sizes as ``x2 - x1 + 1`` (integer pixel boxes); pass boxes with
    x2 + 1 to reproduce it.

    Args:
        boxes (Tensor): (R, 4) boxes ``(x1, y1, x2, y2)``.
        edge_index (Tensor): (2, E) int64 edges (key box, query box).
        eps (float): the clamp of offsets and sizes. (default: ``1e-3``)

    Returns:
        Tensor: (E, 4), differentiable with respect to ``boxes``.
    """
    check_boxes(boxes)
    check_edge_index("edge_index", edge_index)
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps: expected a positive number, got {eps!r}")
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = (boxes[:, 2:] - boxes[:, :2]).clamp_min(eps)
    m, n = edge_index
    size_m = size.index_select(0, m)
    offset = (centre.index_select(0, m) - centre.index_select(0, n)).abs() / size_m
    ratio = size.index_select(0, n) / size_m
    return torch.cat([offset.clamp_min(eps).log(), ratio.log()], dim=1)


def geometry_embedding(
    geometry: Tensor, dim: int = 64, wave_length: float = 1000.0, scale: float = 100.0
) -> Tensor:
    r"""Sinusoidal embedding of the (E, 4) pair geometry to (E, dim), as in Hu et al.

    Each of the four features :math:`g` gives :math:`d/8` sines and :math:`d/8` cosines,

    .. math::
        \sin\bigl(\mathrm{scale}\cdot g / \lambda^{8t/d}\bigr),\
        \cos\bigl(\mathrm{scale}\cdot g / \lambda^{8t/d}\bigr),\qquad t = 0, \dots, d/8 - 1,

    laid out feature by feature: ``[sin(g_0, t=0..), cos(g_0, t=0..), sin(g_1, ..), ...]``
    (the official code's layout; :math:`\lambda` = ``wave_length``, scale 100).

    Args:
        geometry (Tensor): (E, 4), e.g. from :func:`box_geometry`.
        dim (int): embedding width d, a positive multiple of 8. (default: 64)
        wave_length (float): the longest wavelength λ. (default: 1000.0)
        scale (float): the factor on the features before the sinusoids. (default: 100.0)

    Returns:
        Tensor: (E, dim), differentiable.
    """
    dim = check_positive_int("dim", dim)
    if dim % 8:
        raise ValueError(
            f"dim: expected a positive multiple of 8 (4 features x sin/cos), got {dim}"
        )
    check_float_tensor("geometry", geometry)
    if geometry.dim() != 2 or geometry.shape[1] != 4:
        raise ValueError(f"geometry: expected an (E, 4) tensor, got {describe(geometry)}")
    for name, value in (("wave_length", wave_length), ("scale", scale)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    steps = torch.arange(dim // 8, device=geometry.device, dtype=geometry.dtype)
    inv_freq = wave_length ** (-8.0 * steps / dim)  # (d/8,)
    angle = (scale * geometry).unsqueeze(-1) * inv_freq  # (E, 4, d/8)
    return torch.cat([angle.sin(), angle.cos()], dim=-1).reshape(geometry.shape[0], dim)
