r"""The relation network (Santoro et al., NeurIPS 2017) over any of nlgraph's edge sets."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from .._validate import (
    check_bool,
    check_choice,
    check_edge_index,
    check_float_tensor,
    check_index_range,
    check_nonnegative_int,
    check_positive_int,
    describe,
    factory_kwargs,
)
from ..graphs.base import COOGraph, RegularGraph
from ..graphs.spec import Full, GraphContext, GraphSpec, GraphState
from ..nodes import check_batch

__all__ = ["AGGREGATIONS", "READOUTS", "RelationNetwork"]

#: How the messages are pooled (see :class:`RelationNetwork`).
AGGREGATIONS: tuple[str, ...] = ("sum", "mean")
#: Where they are pooled: per sample (``"graph"``) or per target node (``"node"``).
READOUTS: tuple[str, ...] = ("graph", "node")


#: The most layers ``g`` or ``f`` may have: a bound, so that a mistyped count fails at once
#: instead of building millions of layers.
MAX_LAYERS = 64


class RelationNetwork(nn.Module):
    r"""Relation network of Santoro et al., "A simple neural network module for relational
    reasoning", NeurIPS 2017, https://arxiv.org/abs/1706.01427, over any edge set.

    For objects :math:`x_1, \dots, x_N` of a sample, its conditioning vector :math:`c` (e.g. a
    question embedding; absent when ``cond_channels=0``) and the edges :math:`j \to i` of a
    graph (all ordered pairs in the paper),

    .. math::
        \mathrm{RN}(O) = f_\phi\Bigl(\bigoplus_{(j \to i) \in E} g_\theta(x_i, x_j, c)\Bigr)
        \quad\text{("graph" readout)},\qquad
        o_i = f_\phi\Bigl(\bigoplus_{j \in N(i)} g_\theta(x_i, x_j, c)\Bigr)
        \quad\text{("node" readout)},

    where :math:`\bigoplus` is a sum or a mean (``aggregation``), :math:`g_\theta` an MLP of
    ``g_layers`` layers of width H with ReLU after each, and :math:`f_\phi` an MLP of
    ``f_layers`` layers (ReLU between them, none after the last). A node without edges gets
    :math:`f_\phi(0)`.

    **Cost.** The first layer of :math:`g_\theta` acts on the concatenation
    :math:`[x_i; x_j; c]`, so it splits exactly as
    :math:`W_1 [x_i; x_j; c] + b_1 = (W_a x_i + b_1 + W_c c) + W_b x_j`: both terms are computed
    once per node (O(N·C·H)) and only summed per edge, no approximation involved. The remaining
    layers run on the edges in chunks of ``chunk_size`` edges, whose messages are pooled at
    once: no (B, N, N, H) tensor is ever formed (at N = 625 cells and H = 256 it would take
    about 400 MB per sample). The full graph is enumerated a block of target rows at a time
    (at least one row, B·N pairs, per chunk): the block's pre-activations are the broadcast sum
    of the target and source terms, and without ``self_loops`` the N pairs (i, i) are computed
    once more and subtracted. Any other graph runs as a flat edge list (per-sample graphs offset
    into one), messages scattered to their target (node readout) or sample (graph readout). The
    forward pass holds O(chunk_size·H) activations; with ``checkpoint=True`` each chunk is also
    recomputed in backward, so training holds O(chunk_size·H) too (instead of the O(E·H)
    activations autograd saves) for one more forward pass of :math:`g_\theta`.

    Args:
        in_channels (int): C, the object width.
        hidden_channels (int): H, the width of every layer of :math:`g_\theta` and of the hidden
            layers of :math:`f_\phi`. (default: 256, the paper's)
        out_channels (int, optional): the output width of :math:`f_\phi`; ``None``: H.
            (default: ``None``)
        cond_channels (int): width of the conditioning vector c; 0: none. (default: 0)
        g_layers (int): layers of :math:`g_\theta`, >= 1. (default: 4, the paper's)
        f_layers (int): layers of :math:`f_\phi`, >= 0 (0: identity, ``out_channels`` must then
            be ``None`` or H). (default: 2)
        aggregation (str): ``"sum"`` (the paper) or ``"mean"``. (default: ``"sum"``)
        readout (str): ``"graph"`` (one vector per sample, the paper) or ``"node"`` (one per
            target node). (default: ``"graph"``)
        graph (str, GraphSpec, RegularGraph or COOGraph): the edge set when ``forward`` gets
            none: ``"full"`` (all ordered pairs of a sample), a spec built on the objects in
            every forward (e.g. ``nlgraph.graphs.KNN(8, metric="l2")`` with query = key =
            :math:`x`, or a ``Window`` given ``spatial``), or a fixed graph over the N objects
            shared by the batch (a ``RegularGraph`` may also hold one graph per sample).
            (default: ``"full"``)
        self_loops (bool): include the pairs i = j. For ``"full"`` it adds or leaves out the N
            pairs (i, i); for any other graph ``False`` drops its edges i -> i and ``True``
            keeps the graph as it is. (default: ``True``: the paper sums over all i, j)
        chunk_size (int): edges per chunk (over the whole batch). (default: 65536)
        checkpoint (bool): recompute each chunk in backward (see Cost). (default: ``False``)
        device (torch.device, optional): where every parameter is created. (default: ``None``)
        dtype (torch.dtype, optional): the dtype of every parameter. (default: ``None``)

    Shapes:
        - dense input: x (B, N, C), cond (B, C_c); output (B, out) (graph readout) or
          (B, N, out) (node readout)
        - PyG input: x (N, C) with batch (N,) (graph of each node, ``None``: one graph) and
          edge_index (2, E) (row 0 source j, row 1 target i; ``None``: all pairs of each
          graph), cond (G, C_c); output (G, out) or (N, out), G = number of graphs

    Attributes:
        g_target, g_source: Linear(C, H), :math:`W_a` (with the bias :math:`b_1`) and
            :math:`W_b`.
        g_cond: Linear(C_c, H, bias=False), :math:`W_c` (``None`` without c).
        g: the ReLU and the layers 2 .. ``g_layers`` of :math:`g_\theta`.
        f: :math:`f_\phi`.

    Raises:
        ValueError: bad widths or options at construction; at forward, inputs of the wrong
            shape, e.g. ``"cond: expected a (2, 11) tensor (one conditioning vector per
            sample), got shape (2, 10), ..."``.
        TypeError: non-tensor or integer inputs, a graph of an unknown type.

    Example:
        >>> rn = RelationNetwork(26, 256, 10, cond_channels=11)
        >>> rn(torch.randn(4, 25, 26), torch.randn(4, 11)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int = 256,
        out_channels: int | None = None,
        *,
        cond_channels: int = 0,
        g_layers: int = 4,
        f_layers: int = 2,
        aggregation: str = "sum",
        readout: str = "graph",
        graph: str | GraphSpec | RegularGraph | COOGraph = "full",
        self_loops: bool = True,
        chunk_size: int = 1 << 16,
        checkpoint: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("hidden_channels", hidden_channels)
        if out_channels is not None:
            check_positive_int("out_channels", out_channels)
        check_nonnegative_int("cond_channels", cond_channels)
        check_positive_int("g_layers", g_layers)
        check_nonnegative_int("f_layers", f_layers)
        for name, layers in (("g_layers", g_layers), ("f_layers", f_layers)):
            if layers > MAX_LAYERS:
                raise ValueError(f"{name}: expected at most {MAX_LAYERS} layers, got {layers}")
        if f_layers == 0 and out_channels not in (None, hidden_channels):
            raise ValueError(
                f"out_channels: expected None or hidden_channels={hidden_channels} with "
                f"f_layers=0 (f is the identity), got {out_channels}"
            )
        check_choice("aggregation", aggregation, AGGREGATIONS)
        check_choice("readout", readout, READOUTS)
        if isinstance(graph, str):
            check_choice("graph", graph, ("full",))
        elif not isinstance(graph, (GraphSpec, RegularGraph, COOGraph)):
            raise TypeError(
                "graph: expected 'full', a GraphSpec, a RegularGraph or a COOGraph, "
                f"got {type(graph).__name__}"
            )
        check_bool("self_loops", self_loops)
        check_positive_int("chunk_size", chunk_size)
        check_bool("checkpoint", checkpoint)
        self.in_channels, self.hidden_channels = in_channels, hidden_channels
        self.out_channels = hidden_channels if out_channels is None else out_channels
        self.cond_channels, self.g_layers, self.f_layers = cond_channels, g_layers, f_layers
        self.aggregation, self.readout = aggregation, readout
        self.graph = "full" if isinstance(graph, Full) else graph
        self.self_loops, self.chunk_size, self.checkpoint = self_loops, chunk_size, checkpoint
        self._graph_state = GraphState()

        fk = factory_kwargs(device, dtype)
        h = hidden_channels
        self.g_target = nn.Linear(in_channels, h, **fk)
        self.g_source = nn.Linear(in_channels, h, bias=False, **fk)
        self.g_cond = nn.Linear(cond_channels, h, bias=False, **fk) if cond_channels else None
        g: list[nn.Module] = [nn.ReLU()]
        for _ in range(g_layers - 1):
            g += [nn.Linear(h, h, **fk), nn.ReLU()]
        self.g = nn.Sequential(*g)
        f: list[nn.Module] = []
        for layer in range(f_layers):
            last = layer == f_layers - 1
            f.append(nn.Linear(h, self.out_channels if last else h, **fk))
            if not last:
                f.append(nn.ReLU())
        self.f = nn.Sequential(*f)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise every layer (PyTorch's default Linear init)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def reset_graph_state(self) -> None:
        """Forget what the graph spec kept between calls (e.g. a ``KNN(refresh_every=T)``)."""
        self._graph_state.clear()

    def extra_repr(self) -> str:
        parts = [f"{self.in_channels}, {self.hidden_channels}, {self.out_channels}"]
        defaults: dict[str, Any] = dict(
            cond_channels=0, g_layers=4, f_layers=2, aggregation="sum", readout="graph",
            graph="full", self_loops=True, chunk_size=1 << 16, checkpoint=False,
        )  # fmt: skip
        for name, default in defaults.items():
            value = getattr(self, name)
            if not (value is default or (isinstance(value, (str, int)) and value == default)):
                parts.append(f"{name}={value!r}" if isinstance(value, str) else f"{name}={value}")
        return ", ".join(parts)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor,
        cond: Tensor | None = None,
        *,
        edge_index: Tensor | None = None,
        batch: Tensor | None = None,
        graph: str | GraphSpec | RegularGraph | COOGraph | None = None,
        spatial: tuple[int, ...] | None = None,
    ) -> Tensor:
        r"""Relate the objects (see the class docstring for the math).

        Args:
            x (Tensor): objects, dense (B, N, C) or PyG-style (N, C).
            cond (Tensor, optional): the conditioning vectors, (B, C_c) or (G, C_c); required
                exactly when ``cond_channels > 0``.
            edge_index (Tensor, optional): (2, E) int64 edges j -> i (row 0 source j, row 1
                target i) replacing the module's graph; with dense input they index the N
                objects of a sample and are shared by the batch, with PyG input they index the
                rows of ``x``.
            batch (Tensor, optional): PyG input only: (N,) int64 graph of each node.
            graph: overrides the module's ``graph`` for this call (dense input only).
            spatial (tuple of int, optional): the map shape behind the N objects (N = prod),
                for position-space specs such as ``Window``.

        Returns:
            Tensor (B, out) / (G, out) for the graph readout, (B, N, out) / (N, out) for the
            node readout.
        """
        check_float_tensor("x", x)
        if x.dim() not in (2, 3):
            raise ValueError(
                f"x: expected a 3-D tensor (B, N, C) or a 2-D tensor (N, C), got {describe(x)}"
            )
        if x.shape[-1] != self.in_channels:
            raise ValueError(
                f"x: expected {self.in_channels} channels (last dim), got {x.shape[-1]} in "
                f"{describe(x)}"
            )
        weight = self.g_target.weight
        if x.device != weight.device:
            raise ValueError(f"x: expected device {weight.device} (the module's), got {x.device}")
        if edge_index is not None:
            check_edge_index("edge_index", edge_index)
            edge_index = edge_index.to(x.device)
        if x.dim() == 3:
            if batch is not None:
                raise ValueError(
                    "batch: expected None with dense input x (B, N, C) (every sample is a "
                    f"graph), got {describe(batch)}"
                )
            return self._forward_dense(x, cond, edge_index, graph, spatial)
        if graph is not None:
            raise ValueError(
                "graph: expected None with PyG input x (N, C) (pass edge_index), "
                f"got {type(graph).__name__}"
            )
        return self._forward_pyg(x, cond, edge_index, batch)

    def _projections(self, x: Tensor, cond: Tensor | None, num: int) -> tuple[Tensor, Tensor]:
        """(W_a x + b_1, W_b x) per node, after checking ``cond`` against ``num`` samples."""
        if self.g_cond is None:
            if cond is not None:
                raise ValueError(
                    f"cond: expected None (the module has cond_channels=0), got {describe(cond)}"
                )
        else:
            expected = (num, self.cond_channels)
            if cond is None:
                raise ValueError(f"cond: expected a {expected} tensor, got None")
            check_float_tensor("cond", cond)
            if tuple(cond.shape) != expected:
                raise ValueError(
                    f"cond: expected a {expected} tensor (one conditioning vector per sample), "
                    f"got {describe(cond)}"
                )
        return self.g_target(x), self.g_source(x)

    def _forward_dense(
        self,
        x: Tensor,
        cond: Tensor | None,
        edge_index: Tensor | None,
        graph: str | GraphSpec | RegularGraph | COOGraph | None,
        spatial: tuple[int, ...] | None,
    ) -> Tensor:
        b, n, _ = x.shape
        target, source = self._projections(x, cond, b)
        if self.g_cond is not None and cond is not None:
            target = target + self.g_cond(cond).unsqueeze(1)
        built = self._resolve_graph(x, edge_index, graph, spatial)
        if isinstance(built, str):  # all pairs, enumerated chunk by chunk
            return self._full_dense(target, source)
        if isinstance(built, RegularGraph):
            if built.num_queries != n or built.num_keys != n or built.index.shape[0] not in (1, b):
                raise ValueError(
                    f"graph: expected a RegularGraph over the {n} objects with 1 or {b} graphs, "
                    f"got index {tuple(built.index.shape)} and num_keys={built.num_keys}"
                )
            built.check_range()
            k = built.k
            tgt = (
                torch.arange(n, device=x.device)
                .repeat_interleave(k)
                .expand(built.index.shape[0], -1)
            )
            src = built.index.reshape(built.index.shape[0], -1)
            keep = None if built.mask is None else built.mask.reshape(built.index.shape[0], -1)
            offs = torch.arange(b, device=x.device).unsqueeze(1) * n
            src, tgt = (src + offs).reshape(-1), (tgt + offs).reshape(-1)
            if keep is not None:
                keep = keep.expand(b, -1).reshape(-1)
                src, tgt = src[keep], tgt[keep]
        else:
            if built.num_queries != n or built.num_keys != n:
                raise ValueError(
                    f"graph: expected a COOGraph over the {n} objects, got num_queries="
                    f"{built.num_queries}, num_keys={built.num_keys}"
                )
            built.check_range()
            offs = torch.arange(b, device=x.device).unsqueeze(1) * n
            src = (built.edge_index[0].unsqueeze(0) + offs).reshape(-1)
            tgt = (built.edge_index[1].unsqueeze(0) + offs).reshape(-1)
        segment = torch.arange(b, device=x.device).repeat_interleave(n)
        out = self._edges(
            target.reshape(b * n, -1), source.reshape(b * n, -1), src, tgt, segment, b
        )
        return out.reshape(b, n, -1) if self.readout == "node" else out

    def _resolve_graph(
        self,
        x: Tensor,
        edge_index: Tensor | None,
        graph: str | GraphSpec | RegularGraph | COOGraph | None,
        spatial: tuple[int, ...] | None,
    ) -> str | RegularGraph | COOGraph:
        b, n, _ = x.shape
        if edge_index is not None:
            if graph is not None:
                raise ValueError("graph: expected None when edge_index is given, got both")
            coo = COOGraph(edge_index, n, n)
            coo.check_range(roles=("sources", "targets"))
            return coo
        spec = self.graph if graph is None else graph
        if isinstance(spec, str):
            check_choice("graph", spec, ("full",))
            return "full"
        if isinstance(spec, (RegularGraph, COOGraph)):
            return spec
        if not isinstance(spec, GraphSpec):
            raise TypeError(
                "graph: expected 'full', a GraphSpec, a RegularGraph or a COOGraph, "
                f"got {type(spec).__name__}"
            )
        ctx = GraphContext(
            n, n, x.device, batch_size=b, query=x, key=x, spatial=spatial, key_spatial=spatial,
            state=self._graph_state, training=self.training,
        )  # fmt: skip
        built = spec.build(ctx)
        return "full" if isinstance(built, str) else built

    def _forward_pyg(
        self, x: Tensor, cond: Tensor | None, edge_index: Tensor | None, batch: Tensor | None
    ) -> Tensor:
        m = x.shape[0]
        batch = check_batch(batch, m, x.device)
        if cond is not None and self.g_cond is not None:
            num_graphs = cond.shape[0] if cond.dim() == 2 else 0
        else:
            num_graphs = int(batch.max()) + 1 if m else 0  # one host read
        target, source = self._projections(x, cond, num_graphs)
        if self.g_cond is not None and cond is not None:
            check_index_range("batch", batch, num_graphs, " (one row of cond per graph)")
            target = target + self.g_cond(cond)[batch]
        if edge_index is None:
            src, tgt = _full_pairs(batch, num_graphs)
        else:
            check_index_range("edge_index[0] (sources)", edge_index[0], m)
            check_index_range("edge_index[1] (targets)", edge_index[1], m)
            src, tgt = edge_index[0], edge_index[1]
        return self._edges(target, source, src, tgt, batch, num_graphs)

    # ------------------------------------------------------------------ edge loops
    def _edges(
        self, target: Tensor, source: Tensor, src: Tensor, tgt: Tensor, seg: Tensor, g: int
    ) -> Tensor:
        """Messages of the flat edges src -> tgt over nodes (M, H) of segments ``seg``."""
        if not self.self_loops:
            keep = src != tgt
            src, tgt = src[keep], tgt[keep]
        rows = target.shape[0] if self.readout == "node" else g
        pool = tgt if self.readout == "node" else seg[tgt]
        out = target.new_zeros(rows, self.hidden_channels)
        for start in range(0, src.shape[0], self.chunk_size):
            s, t = src[start : start + self.chunk_size], tgt[start : start + self.chunk_size]
            p = pool[start : start + self.chunk_size]
            out = out + self._run(self._flat_chunk, target, source, s, t, p, rows)
        if self.aggregation == "mean":
            count = torch.bincount(pool, minlength=rows).clamp_min(1)
            out = out / count.unsqueeze(-1).to(out.dtype)
        return self.f(out)

    def _flat_chunk(
        self, target: Tensor, source: Tensor, s: Tensor, t: Tensor, p: Tensor, rows: int
    ) -> Tensor:
        h = self.g(target.index_select(0, t) + source.index_select(0, s))
        return h.new_zeros(rows, h.shape[-1]).index_add_(0, p, h)

    def _full_dense(self, target: Tensor, source: Tensor) -> Tensor:
        """All ordered pairs of each sample, a block of target rows at a time: the pre-activation
        of the block is the broadcast sum ``target[:, rows, None] + source[:, None]``."""
        b, n, _ = target.shape
        rows = max(1, self.chunk_size // max(b * n, 1))
        parts: list[Tensor] = []
        for start in range(0, n, rows):
            parts.append(self._run(self._rows_chunk, target[:, start : start + rows], source))
        res = torch.cat(parts, 1) if parts else target.new_zeros(b, 0, self.hidden_channels)
        if not self.self_loops:  # the pairs (i, i) were summed with the others: take them out
            res = res - self._run(self.g, target + source)
        per = n if self.self_loops else n - 1
        if self.readout == "graph":
            res = res.sum(1)
            if self.aggregation == "mean" and per:
                res = res / (n * per)
        elif self.aggregation == "mean" and per:
            res = res / per
        return self.f(res)

    def _rows_chunk(self, target: Tensor, source: Tensor) -> Tensor:
        """(B, r, H) sum over every source j of g(x_i, x_j, c) for the r targets i given."""
        return self.g(target.unsqueeze(2) + source.unsqueeze(1)).sum(2)

    def _run(self, fn: Any, *args: Any) -> Tensor:
        if self.checkpoint and torch.is_grad_enabled():
            return _checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)


def _full_pairs(batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
    """(src, tgt): every ordered pair (self-pairs included) of nodes in the same graph."""
    perm = torch.argsort(batch, stable=True)
    sizes = torch.bincount(batch, minlength=num_graphs)
    ptr = torch.cumsum(sizes, 0) - sizes
    deg = sizes[batch[perm]]  # sources of each (sorted) target
    tgt_pos = torch.repeat_interleave(torch.arange(perm.shape[0], device=batch.device), deg)
    first = torch.cumsum(deg, 0) - deg
    k = torch.arange(tgt_pos.shape[0], device=batch.device) - first[tgt_pos]
    src_pos = ptr[batch[perm][tgt_pos]] + k
    return perm[src_pos], perm[tgt_pos]
