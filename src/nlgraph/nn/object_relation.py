r"""The object relation module (Hu et al., CVPR 2018) on nlgraph's graph engine."""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal, overload

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .._validate import (
    check_channels_dtype_device,
    check_choice,
    check_edge_index,
    check_float_tensor,
    check_index_range,
    check_positive_int,
    describe,
)
from ..attention import Attention
from ..graphs.base import COOGraph, trusted
from ..graphs.boxes import (
    BoxKNN,
    box_geometry,
    box_graph,
    build_box_graph,
    geometry_embedding,
    image_runs,
)
from ..graphs.convert import full_edge_index
from ..graphs.spec import GraphContext
from ..nodes import check_batch, check_boxes
from ..ops.aggregate import aggregate
from ..ops.dispatch import KERNELS
from ..ops.inputs import AggregateInputs
from ..pairwise import Pairwise

__all__ = ["GEOMETRY_MODES", "ObjectRelation"]

#: How the geometric weight enters (see :class:`ObjectRelation`).
GEOMETRY_MODES: tuple[str | None, ...] = ("official", "paper", None)

#: The floor of the geometric weight before its log in the official code.
OFFICIAL_FLOOR = 1e-6
#: Edges embedded at a time by the geometric weight: the (E, geo_channels) embedding is never
#: held whole, in forward or backward.
GEOMETRY_CHUNK = 1 << 16
#: The full graph runs image by image on the dense kernel up to this many images per batch;
#: beyond, one block-diagonal COO aggregation (no Python loop over images).
DENSE_MAX_IMAGES = 16


