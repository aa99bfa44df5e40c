r"""The non-local block on 1-D, 2-D and 3-D feature maps (dense equivalence mode)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import Self

from .._validate import (
    NORMS,
    check_channels_dtype_device,
    check_choice,
    check_float_tensor,
    check_positive_int,
    describe,
    factory_kwargs,
)
from ..attention import Attention
from ..compat import from_reference as _from_reference
from ..compat import to_reference as _to_reference
from ..compat._common import register_block_classes
from ..compat.presets import preset_kwargs
from ..graphs.base import COOGraph, RegularGraph
from ..graphs.latent import Latent
from ..graphs.spec import Full, Graph, GraphContext, GraphSpec, GraphState, as_spec
from ..ops.aggregate import aggregate
from ..ops.dispatch import KERNELS
from ..ops.inputs import AggregateInputs
from ..pairwise import MODES, Pairwise, check_scale_mode, resolve_scale

__all__ = ["NonLocalBlock1d", "NonLocalBlock2d", "NonLocalBlock3d", "NonLocalBlockNd"]

WEIGHT_INITS: tuple[str, ...] = ("pytorch", "normal", "kaiming", "mmcv")
PLACEMENTS: tuple[str, ...] = ("after", "before")

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BATCHNORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_SHAPE = {1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, T, H, W)"}
_DEFAULTS: dict[str, Any] = dict(
    mode="embedded_gaussian", sub_sample=True, pool_size=None, pool_placement="after",
    scale=None, norm="batch", zero_init=True, out_bias=True, weight_init="pytorch",
    norm_eps=1e-5, norm_momentum=0.1, graph="full", latent=None, backend="auto",
)  # fmt: skip


class NonLocalBlockNd(nn.Module):
    r"""Non-local block of Wang et al., "Non-local Neural Networks", CVPR 2018,
    https://arxiv.org/abs/1711.07971, on a ``dims``-D feature map.

    .. math::
        y_i = \frac{1}{C_i} \sum_{j} f(\theta_i, \phi_j)\, g_j, \qquad
        z_i = x_i + \mathrm{Norm}(W_z\, y_i + b_z)

    with :math:`\theta = W_\theta x + b_\theta` over the N positions of x (queries) and
    :math:`\phi, g` over the N' positions of the key/value map (x, max-pooled when
    ``sub_sample``). :math:`f` and :math:`C_i` follow ``mode`` (see :mod:`nlgraph.pairwise`):
    softmax over the keys for the two Gaussians, division by N' for dot product and
    concatenation. In the Gaussian mode :math:`\theta_i = x_i` and :math:`\phi_j` is the
    (pooled) raw input.

    Args:
        in_channels (int): C, channels of the input map.
        inter_channels (int, optional): C', width of θ, φ, g. (default: ``max(C // 2, 1)``)
        mode (str): ``"gaussian"``, ``"embedded_gaussian"``, ``"dot_product"`` or
            ``"concatenation"``. (default: ``"embedded_gaussian"``)
        sub_sample (bool): max-pool the keys and values, kernel = stride = ``pool_size``, floor
            rounding (trailing rows that do not fill a window are dropped). (default: ``True``)
        pool_size (int or tuple, optional): pooling window per spatial axis. (default: 2 in 1-D,
            (2, 2) in 2-D, (1, 2, 2) in 3-D: time is not pooled)
        pool_placement (str): ``"after"`` pools the projected φ(x), g(x) (AlexHex7, mmcv);
            ``"before"`` pools x once and projects the pooled map (Caffe2, SlowFast). The two
            differ numerically. (default: ``"after"``)
        scale (str or float, optional): temperature of the embedded-Gaussian logits: ``None``
            (none), ``"inner"`` (:math:`C'^{-1/2}`), ``"input"`` (:math:`C^{-1/2}`, timm) or a
            float. Only valid with ``mode="embedded_gaussian"``. (default: ``None``)
        norm (str, optional): ``"batch"`` (BatchNormNd after :math:`W_z`) or ``None``.
            (default: ``"batch"``)
        zero_init (bool): zero the norm's weight and bias (or :math:`W_z` and :math:`b_z` when
            ``norm=None``) so that the block is the identity at construction. (default: ``True``)
        out_bias (bool): give :math:`W_z` a bias. (default: ``True``)
        weight_init (str): ``"pytorch"`` (PyTorch's default conv init, AlexHex7),
            ``"normal"`` (every conv N(0, 0.01²), biases 0: Caffe2), ``"kaiming"`` (every conv
            Kaiming-normal fan_out/ReLU, biases 0: timm, SlowFast's model initialiser) or
            ``"mmcv"`` (θ, φ, g N(0, 0.01²); :math:`W_z` and the concatenation projection
            Kaiming-normal fan_out; biases 0). Applied before ``zero_init``.
            (default: ``"pytorch"``)
        norm_eps (float): epsilon of the BatchNorm. (default: ``1e-5``)
        norm_momentum (float): momentum of the BatchNorm. (default: ``0.1``)
        graph: the edge set N(i), a graph spec (:mod:`nlgraph.graphs.spec`): ``"full"`` (all
            pairs: the dense block), a :class:`~nlgraph.graphs.KNN` (the k keys with the largest
            θ_i·φ_j, or nearest in L2 / cosine, rebuilt every forward per sample without
            gradient), a :class:`~nlgraph.graphs.Window` or
            :class:`~nlgraph.graphs.TemporalGroups` (position space; with ``sub_sample`` a query
            maps onto the pooled key cell that contains it), an
            :class:`~nlgraph.graphs.EdgeIndex` or a plain LongTensor ``edge_index`` (2, E) shared
            by the batch (row 1 a query position in [0, N), row 0 a key position in [0, N'):
            with ``sub_sample`` the keys are the *pooled* positions, so an edge_index over input
            positions needs ``sub_sample=False``), or any other
            :class:`~nlgraph.graphs.GraphSpec`. Normalisation is over N(i): softmax for the
            Gaussians, division by |N(i)| otherwise; a query without neighbours gets y_i = 0.
            To share one graph between blocks or steps, build it once with
            :meth:`build_graph` and pass it as ``forward(x, graph=...)``.
            (default: ``"full"``)
        latent (Latent, optional): keys and values are M learned latent nodes
            (:class:`~nlgraph.graphs.Latent`, GloRe-style): the block owns ``latent_proj``, a
            1x1 conv giving M plain-linear weights B per key position, and every query attends
            to the M latent keys B^T φ and values B^T g over the full graph of the M nodes,
            O(N·M); with ``sub_sample`` B is computed and pooled like φ and g, so the latent
            nodes pool the N' sub-sampled positions; every mode is supported (the Gaussian mode
            projects the raw pooled input; the count modes divide by M). ``graph`` must then be
            ``"full"``. ``graph=Latent(M)`` is still accepted, with a DeprecationWarning, and
            means ``latent=Latent(M)``. (default: ``None``)
        backend (str): kernel for :func:`nlgraph.ops.nonlocal_aggregate`: ``"auto"``,
            ``"dense"``, ``"regular"``, ``"coo"`` or ``"csr"``. (default: ``"auto"``)
        device (torch.device, optional): where every parameter is created. (default: ``None``)
        dtype (torch.dtype, optional): the dtype of every parameter. (default: ``None``)

    Shapes:
        - input x: (B, C, \*S); N = prod(S) queries; N' = prod(floor(S_d / pool_d)) keys with
          ``sub_sample`` (else N' = N)
        - output z: (B, C, \*S); ``attn.to_dense()``: (B, N, N') (``return_attention=True``),
          (B, N, M) over the latent nodes with ``latent=Latent(M)``

    Attributes:
        theta, phi: ConvNd(C, C', 1) with bias (``None`` in the Gaussian mode)
        g: ConvNd(C, C', 1) with bias
        w_z: ConvNd(C', C, 1), bias iff ``out_bias``
        norm: BatchNormNd(C) or ``None``
        concat_project: Linear(2C', 1, bias=False), weight [u; w] (θ half first), in the
            concatenation mode only (``None`` otherwise)
        latent_proj: ConvNd(C, M, 1) with bias, with ``latent=Latent(M)`` only (``None``
            otherwise, so other blocks keep their state-dict keys)

    Raises:
        ValueError: an unknown option, a wrong input rank or channel count, or a map too small
            to pool (no keys left).
        TypeError: an integer or mismatched input dtype.
    """

    dims: ClassVar[int] = 0
    default_pool_size: ClassVar[tuple[int, ...]] = ()

    def __init__(
        self,
        in_channels: int,
        inter_channels: int | None = None,
        *,
        mode: str = "embedded_gaussian",
        sub_sample: bool = True,
        pool_size: int | tuple[int, ...] | None = None,
        pool_placement: str = "after",
        scale: str | float | None = None,
        norm: str | None = "batch",
        zero_init: bool = True,
        out_bias: bool = True,
        weight_init: str = "pytorch",
        norm_eps: float = 1e-5,
        norm_momentum: float = 0.1,
        graph: str | GraphSpec | Latent | Tensor = "full",
        latent: Latent | None = None,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        if inter_channels is None:
            inter_channels = max(in_channels // 2, 1)
        check_positive_int("inter_channels", inter_channels)
        check_choice("mode", mode, MODES)
        check_choice("pool_placement", pool_placement, PLACEMENTS)
        check_choice("norm", norm, NORMS)
        check_choice("weight_init", weight_init, WEIGHT_INITS)
        spec, latent = self._check_graph(graph, latent)
        check_choice("backend", backend, ("auto", *KERNELS))
        if not (isinstance(norm_eps, (int, float)) and norm_eps > 0):
            raise ValueError(f"norm_eps: expected a positive float, got {norm_eps!r}")
        check_scale_mode(scale, mode)
        self.in_channels = in_channels
        self.inter_channels = inter_channels
        self.mode = mode
        self.sub_sample = bool(sub_sample)
        self.pool_size = self._normalise_pool_size(pool_size)
        self.pool_placement = pool_placement
        self.scale = scale
        self.scale_factor = resolve_scale(scale, in_channels, inter_channels)
        self.zero_init = bool(zero_init)
        self.out_bias = bool(out_bias)
        self.weight_init = weight_init
        self.graph = spec
        self._graph_state = GraphState()
        self.latent = latent
        self.backend = backend

        fk = factory_kwargs(device, dtype)
        conv = _CONV[self.dims]
        self.g = conv(in_channels, inter_channels, 1, **fk)
        if mode == "gaussian":
            self.theta = self.phi = None
        else:
            self.theta = conv(in_channels, inter_channels, 1, **fk)
            self.phi = conv(in_channels, inter_channels, 1, **fk)
        self.w_z = conv(inter_channels, in_channels, 1, bias=out_bias, **fk)
        self.norm = (
            _BATCHNORM[self.dims](in_channels, eps=norm_eps, momentum=norm_momentum, **fk)
            if norm == "batch"
            else None
        )
        self.concat_project = (
            nn.Linear(2 * inter_channels, 1, bias=False, **fk) if mode == "concatenation" else None
        )
        self.latent_proj = conv(in_channels, latent.num_nodes, 1, **fk) if latent else None
        self.reset_parameters()

    # ------------------------------------------------------------------ construction helpers
    def _check_graph(self, graph: Any, latent: Any) -> tuple[GraphSpec, Latent | None]:
        """The graph spec and latent option (``graph=Latent(M)``: the deprecated spelling)."""
        if isinstance(graph, Latent):
            if latent is not None:
                raise ValueError(
                    f"graph: expected 'full' with latent={latent!r}, got another Latent {graph!r}"
                )
            warnings.warn(
                "graph=Latent(M) is deprecated: latent nodes are keys and values, not an edge "
                "set; pass latent=Latent(M)",
                DeprecationWarning,
                stacklevel=4,
            )
            graph, latent = "full", graph
        if latent is not None and not isinstance(latent, Latent):
            raise TypeError(f"latent: expected None or a Latent, got {type(latent).__name__}")
        spec = as_spec(graph)
        spec.check_dims(self.dims)
        if latent is not None and not isinstance(spec, Full):
            raise ValueError(
                f"graph: expected 'full' with latent={latent!r} (every query sees the M latent "
                f"nodes), got {spec!r}"
            )
        return spec, latent

    def _normalise_pool_size(self, pool_size: int | tuple[int, ...] | None) -> tuple[int, ...]:
        if pool_size is None:
            return self.default_pool_size
        if isinstance(pool_size, int) and not isinstance(pool_size, bool):
            pool_size = (pool_size,) * self.dims
        if (
            not isinstance(pool_size, (tuple, list))
            or len(pool_size) != self.dims
            or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 1 for p in pool_size)
        ):
            raise ValueError(
                f"pool_size: expected a positive int or a tuple of {self.dims} positive ints, "
                f"got {pool_size!r}"
            )
        return tuple(pool_size)

    def reset_parameters(self) -> None:
        """Re-initialise every parameter by ``weight_init``, then apply ``zero_init``."""
        convs = [
            m for m in (self.theta, self.phi, self.g, self.w_z, self.latent_proj) if m is not None
        ]
        if self.norm is not None:
            self.norm.reset_parameters()
        for m in (*convs, self.concat_project):
            if m is None:
                continue
            if self.weight_init == "pytorch":
                m.reset_parameters()
                continue
            kaiming = self.weight_init == "kaiming" or (
                self.weight_init == "mmcv" and m in (self.w_z, self.concat_project)
            )
            if kaiming:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        if self.zero_init:
            target = self.norm if self.norm is not None else self.w_z
            nn.init.zeros_(target.weight)
            if target.bias is not None:
                nn.init.zeros_(target.bias)

    # ------------------------------------------------------------------ forward
    def pairwise(self) -> Pairwise:
        """The block's pairwise function (with the concatenation weight when needed)."""
        if self.concat_project is not None:  # mode "concatenation"
            return Pairwise(self.mode, concat_weight=self.concat_project.weight.reshape(-1))
        scale = self.scale_factor if self.mode == "embedded_gaussian" else 1.0
        return Pairwise(self.mode, scale=scale)

    def num_keys(self, spatial: tuple[int, ...]) -> int:
        """N', the number of key positions for a map of spatial size ``spatial``."""
        return math.prod(self._key_shape(spatial))

    def _check_input(self, x: Any) -> None:
        check_float_tensor("x", x)
        if x.dim() != self.dims + 2:
            raise ValueError(
                f"x: expected a {self.dims + 2}-D tensor {_SHAPE[self.dims]}, got {describe(x)}"
            )
        check_channels_dtype_device("x", x, self.in_channels, self.g.weight, "the block's")
        spatial = tuple(x.shape[2:])
        if self.num_keys(spatial) < 1:
            raise ValueError(
                f"x: spatial size {spatial} leaves no keys after sub-sampling with pool_size "
                f"{self.pool_size}; expected every axis >= its pool size (or sub_sample=False)"
            )

    def _pool(self, t: Tensor) -> Tensor:
        return _MAXPOOL[self.dims](t, kernel_size=self.pool_size, stride=self.pool_size)

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values, channels last: (B, N, Cq), (B, N', Cq), (B, N', C').

        With ``latent=Latent(M)`` the keys and values are the M latent nodes: (B, M, Cq),
        (B, M, C').
        """
        pool = self.sub_sample
        before = pool and self.pool_placement == "before"
        x_kv = self._pool(x) if before else x
        value = self.g(x_kv)
        if pool and not before:
            value = self._pool(value)
        if self.mode == "gaussian":
            # The raw input is the query and key; under autocast g(x) may come out in a lower
            # precision, so the raw side follows the value's dtype.
            x_q = x.to(value.dtype)
            query, key = x_q, (self._pool(x_q) if pool else x_q)
        else:
            assert self.theta is not None and self.phi is not None  # not in the Gaussian mode
            query, key = self.theta(x), self.phi(x_kv)
            if pool and not before:
                key = self._pool(key)
        query, key, value = (t.flatten(2).transpose(1, 2) for t in (query, key, value))
        if self.latent is not None and self.latent_proj is not None:  # M latent keys and values
            weights = self.latent_proj(x_kv)
            if pool and not before:
                weights = self._pool(weights)
            key, value = self.latent.project(weights.flatten(2).transpose(1, 2), key, value)
        return query, key, value

    def graph_context(self, x: Tensor, query: Tensor, key: Tensor) -> GraphContext:
        """What the block's graph spec builds from, for input ``x`` and its embeddings."""
        spatial = tuple(x.shape[2:])
        return GraphContext(
            num_queries=query.shape[1],
            num_keys=key.shape[1],
            device=x.device,
            batch_size=x.shape[0],
            query=query,
            key=key,
            spatial=spatial,
            key_spatial=self._key_shape(spatial) if self.latent is None else None,
            pool_size=self.pool_size if self.sub_sample and self.latent is None else None,
            state=self.graph_state,
            training=self.training,
        )

    @property
    def graph_state(self) -> GraphState:
        """This block's storage for its graph spec: e.g. the clustered k-NN's warm-start
        centroids and the graph kept by ``KNN(refresh_every=T)`` (see
        :mod:`nlgraph.graphs.spec`). Not saved, pickled or copied."""
        state = self.__dict__.get("_graph_state")
        if state is None:  # a block unpickled from before the state existed
            state = self.__dict__["_graph_state"] = GraphState()
        return state

    def reset_graph_state(self) -> None:
        """Forget what the graph spec kept (warm-start centroids, a kept graph): the next call
        starts afresh."""
        self.graph_state.clear()

    def build_graph(
        self, x: Tensor, query: Tensor | None = None, key: Tensor | None = None
    ) -> Graph:
        """The edge set for input ``x``: ``"full"``, a RegularGraph or a COOGraph.

        Build it once and pass it as ``forward(x, graph=...)`` to several blocks, or to the same
        block over several steps, to share one graph explicitly (e.g. one k-NN graph for every
        block of a stage). ``query`` (B, N, Cq) and ``key`` (B, N', Cq) are the embeddings of
        ``x`` when the caller already has them (:meth:`embed`); else they are computed here.
        """
        if query is None or key is None:
            self._check_input(x)
            with torch.no_grad():
                query, key, _ = self.embed(x)
        return self.graph.build(self.graph_context(x, query, key))

    def _key_shape(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        if not self.sub_sample:
            return spatial
        return tuple(s // p for s, p in zip(spatial, self.pool_size))

    @overload
    def forward(
        self, x: Tensor, return_attention: Literal[False] = ..., graph: Any = ...
    ) -> Tensor: ...

    @overload
    def forward(
        self, x: Tensor, return_attention: Literal[True], graph: Any = ...
    ) -> tuple[Tensor, Attention]: ...

    def forward(
        self,
        x: Tensor,
        return_attention: bool = False,
        graph: str | RegularGraph | COOGraph | None = None,
    ) -> Tensor | tuple[Tensor, Attention]:
        """z = x + Norm(W_z y); with ``return_attention=True`` also the weights (see class doc).

        ``graph`` overrides the block's edge set with a prebuilt one (e.g. from
        :meth:`build_graph` of another block, to share one k-NN graph).
        """
        self._check_input(x)
        query, key, value = self.embed(x)
        given = graph is not None
        if graph is None:
            graph = self.graph.build(self.graph_context(x, query, key))
        inp = AggregateInputs(query, key, value, self.pairwise(), graph, bool(return_attention))
        if given:
            inp.validate_graph()
        y, attn = aggregate(inp, self.backend)
        y = y.transpose(1, 2).reshape(x.shape[0], self.inter_channels, *x.shape[2:])
        z = self.w_z(y)
        if self.norm is not None:
            z = self.norm(z)
        z = x + z
        if return_attention:
            assert attn is not None
            return z, attn
        return z

    # ------------------------------------------------------------------ presets and layouts
    @classmethod
    def from_preset(cls, name: str, in_channels: int, **overrides: Any) -> Self:
        """A fresh block with the defaults of a public implementation.

        Args:
            name (str): ``"alexhex7"``, ``"mmcv"``, ``"timm"``, ``"slowfast"`` or ``"caffe2"``
                (see :mod:`nlgraph.compat.presets` for what each sets).
            in_channels (int): C.
            **overrides: any constructor argument, replacing the preset's value.
        """
        return cls(in_channels, **preset_kwargs(name, in_channels, cls.dims, overrides))

    @classmethod
    def from_reference(
        cls,
        state_dict: Mapping[str, Any],
        layout: str,
        *,
        mode: str | None = None,
        sub_sample: bool | None = None,
        **overrides: Any,
    ) -> Self:
        """A block holding the weights of a public implementation's state_dict.

        See :func:`nlgraph.compat.from_reference` for the layouts and their semantics.
        """
        return _from_reference(  # type: ignore[return-value]
            state_dict, layout, dims=cls.dims, mode=mode, sub_sample=sub_sample, **overrides
        )

    def to_reference(self, layout: str, **kwargs: Any) -> dict[str, Tensor]:
        """This block's weights as a state_dict in a public layout (exact round trip).

        See :func:`nlgraph.compat.to_reference`.
        """
        return _to_reference(self, layout, **kwargs)

    def extra_repr(self) -> str:
        parts = [f"{self.in_channels}", f"{self.inter_channels}"]
        current = dict(
            mode=self.mode, sub_sample=self.sub_sample,
            pool_size=None if self.pool_size == self.default_pool_size else self.pool_size,
            pool_placement=self.pool_placement, scale=self.scale,
            norm="batch" if self.norm is not None else None, zero_init=self.zero_init,
            out_bias=self.out_bias, weight_init=self.weight_init,
            norm_eps=self.norm.eps if self.norm is not None else 1e-5,
            norm_momentum=self.norm.momentum if self.norm is not None else 0.1,
            graph="full" if isinstance(self.graph, Full) else self.graph, latent=self.latent,
            backend=self.backend,
        )  # fmt: skip
        for key, value in current.items():
            if value != _DEFAULTS[key]:
                parts.append(f"{key}={value}")
        return ", ".join(parts)


_DOC = NonLocalBlockNd.__doc__ or ""


class NonLocalBlock1d(NonLocalBlockNd):
    __doc__ = _DOC.replace("``dims``-D", "1-D (sequence)") + (
        "\n    Example:\n        >>> NonLocalBlock1d(16)(torch.randn(2, 16, 50)).shape\n"
        "        torch.Size([2, 16, 50])\n"
    )
    dims = 1
    default_pool_size = (2,)


class NonLocalBlock2d(NonLocalBlockNd):
    __doc__ = _DOC.replace("``dims``-D", "2-D (image)") + (
        "\n    Example:\n        >>> NonLocalBlock2d(64)(torch.randn(2, 64, 16, 16)).shape\n"
        "        torch.Size([2, 64, 16, 16])\n"
    )
    dims = 2
    default_pool_size = (2, 2)


class NonLocalBlock3d(NonLocalBlockNd):
    __doc__ = _DOC.replace("``dims``-D", "3-D (video)") + (
        "\n    Example:\n        >>> NonLocalBlock3d(32)(torch.randn(1, 32, 4, 8, 8)).shape\n"
        "        torch.Size([1, 32, 4, 8, 8])\n"
    )
    dims = 3
    default_pool_size = (1, 2, 2)


register_block_classes(
    NonLocalBlockNd, {1: NonLocalBlock1d, 2: NonLocalBlock2d, 3: NonLocalBlock3d}
)
