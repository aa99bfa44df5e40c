r"""The non-local operation as a PyTorch Geometric message-passing layer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast, overload

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from typing_extensions import Self

from .._validate import (
    NORMS,
    check_channels_dtype_device,
    check_choice,
    check_edge_index,
    check_float_tensor,
    check_positive_int,
    describe,
    factory_kwargs,
)
from ..compat import from_reference
from ..graphs.base import COOGraph
from ..ops.aggregate import aggregate
from ..ops.inputs import AggregateInputs
from ..pairwise import MODES, Pairwise, check_scale_mode, resolve_scale

__all__ = ["NonLocalConv"]

#: Constructor arguments of NonLocalConv that the reference blocks do not have.
_CONV_ONLY = ("residual",)


class NonLocalConv(MessagePassing):
    r"""Non-local layer of Wang et al., "Non-local Neural Networks", CVPR 2018,
    https://arxiv.org/abs/1711.07971, on the edges of a graph.

    .. math::
        y_i = \frac{1}{C_i} \sum_{j \in \mathcal{N}(i)} f(\theta_i, \phi_j)\, g_j, \qquad
        \mathbf{x}'_i = \mathbf{x}_i + \mathrm{Norm}(W_z\, y_i + b_z)

    with :math:`\theta_i = W_\theta x_i + b_\theta` (queries, target nodes), :math:`\phi_j =
    W_\phi x_j + b_\phi` and :math:`g_j = W_g x_j + b_g` (keys and values, source nodes) and
    :math:`\mathcal{N}(i)` the sources of the edges into i. :math:`f` and :math:`C_i` follow
    ``mode`` (:mod:`nlgraph.pairwise`): for the Gaussians the weights are a softmax over the
    incoming edges, :math:`w_{ij} = \mathrm{softmax}_{j \in \mathcal{N}(i)}(s\,\theta_i\cdot
    \phi_j)` (``"gaussian"``: raw :math:`x_i\cdot x_j`, s = 1); for dot product and
    concatenation :math:`w_{ij} = f(\theta_i, \phi_j) / \deg(i)`. A node without incoming edges
    gets :math:`y_i = 0` (so :math:`\mathbf{x}'_i = \mathbf{x}_i + \mathrm{Norm}(b_z)`).
    Duplicate edges count as many times as they appear.

    On a complete graph (all pairs, self-loops included) this is
    :class:`~nlgraph.nn.NonLocalBlock1d` with ``sub_sample=False`` run on the node sequence, per
    graph of a :class:`~torch_geometric.data.Batch` (edges never cross graphs; only
    ``norm="batch"`` couples the graphs, through the batch statistics, as the block couples
    the samples). With ``mode="embedded_gaussian"``, ``scale="inner"`` and
    :math:`W_z = I`, :math:`y` is ``TransformerConv(C, C', heads=1, root_weight=False)``
    with ``lin_query, lin_key, lin_value`` = θ, φ, g.

    The aggregation runs through nlgraph's kernels (:func:`nlgraph.ops.nonlocal_aggregate`) on
    the ``edge_index`` (the ``"csr"`` sparse-matrix kernel in float32/float64, ``"coo"``
    otherwise; the node features as a batch of one): :meth:`propagate` is bypassed, so
    ``message``/``aggregate`` hooks and PyG's explainer do not see this layer's messages. The
    layer keeps the graph it prepared for the last ``edge_index`` it saw (the index-range check,
    which reads nothing back, and the sparse pattern of the ``csr`` kernel): called again with
    the same tensor, unmodified, it runs without any host read. A new ``edge_index`` costs one
    host read to learn whether it is sorted by target, unless it is a PyG
    :class:`~torch_geometric.EdgeIndex` that knows it is (``sort_order="col"``).

    Args:
        in_channels (int): C, node feature width.
        inter_channels (int, optional): C', width of θ, φ, g. (default: ``max(C // 2, 1)``)
        mode (str): ``"gaussian"``, ``"embedded_gaussian"``, ``"dot_product"`` or
            ``"concatenation"``. (default: ``"embedded_gaussian"``)
        scale (str or float, optional): temperature s of the embedded-Gaussian logits:
            ``None`` (1), ``"inner"`` (:math:`C'^{-1/2}`), ``"input"`` (:math:`C^{-1/2}`) or a
            positive float; only with ``mode="embedded_gaussian"``. (default: ``None``)
        norm (str, optional): ``"batch"`` (BatchNorm1d over the nodes after :math:`W_z`) or
            ``None``. (default: ``None``)
        residual (bool): add the target features :math:`\mathbf{x}_i`. (default: ``True``)
        bias (bool): give :math:`W_z` a bias :math:`b_z`. (default: ``True``)
        device (torch.device, optional): where every parameter is created. (default: ``None``)
        dtype (torch.dtype, optional): the dtype of every parameter. (default: ``None``)

    Shapes:
        - input: node features (N, C) or bipartite ``(x_src (N_src, C), x_dst (N_dst, C))``;
          edge_index (2, E), row 0 source j in [0, N_src), row 1 target i in [0, N_dst)
        - output: (N_dst, C); with ``return_attention_weights``:
          ``((N_dst, C), ((2, E), (E, 1)))``, the weights in PyG's (E, heads) layout

    Attributes:
        theta, phi: Linear(C, C') (``None`` in the Gaussian mode).
        g: Linear(C, C').
        w_z: Linear(C', C).
        norm: BatchNorm1d(C) or ``None``.
        concat_project: Linear(2C', 1, bias=False) with weight [u; w] (θ half first), in the
            concatenation mode only.

    The names are the block's, so its 1x1-conv weights map one to one
    (:meth:`from_reference`).

    Example:
        >>> conv = NonLocalConv(16, 8)
        >>> x, edge_index = torch.randn(5, 16), torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
        >>> conv(x, edge_index).shape
        torch.Size([5, 16])
        >>> out, (ei, alpha) = conv(x, edge_index, return_attention_weights=True)
        >>> alpha.shape
        torch.Size([4, 1])
    """

    def __init__(
        self,
        in_channels: int,
        inter_channels: int | None = None,
        *,
        mode: str = "embedded_gaussian",
        scale: str | float | None = None,
        norm: str | None = None,
        residual: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(aggr="add", node_dim=0)
        check_positive_int("in_channels", in_channels)
        if inter_channels is None:
            inter_channels = max(in_channels // 2, 1)
        check_positive_int("inter_channels", inter_channels)
        check_choice("mode", mode, MODES)
        check_choice("norm", norm, NORMS)
        check_scale_mode(scale, mode)
        self.in_channels = in_channels
        self.inter_channels = inter_channels
        self.mode = mode
        self.scale = scale
        self.scale_factor = resolve_scale(scale, in_channels, inter_channels)
        self.residual = bool(residual)
        self.bias = bool(bias)

        fk = factory_kwargs(device, dtype)
        self.g = nn.Linear(in_channels, inter_channels, **fk)
        if mode == "gaussian":
            self.theta = self.phi = None
        else:
            self.theta = nn.Linear(in_channels, inter_channels, **fk)
            self.phi = nn.Linear(in_channels, inter_channels, **fk)
        self.w_z = nn.Linear(inter_channels, in_channels, bias=self.bias, **fk)
        self.norm = nn.BatchNorm1d(in_channels, **fk) if norm == "batch" else None
        self.concat_project = (
            nn.Linear(2 * inter_channels, 1, bias=False, **fk) if mode == "concatenation" else None
        )
        #: (edge_index, its version, N_src, N_dst, the COOGraph prepared for it): see forward.
        self._graph_cache: tuple[Tensor, int, int, int, COOGraph] | None = None
        self.reset_parameters()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_graph_cache"] = None  # a cache, not state: never pickled
        return state

    def reset_parameters(self) -> None:
        """Re-initialise every parameter (PyTorch's default Linear init, norm to identity)."""
        super().reset_parameters()
        for m in (self.theta, self.phi, self.g, self.w_z, self.norm, self.concat_project):
            if m is not None:
                m.reset_parameters()

    def pairwise(self) -> Pairwise:
        """The layer's pairwise function (with the concatenation weight when needed)."""
        if self.concat_project is not None:  # mode "concatenation"
            return Pairwise(self.mode, concat_weight=self.concat_project.weight.reshape(-1))
        return Pairwise(self.mode, scale=self.scale_factor)

    # ------------------------------------------------------------------ input checks
    def _check_x(self, x: Any) -> tuple[Tensor, Tensor]:
        pair = x if isinstance(x, (tuple, list)) else (x, x)
        if len(pair) != 2:
            raise ValueError(
                f"x: expected a Tensor or a pair (x_src, x_dst), got {len(pair)} items"
            )
        weight = self.g.weight
        for name, t in zip(("x[0] (x_src)", "x[1] (x_dst)") if pair is x else ("x", "x"), pair):
            check_float_tensor(name, t)
            if t.dim() != 2:
                raise ValueError(f"{name}: expected a 2-D tensor (N, C), got {describe(t)}")
            check_channels_dtype_device(name, t, self.in_channels, weight, "the layer's")
        return pair[0], pair[1]

    @staticmethod
    def _check_edge_index(edge_index: Any, n_src: int, n_dst: int) -> tuple[Tensor, bool]:
        """``(edge_index (2, E), was_sparse)``; a torch.sparse adjacency is read as PyG's
        ``adj_t`` (entry (i, j) is the edge j -> i)."""
        if isinstance(edge_index, Tensor) and edge_index.layout != torch.strided:
            if edge_index.dim() != 2 or tuple(edge_index.shape) != (n_dst, n_src):
                raise ValueError(
                    f"edge_index: expected a sparse adjacency adj_t of shape ({n_dst}, {n_src}) "
                    f"(targets, sources), got shape {tuple(edge_index.shape)}"
                )
            indices = edge_index.to_sparse_coo().coalesce().indices()
            return indices.flip(0), True
        if not isinstance(edge_index, Tensor):
            raise TypeError(
                "edge_index: expected a (2, E) int64 Tensor or a torch.sparse adjacency, "
                f"got {type(edge_index).__name__}"
            )
        return check_edge_index("edge_index", edge_index), False

    def _graph(self, ei: Tensor, n_src: int, n_dst: int, sparse: bool) -> COOGraph:
        """The COOGraph of ``ei``: the cached one when ``ei`` is the last edge_index seen and
        unmodified, else a new one (range-checked without a host read)."""
        cached = self._graph_cache
        if (
            cached is not None
            and cached[0] is ei
            and cached[1:4] == (ei._version, n_src, n_dst)
            and cached[4].edge_index.device == ei.device
        ):
            return cached[4]
        # Coalesced sparse indices are sorted by target; so is a PyG EdgeIndex sorted by column.
        is_sorted = True if sparse or getattr(ei, "is_sorted_by_col", False) else None
        plain = ei.as_tensor() if hasattr(ei, "as_tensor") else ei  # a PyG EdgeIndex: plain
        graph = COOGraph(plain, n_dst, n_src, is_sorted)
        graph.check_range(roles=("sources", "targets"))
        self._graph_cache = (ei, ei._version, n_src, n_dst, graph)
        return graph

    # ------------------------------------------------------------------ forward
    @overload
    def forward(
        self,
        x: Tensor | tuple[Tensor, Tensor],
        edge_index: Tensor,
        return_attention_weights: None = ...,
    ) -> Tensor: ...

    @overload
    def forward(
        self, x: Tensor | tuple[Tensor, Tensor], edge_index: Tensor, return_attention_weights: bool
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]: ...

    def forward(
        self,
        x: Tensor | tuple[Tensor, Tensor],
        edge_index: Tensor,
        return_attention_weights: bool | None = None,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]] | tuple[Tensor, Tensor]:
        r"""Run the layer (see the class docstring for the math).

        Args:
            x (Tensor or (Tensor, Tensor)): node features (N, C), or ``(x_src, x_dst)`` for a
                bipartite graph (keys and values from ``x_src``, queries and the residual from
                ``x_dst``).
            edge_index (Tensor): (2, E) int64, row 0 source j, row 1 target i; or a
                ``torch.sparse`` adjacency ``adj_t`` of shape (N_dst, N_src) (PyG's transposed
                convention; its values are ignored).
            return_attention_weights (bool, optional): when truthy, also return
                ``(edge_index, alpha)`` with alpha (E, 1) the weights :math:`w_{ij}` of each
                edge, in PyG's (E, heads) layout (for a sparse adjacency: a sparse COO tensor
                holding alpha). (default: ``None``)

        Returns:
            Tensor (N_dst, C), or ``(out, (edge_index, alpha))``.
        """
        if isinstance(return_attention_weights, Tensor):  # its truth value is ambiguous
            raise TypeError(
                "return_attention_weights: expected None or a bool (any truthy value), got a Tensor"
            )
        x_src, x_dst = self._check_x(x)
        n_src, n_dst = x_src.shape[0], x_dst.shape[0]
        ei, sparse = self._check_edge_index(edge_index, n_src, n_dst)
        value = self.g(x_src)
        if self.mode == "gaussian":
            query, key = x_dst.to(value.dtype), x_src.to(value.dtype)
        else:
            assert self.theta is not None and self.phi is not None  # not in the Gaussian mode
            query, key = self.theta(x_dst), self.phi(x_src)
        alpha: Tensor | None = None
        if n_src == 0:  # no keys: the kernels need N' >= 1; no edge can exist
            if ei.shape[1]:
                raise IndexError("edge_index[0] (sources): expected no edges, x_src has 0 nodes")
            y = value.new_zeros(n_dst, self.inter_channels)
            alpha = value.new_zeros(0)
        else:
            want_alpha = bool(return_attention_weights)
            inp = AggregateInputs(
                query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0), self.pairwise(),
                self._graph(ei, n_src, n_dst, sparse), want_alpha,
            )  # fmt: skip
            y, attn = aggregate(inp)
            y = y.squeeze(0)
            if attn is not None:
                alpha = attn.edges(0)[1]
        z = self.w_z(y)
        if self.norm is not None:
            z = self.norm(z)
        out = x_dst + z if self.residual else z
        if not return_attention_weights:
            return out
        assert alpha is not None
        if sparse:
            adj = torch.sparse_coo_tensor(
                ei.flip(0), alpha, (n_dst, n_src), check_invariants=False
            ).coalesce()
            return out, adj
        return out, (ei, alpha.unsqueeze(-1))

    # ------------------------------------------------------------------ reference weights
    @classmethod
    def from_reference(
        cls,
        state_dict: Mapping[str, Any],
        layout: str,
        *,
        mode: str | None = None,
        **overrides: Any,
    ) -> Self:
        """A layer holding the weights of a public non-local block's state_dict.

        The state_dict is loaded by :func:`nlgraph.compat.from_reference` (same layouts and
        arguments, e.g. ``scale``, ``sub_sample``, ``prefix``, ``dtype``), then every 1x1
        convolution (C_out, C_in, 1[, 1[, 1]]) becomes the Linear (C_out, C_in) of the same
        name; the BatchNorm, ``scale``, norm eps/momentum and W_z bias carry over.

        Args:
            state_dict (Mapping[str, Tensor]): the reference module's state_dict.
            layout (str): ``"alexhex7"``, ``"mmcv"``, ``"timm"``, ``"slowfast"`` or
                ``"caffe2"``.
            mode (str, optional): the pairwise function; ``None``: from the keys where they
                tell it (see :func:`nlgraph.compat.from_reference`). (default: ``None``)
            **overrides: arguments of :func:`nlgraph.compat.from_reference`, plus
                ``residual`` (this layer only).

        Raises:
            ValueError: the loaded block sub-samples its keys (meaningless on a graph; pass
                ``sub_sample=False`` where the layout takes it as an argument), plus every error
                of :func:`nlgraph.compat.from_reference`.
        """
        conv_kwargs = {k: overrides.pop(k) for k in _CONV_ONLY if k in overrides}
        block = from_reference(state_dict, layout, mode=mode, **overrides)
        if block.sub_sample:
            raise ValueError(
                f"sub_sample: expected False (sub-sampling the keys has no meaning on a graph), "
                f"got True for the {layout!r} state_dict; pass sub_sample=False where the layout "
                "takes it as an argument"
            )
        w = cast(Tensor, block.g.weight)
        conv = cls(
            block.in_channels, block.inter_channels, mode=block.mode, scale=block.scale,
            norm="batch" if block.norm is not None else None, bias=block.out_bias,
            device=w.device, dtype=w.dtype, **conv_kwargs,
        )  # fmt: skip
        if block.norm is not None and conv.norm is not None:
            conv.norm.eps = cast(float, block.norm.eps)
            conv.norm.momentum = cast(float, block.norm.momentum)
        theirs = block.state_dict()
        conv.load_state_dict({k: theirs[k].reshape(v.shape) for k, v in conv.state_dict().items()})
        return conv

    def __repr__(self) -> str:
        parts = [f"{self.in_channels}", f"{self.inter_channels}"]
        current = dict(
            mode=(self.mode, "embedded_gaussian"), scale=(self.scale, None),
            norm=("batch" if self.norm is not None else None, None),
            residual=(self.residual, True), bias=(self.bias, True),
        )  # fmt: skip
        parts += [f"{k}={v}" for k, (v, default) in current.items() if v != default]
        return f"{self.__class__.__name__}({', '.join(parts)})"