class _EmbeddedGeometryLinear(torch.autograd.Function):
    """(E, H) = geometry_embedding(geometry) @ weightᵀ + bias, embedded chunk by chunk.

    Backward recomputes each chunk's embedding for the weight gradient, so memory is
    O(E·(4 + H)) instead of O(E·geo_channels). The boxes get no gradient (proposals are
    treated as constants, as in the official code).
    """

    @staticmethod
    def forward(ctx: Any, geometry: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        dim = weight.shape[1]
        out = geometry.new_empty(geometry.shape[0], weight.shape[0])
        for start in range(0, geometry.shape[0], GEOMETRY_CHUNK):
            emb = geometry_embedding(geometry[start : start + GEOMETRY_CHUNK], dim)
            torch.addmm(bias, emb, weight.t(), out=out[start : start + GEOMETRY_CHUNK])
        ctx.save_for_backward(geometry, weight)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        geometry, weight = ctx.saved_tensors
        dweight = torch.zeros_like(weight)
        for start in range(0, geometry.shape[0], GEOMETRY_CHUNK):
            emb = geometry_embedding(geometry[start : start + GEOMETRY_CHUNK], weight.shape[1])
            dweight.addmm_(grad[start : start + GEOMETRY_CHUNK].t(), emb)
        return None, dweight, grad.sum(0)


class ObjectRelation(nn.Module):
    r"""Object relation module of Hu et al., "Relation Networks for Object Detection", CVPR 2018,
    https://arxiv.org/abs/1711.11575: every box attends to the boxes of its own image (or to
    its k nearest), weighted by appearance and by relative geometry.

    For box features :math:`f^n` (the rows of ``x``) and boxes :math:`b^n`, head h of the
    :math:`N_r` = ``num_heads`` heads computes, over the neighbours :math:`m \in N(n)`,

    .. math::
        w_A^{mn} = \frac{(W_K f^m)\cdot(W_Q f^n)}{\sqrt{d_k}},\qquad
        w_G^{mn} = \max\bigl(0,\ W_G\, \mathcal{E}_G(\varepsilon_G(b^m, b^n))\bigr),

    .. math::
        w^{mn} = \frac{w_G^{mn} \exp(w_A^{mn})}{\sum_{m' \in N(n)} w_G^{m'n} \exp(w_A^{m'n})},
        \qquad
        f_R(n) = \sum_{m \in N(n)} w^{mn}\, (W_V f^m),

    and the module returns :math:`f^n + \mathrm{concat}_h f_R^h(n)`: ``x`` plus the heads'
    outputs (``in_channels / num_heads`` channels each) side by side.
    :math:`\varepsilon_G` is the relative geometry of :func:`nlgraph.graphs.box_geometry`
    (eq. 5) and :math:`\mathcal{E}_G` its sinusoidal embedding
    (:func:`nlgraph.graphs.geometry_embedding`, ``geo_channels`` wide). Since
    :math:`w_G \exp(w_A) = \exp(w_A + \log w_G)`, the geometric weight is an additive logit
    bias (``edge_bias`` :math:`\log w_G` of :func:`nlgraph.ops.nonlocal_aggregate`, with the
    heads as its batch). The full graph of up to 16 images runs image by image on the dense
    kernel, the (heads, R_g, R_g) bias as SDPA's additive mask; any other edge set (k-NN, a
    user ``edge_index``, more images, ``return_attention=True``) as one COO aggregation.

    **Paper vs official code** (``geometry``):

    - ``"official"`` (default): the official MXNet code's :math:`\log\max(w_G, 10^{-6})`. A zero
      geometric weight (the ReLU cut it) still leaves the edge :math:`10^{-6}` of its appearance
      weight, and a box whose geometric weights are all zero falls back to appearance softmax.
    - ``"paper"``: the formula above: :math:`\log w_G` with the floor at the dtype's smallest
      normal number (about :math:`10^{-38}` in float32), so a zero geometric weight removes the
      edge up to rounding. When every :math:`w_G^{mn}` of a box is zero the paper's weights are
      0/0; this implementation then gives the appearance softmax (all biases equal).
    - ``None``: appearance only (:math:`w_G \equiv 1`): multi-head scaled dot-product attention
      over the box graph, the paper's "no geometry" ablation.

    Other details: the official code applies :math:`W_V` after aggregation as a grouped 1×1
    convolution on the heads' aggregated features; because the weights of a box sum to 1 this
    equals the per-head :math:`W_V` (with bias) applied first, which is what runs here. The
    geometry uses :math:`w = x_2 - x_1` (the official code uses :math:`x_2 - x_1 + 1` on pixel
    boxes) and clamps centre offsets at :math:`10^{-3}` before the log, like the official code.
    The boxes are constants (no gradient reaches them, as with detached proposals); the
    (E, d_g) geometry embedding is computed in chunks and recomputed in backward, never held
    whole, so memory grows as E·(4 + num_heads), not E·d_g.

    Args:
        in_channels (int): C, the box feature width; divisible by ``num_heads``.
        num_heads (int): :math:`N_r`. (default: 16)
        key_channels (int): :math:`d_k`, the query/key width per head. (default: 64)
        geo_channels (int): :math:`d_g`, the geometry embedding width (a multiple of 8).
            (default: 64)
        graph (None, int or BoxKNN): the edge set when ``forward`` gets no ``edge_index``:
            ``None`` all pairs inside each image (the paper), an int k or a
            :class:`~nlgraph.graphs.BoxKNN` the k nearest boxes of the same image (by centre
            distance, or IoU). (default: ``None``)
        geometry (str or None): ``"official"``, ``"paper"`` or ``None`` (above).
            (default: ``"official"``)
        backend (str): kernel of :func:`nlgraph.ops.nonlocal_aggregate`. (default: ``"auto"``)

    Shapes:
        - x: (R, C) box features (or a list of (R_i, C), one per image)
        - boxes: (R, 4) ``(x1, y1, x2, y2)`` (or a list of (R_i, 4))
        - batch: (R,) int64 image of each box, or ``None``
        - edge_index: (2, E) int64 (key box, query box), or ``None``
        - output: like ``x``

    Example:
        >>> rel = ObjectRelation(256, num_heads=8, graph=16)
        >>> x, boxes = torch.randn(30, 256), torch.rand(30, 4) * 50
        >>> boxes[:, 2:] += boxes[:, :2]
        >>> rel(x, boxes, torch.arange(30) // 10).shape
        torch.Size([30, 256])
    """

    def __init__(
        self,
        in_channels: int,
        *,
        num_heads: int = 16,
        key_channels: int = 64,
        geo_channels: int = 64,
        graph: None | int | BoxKNN = None,
        geometry: str | None = "official",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        in_channels = check_positive_int("in_channels", in_channels)
        num_heads = check_positive_int("num_heads", num_heads)
        key_channels = check_positive_int("key_channels", key_channels)
        geo_channels = check_positive_int("geo_channels", geo_channels)
        if in_channels % num_heads:
            raise ValueError(
                f"in_channels: expected a multiple of num_heads={num_heads} (each head outputs "
                f"in_channels / num_heads channels), got {in_channels}"
            )
        if geo_channels % 8:
            raise ValueError(
                f"geo_channels: expected a multiple of 8 (4 geometric features x sin/cos), "
                f"got {geo_channels}"
            )
        if isinstance(graph, int) and not isinstance(graph, bool):
            if graph < 1:
                raise ValueError(
                    "graph: expected None (all pairs per image), a positive int k or a BoxKNN, "
                    f"got {graph}"
                )
            graph = BoxKNN(graph)
        if graph is not None and not isinstance(graph, BoxKNN):
            raise TypeError(
                f"graph: expected None (all pairs per image), an int k or a BoxKNN, got {graph!r}"
            )
        check_choice("geometry", geometry, GEOMETRY_MODES)
        check_choice("backend", backend, ("auto", *KERNELS))
        self.in_channels, self.num_heads = in_channels, num_heads
        self.key_channels, self.geo_channels = key_channels, geo_channels
        self.graph, self.geometry, self.backend = graph, geometry, backend
        self.query = nn.Linear(in_channels, num_heads * key_channels)
        self.key = nn.Linear(in_channels, num_heads * key_channels)
        self.value = nn.Linear(in_channels, in_channels)
        self.geo = nn.Linear(geo_channels, num_heads) if geometry is not None else None

    def build_graph(self, boxes: Tensor, batch: Tensor | None = None) -> Tensor:
        """The module's edge set for these boxes: an ``edge_index`` (2, E) (never across images)."""
        if self.graph is None:
            return box_graph(boxes, batch)
        return self.graph(boxes, batch)

    def geometric_bias(self, boxes: Tensor, edge_index: Tensor) -> Tensor | None:
        r"""(num_heads, E) logit bias :math:`\log w_G` of every edge (``None`` without geometry)."""
        if self.geo is None:
            return None
        return self._log_geometric_weight(boxes, edge_index).t()

    def _log_geometric_weight(self, boxes: Tensor, edge_index: Tensor) -> Tensor:
        """(E, heads) log of the floored geometric weight of every edge."""
        assert self.geo is not None
        geometry = box_geometry(boxes.detach(), edge_index)  # (E, 4)
        w_g = torch.relu(_EmbeddedGeometryLinear.apply(geometry, self.geo.weight, self.geo.bias))
        floor = OFFICIAL_FLOOR if self.geometry == "official" else torch.finfo(w_g.dtype).tiny
        return w_g.clamp_min(floor).log()

    @overload
    def forward(
        self,
        x: Tensor | list[Tensor],
        boxes: Tensor | list[Tensor],
        batch: Tensor | None = ...,
        edge_index: Tensor | None = ...,
        return_attention: Literal[False] = ...,
    ) -> Tensor | list[Tensor]: ...

    @overload
    def forward(
        self,
        x: Tensor | list[Tensor],
        boxes: Tensor | list[Tensor],
        batch: Tensor | None = ...,
        edge_index: Tensor | None = ...,
        *,
        return_attention: Literal[True],
    ) -> tuple[Tensor | list[Tensor], Attention]: ...

    def forward(
        self,
        x: Tensor | list[Tensor],
        boxes: Tensor | list[Tensor],
        batch: Tensor | None = None,
        edge_index: Tensor | None = None,
        return_attention: bool = False,
    ) -> Tensor | list[Tensor] | tuple[Tensor | list[Tensor], Attention]:
        """Relate every box to its neighbours; returns ``x`` plus the relation features.

        ``x`` and ``boxes`` are either concatenated over the images with ``batch`` giving each
        box's image (PyG's ``Data``/``Batch`` convention), or lists with one tensor per image
        (detection code's convention; ``batch`` must then be ``None`` and a list comes back).
        ``edge_index`` (key box -> query box) replaces the module's graph; it is used as given
        (edges across images are the caller's choice). ``return_attention=True`` also returns
        the weights as an :class:`~nlgraph.attention.Attention` with the heads as its batch:
        ``attn.to_dense()`` is (num_heads, R, R).
        """
        sizes = None
        if isinstance(x, (list, tuple)) or isinstance(boxes, (list, tuple)):
            x, boxes, batch, sizes = self._concat_images(x, boxes, batch)
        x = self._check_x(x)
        boxes = check_boxes(boxes)
        r = x.shape[0]
        if boxes.shape[0] != r:
            raise ValueError(f"boxes: expected {r} boxes (one per row of x), got {describe(boxes)}")
        if boxes.device != x.device:
            raise ValueError(f"boxes: expected device {x.device} (as x), got {boxes.device}")
        boxes = boxes.to(x.dtype)
        batch = check_batch(batch, r, x.device)
        graph = None
        if edge_index is not None:
            self._check_edge_index(edge_index, r, x.device)
            graph = COOGraph(edge_index, r, r)
            graph._cache["checked"] = True
        images = None
        if edge_index is None and self.graph is None and not return_attention:
            images = self._dense_images(batch)
        if r == 0:
            out, attn = x + 0.0, None
        elif images is not None:
            out, attn = self._relate_dense(x, boxes, images), None
        else:
            if graph is None:
                graph = self._box_graph(boxes, batch)
            out, attn = self._relate(x, boxes, graph, return_attention)
        result: Tensor | list[Tensor] = out
        if sizes is not None:
            result = list(out.split(sizes))
        if return_attention:
            assert attn is not None
            return result, attn
        return result

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Pairwise]:
        """Queries, keys (heads, R, d_k), values (heads, R, C / heads) and the pairwise f."""
        r, h, dk = x.shape[0], self.num_heads, self.key_channels
        q = self.query(x).view(r, h, dk).transpose(0, 1)
        k = self.key(x).view(r, h, dk).transpose(0, 1)
        v = self.value(x).view(r, h, -1).transpose(0, 1)
        return q, k, v, Pairwise("embedded_gaussian", scale=1.0 / math.sqrt(dk))

    def _box_graph(self, boxes: Tensor, batch: Tensor) -> COOGraph:
        """The module's edge set on checked boxes, as a COOGraph sorted by query box (two host
        reads: the image sizes)."""
        if self.graph is None:
            r = boxes.shape[0]
            edges = build_box_graph(boxes, batch, None, "center")
            return trusted(COOGraph(edges, r, r, query_sorted=True))
        ctx = GraphContext(boxes.shape[0], boxes.shape[0], boxes.device, boxes=boxes, batch=batch)
        graph = self.graph.build(ctx)
        assert isinstance(graph, COOGraph)
        return graph

    def _relate(
        self, x: Tensor, boxes: Tensor, graph: COOGraph, return_attention: bool
    ) -> tuple[Tensor, Attention | None]:
        """Any edge set: one COO aggregation with the heads as the batch."""
        r = x.shape[0]
        q, k, v, pairwise = self._heads(x)
        bias = self.geometric_bias(boxes, graph.edge_index)
        inp = AggregateInputs(q, k, v, pairwise, graph, return_attention, bias)
        y, attn = aggregate(inp, self.backend)
        return x + y.transpose(0, 1).reshape(r, self.in_channels), attn

    def _dense_images(self, batch: Tensor) -> list[Tensor | slice] | None:
        """The boxes of each image (slices when ``batch`` is sorted) for the per-image dense
        path, or ``None`` when the COO path serves better (many images, a sparse backend)."""
        if self.backend not in ("auto", "dense") or batch.numel() == 0:
            return None
        _, order, counts = image_runs(batch)
        if len(counts) > DENSE_MAX_IMAGES:
            return None
        if order is not None:
            return [part for part in order.split(counts) if part.numel()]
        bounds = list(itertools.accumulate(counts))
        starts = [0, *bounds[:-1]]
        return [slice(a, b) for a, b in zip(starts, bounds) if b > a]

    def _relate_dense(self, x: Tensor, boxes: Tensor, images: list[Tensor | slice]) -> Tensor:
        """The full graph of each image on the dense kernel: (heads, R_g, R_g) logit bias, no
        edge list and no index tensors (SDPA with an additive mask)."""
        q, k, v, pairwise = self._heads(x)
        parts = []
        for sel in images:
            b = boxes[sel]
            n = b.shape[0]
            bias = None
            if self.geo is not None:
                pairs = full_edge_index(n, n, b.device)  # query-major: views as (R_g, R_g)
                bias = self._log_geometric_weight(b, pairs).view(n, n, -1).permute(2, 0, 1)
            # The bias is a floored log-weight: never -inf, so the dense kernel needs no guard.
            inp = AggregateInputs(
                q[:, sel], k[:, sel], v[:, sel], pairwise, "full", False, bias, True
            )
            parts.append(aggregate(inp, self.backend)[0])
        y = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if isinstance(images[0], Tensor):  # back from image order to the caller's box order
            order = torch.cat([sel for sel in images if isinstance(sel, Tensor)])
            y = y.index_select(1, torch.argsort(order))
        return x + y.transpose(0, 1).reshape(x.shape[0], self.in_channels)

    def _check_x(self, x: Tensor) -> Tensor:
        check_float_tensor("x", x)
        if x.dim() != 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x: expected box features of shape (R, {self.in_channels}), got {describe(x)}"
            )
        check_channels_dtype_device("x", x, self.in_channels, self.value.weight, "the module's")
        return x

    @staticmethod
    def _concat_images(
        x: Tensor | list[Tensor], boxes: Tensor | list[Tensor], batch: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, list[int]]:
        if not (isinstance(x, (list, tuple)) and isinstance(boxes, (list, tuple))):
            raise TypeError(
                "x, boxes: expected both tensors or both lists of per-image tensors, got "
                f"{type(x).__name__} and {type(boxes).__name__}"
            )
        if batch is not None:
            raise ValueError("batch: expected None with per-image lists (the lists give it)")
        if len(x) != len(boxes) or not x:
            raise ValueError(
                f"x, boxes: expected non-empty lists of equal length (one entry per image), "
                f"got {len(x)} and {len(boxes)}"
            )
        for i, (xi, bi) in enumerate(zip(x, boxes)):
            if not (isinstance(xi, Tensor) and isinstance(bi, Tensor)):
                raise TypeError(f"x[{i}], boxes[{i}]: expected tensors")
            if xi.shape[0] != bi.shape[0]:
                raise ValueError(
                    f"x[{i}], boxes[{i}]: expected one feature row per box, got "
                    f"{describe(xi)} and {describe(bi)}"
                )
        sizes = [xi.shape[0] for xi in x]
        device = x[0].device
        batch = torch.repeat_interleave(
            torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device)
        )
        return torch.cat(list(x)), torch.cat(list(boxes)), batch, sizes

    @staticmethod
    def _check_edge_index(edge_index: Tensor, r: int, device: torch.device) -> None:
        check_edge_index("edge_index", edge_index)
        if edge_index.device != device:
            raise ValueError(
                f"edge_index: expected device {device} (as x), got {edge_index.device}"
            )
        check_index_range("edge_index", edge_index, r, f" (both rows index the {r} boxes)")

    def extra_repr(self) -> str:
        graph = "full" if self.graph is None else f"BoxKNN(k={self.graph.k}, {self.graph.metric!r})"
        return (
            f"{self.in_channels}, num_heads={self.num_heads}, key_channels={self.key_channels}, "
            f"geo_channels={self.geo_channels}, graph={graph}, geometry={self.geometry!r}"
        )
