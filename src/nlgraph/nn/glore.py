r"""The Global Reasoning unit (GloRe): reasoning among M latent nodes instead of N positions."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validate import (
    NORMS,
    check_async,
    check_channels_dtype_device,
    check_choice,
    check_float_tensor,
    check_positive_int,
    describe,
    factory_kwargs,
)

__all__ = ["GlobalReasoning"]

GRAPH_FORMS: tuple[str, ...] = ("code", "paper")
_DEFAULTS: dict[str, Any] = dict(
    normalize=False, graph_form="code", norm="batch", zero_init=True, norm_eps=1e-4,
    norm_momentum=0.1,
)  # fmt: skip


class GlobalReasoning(nn.Module):
    r"""Global Reasoning unit of Chen et al., "Graph-Based Global Reasoning Networks", CVPR 2019,
    https://arxiv.org/abs/1811.12814, on 1-D, 2-D or 3-D feature maps or on PyG node features.

    .. math::
        \Phi = X W_\phi^\top + b_\phi, \quad B = X W_\theta^\top + b_\theta, \quad
        V = \tfrac{1}{Z} B^\top \Phi,

        H = V \pm (A_g V + b_A \mathbf 1^\top), \quad
        Z_g = \mathrm{ReLU}(H)\, W_g^\top, \quad
        Y = B\, Z_g, \quad
        \mathrm{out} = X + \mathrm{Norm}(Y W_e^\top)

    per sample (or per graph), with X (N, C) the N positions (or nodes) as rows, Φ (N, C') the
    reduced states, B (N, M) the projection weights (a plain linear map, no softmax: GloRe's
    B = θ(X)), V (M, C') the latent node states (Z = N with ``normalize``, else 1), A_g (M, M) the
    learned adjacency applied across nodes (a 1-D convolution over the node axis, with bias
    b_A), W_g (C', C') the state update applied across channels (no bias), Y (N, C') the reverse
    projection with the same B, and W_e (C, C') the extension back to C channels (no bias),
    followed by BatchNorm and the residual. Cost O(N · M · C' + N · C · (C' + M)); no N × N
    tensor is formed.

    **Identity term.** The paper writes the graph convolution as :math:`Z = ((I - A_g) V) W_g`
    (Laplacian smoothing); the official code computes ``h = conv1(V) + V``, i.e.
    :math:`(I + A_g) V` plus the node conv's bias, and puts a ReLU before the state update
    ``conv2``. ``graph_form="code"`` (default) implements the code's plus sign, ``"paper"`` the
    minus sign; both keep the ReLU between the two convolutions and the bias of the node conv.
    Since A_g is learned, the two are reparameterisations of each other (A_g → −A_g, b_A → −b_A)
    and differ only for given weights.

    **Batches of graphs.** For node features ``x`` (N, C) with a ``batch`` vector, each graph
    has its own M latent nodes: :math:`V_g = \frac{1}{Z_g}\sum_{i: batch_i = g} B_i^\top \Phi_i`
    (segment sums with ``index_add``, Z_g = number of nodes of graph g with ``normalize``), the
    graph convolution runs on each graph's (M, C') block, and node i reads back from its own
    graph, :math:`Y_i = B_i Z_{batch_i}`. Graphs never mix, except through the train-mode
    BatchNorm statistics (as in every BatchNorm). The segment sum forms the per-node outer
    products B_i Φ_iᵀ, O(N · M · C') memory.

    Args:
        in_channels (int): C, channels of the input.
        num_nodes (int): M, the number of latent nodes.
        node_channels (int, optional): C', the width of the node states.
            (default: ``2 * num_nodes``, the official ratio ``num_s = 2 * num_mid``)
        normalize (bool): divide V by the number of positions N (per graph for node input): the
            official ``normalize`` option, recommended when the input size varies.
            (default: ``False``, as the official unit)
        graph_form (str): ``"code"`` (:math:`V + A_g V`) or ``"paper"`` (:math:`V - A_g V`), see
            above. (default: ``"code"``)
        norm (str, optional): ``"batch"`` (BatchNorm over positions and samples, the official
            ``blocker``) or ``None``. (default: ``"batch"``)
        zero_init (bool): zero the BatchNorm's weight and bias (or W_e when ``norm=None``) so
            that the unit is the identity at construction. The official code comments that the
            BatchNorm "should be zero initialized" but its initialiser sets the weight to 1; we
            follow the comment, as nlgraph's non-local blocks do. (default: ``True``)
        norm_eps (float): epsilon of the BatchNorm. (default: ``1e-4``, the official value)
        norm_momentum (float): momentum of the BatchNorm. (default: ``0.1``)
        device (torch.device, optional): where every parameter is created. (default: ``None``)
        dtype (torch.dtype, optional): the dtype of every parameter. (default: ``None``)

    Shapes:
        - input x: (B, C, \*S) with 1 to 3 spatial dims, N = prod(S) positions; or (N, C) node
          features with an optional ``batch`` (N,) int64 in [0, G)
        - output: same shape as x

    Attributes:
        phi: Linear(C, C') with bias (the reduce conv; official ``conv_state``).
        theta: Linear(C, M) with bias (the projection B; official ``conv_proj``).
        adjacency: Linear(M, M) with bias (A_g, the node-wise conv; official ``gcn.conv1``).
        state_update: Linear(C', C', bias=False) (W_g; official ``gcn.conv2``).
        extend: Linear(C', C, bias=False) (W_e; official ``conv_extend``).
        norm: BatchNorm1d(C) or ``None`` (official ``blocker``).

    The 1x1 convolutions are Linear layers on channels-last rows, so one module serves every
    number of spatial dims; an official ``GloRe_Unit`` state_dict maps onto them by reshaping
    (out, in, 1, …) weights to (out, in), under the names above.

    Raises:
        ValueError: a non-positive width, an unknown option, an input that is neither 2-D nor 3-
            to 5-D, a channel mismatch, or a bad ``batch``.
        TypeError: an integer or mismatched input dtype, or a non-integer ``batch``.

    Example:
        >>> GlobalReasoning(64, 16)(torch.randn(2, 64, 14, 14)).shape
        torch.Size([2, 64, 14, 14])
    """

    def __init__(
        self,
        in_channels: int,
        num_nodes: int,
        node_channels: int | None = None,
        *,
        normalize: bool = False,
        graph_form: str = "code",
        norm: str | None = "batch",
        zero_init: bool = True,
        norm_eps: float = 1e-4,
        norm_momentum: float = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("num_nodes", num_nodes)
        if node_channels is None:
            node_channels = 2 * num_nodes
        check_positive_int("node_channels", node_channels)
        check_choice("graph_form", graph_form, GRAPH_FORMS)
        check_choice("norm", norm, NORMS)
        if not (isinstance(norm_eps, (int, float)) and norm_eps > 0):
            raise ValueError(f"norm_eps: expected a positive float, got {norm_eps!r}")
        self.in_channels = in_channels
        self.num_nodes = num_nodes
        self.node_channels = node_channels
        self.normalize = bool(normalize)
        self.graph_form = graph_form
        self.zero_init = bool(zero_init)

        fk = factory_kwargs(device, dtype)
        self.phi = nn.Linear(in_channels, node_channels, **fk)
        self.theta = nn.Linear(in_channels, num_nodes, **fk)
        self.adjacency = nn.Linear(num_nodes, num_nodes, **fk)
        self.state_update = nn.Linear(node_channels, node_channels, bias=False, **fk)
        self.extend = nn.Linear(node_channels, in_channels, bias=False, **fk)
        self.norm = (
            nn.BatchNorm1d(in_channels, eps=norm_eps, momentum=norm_momentum, **fk)
            if norm == "batch"
            else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default init for every layer, then ``zero_init``."""
        for m in (self.phi, self.theta, self.adjacency, self.state_update, self.extend):
            m.reset_parameters()
        if self.norm is not None:
            self.norm.reset_parameters()
        if self.zero_init:
            target = self.norm if self.norm is not None else self.extend
            nn.init.zeros_(target.weight)
            if target.bias is not None:
                nn.init.zeros_(target.bias)

    # ------------------------------------------------------------------ pieces
    def reason(self, v: Tensor) -> Tensor:
        r"""The graph convolution on latent nodes: ReLU(V ± (A_g V + b_A)) W_gᵀ.

        Args:
            v (Tensor): V, (G, M, C') node states of G samples or graphs.

        Returns:
            Tensor: (G, M, C').
        """
        # The adjacency acts across nodes: move the node axis last for the Linear.
        av = self.adjacency(v.transpose(1, 2)).transpose(1, 2)
        h = v + av if self.graph_form == "code" else v - av
        return self.state_update(F.relu(h))

    def _check_input(self, x: Any, batch: Any) -> None:
        check_float_tensor("x", x)
        if x.dim() not in (2, 3, 4, 5):
            raise ValueError(
                "x: expected a (B, C, *S) map with 1 to 3 spatial dims or (N, C) node features, "
                f"got {describe(x)}"
            )
        check_channels_dtype_device("x", x, self.in_channels, self.phi.weight, "the unit's")
        if batch is None:
            return
        if x.dim() != 2:
            got = describe(batch) if isinstance(batch, Tensor) else type(batch).__name__
            raise ValueError(f"batch: expected None for a (B, C, *S) map input, got {got}")
        if not isinstance(batch, Tensor) or batch.dtype != torch.long:
            got = describe(batch) if isinstance(batch, Tensor) else type(batch).__name__
            raise TypeError(f"batch: expected an int64 tensor of shape (N,), got {got}")
        if batch.shape != (x.shape[0],) or batch.device != x.device:
            raise ValueError(
                f"batch: expected shape ({x.shape[0]},) on device {x.device}, got {describe(batch)}"
            )

    # ------------------------------------------------------------------ forward
    def forward(
        self, x: Tensor, batch: Tensor | None = None, num_graphs: int | None = None
    ) -> Tensor:
        """GloRe on a map (B, C, *S) or on node features (N, C) (see the class docstring).

        Args:
            x (Tensor): (B, C, \\*S) or (N, C).
            batch (Tensor, optional): (N,) graph index of every node (node input only); ``None``:
                one graph. (default: ``None``)
            num_graphs (int, optional): G > ``batch.max()``; ``None`` reads ``batch.max() + 1``
                (a host sync). (default: ``None``)

        Returns:
            Tensor: same shape as ``x``.
        """
        self._check_input(x, batch)
        if x.dim() == 2:
            if batch is None:
                return self._forward_rows(x.unsqueeze(0)).squeeze(0)
            return self._forward_graphs(x, batch, num_graphs)
        rows = x.flatten(2).transpose(1, 2)  # (B, N, C)
        return self._forward_rows(rows).transpose(1, 2).reshape(x.shape)

    def _output(self, x: Tensor, y: Tensor) -> Tensor:
        """x + Norm(W_e y) for channels-last rows x (..., C), y (..., C')."""
        z = self.extend(y)
        if self.norm is not None:
            # BatchNorm1d normalises dim 1 over every other dim: (B, C, N) or (N, C).
            z = self.norm(z.transpose(1, 2)).transpose(1, 2) if z.dim() == 3 else self.norm(z)
        return x + z

    def _forward_rows(self, x: Tensor) -> Tensor:
        """Dense batch: x (B, N, C) → (B, N, C)."""
        phi, proj = self.phi(x), self.theta(x)  # (B, N, C'), (B, N, M)
        v = proj.transpose(1, 2) @ phi  # (B, M, C')
        if self.normalize:
            v = v / x.shape[1]
        y = proj @ self.reason(v)  # (B, N, C')
        return self._output(x, y)

    def _forward_graphs(self, x: Tensor, batch: Tensor, num_graphs: int | None) -> Tensor:
        """Nodes of several graphs: x (N, C), batch (N,) → (N, C)."""
        if num_graphs is None:
            num_graphs = int(batch.max()) + 1 if batch.numel() else 0
        else:
            check_positive_int("num_graphs", num_graphs)
        if batch.numel():
            low, high = torch.aminmax(batch)
            size = num_graphs
            check_async(
                (low >= 0) & (high < size),
                f"batch: expected graph indices in [0, {size})",
                lambda: ValueError(
                    f"batch: expected graph indices in [0, {size}) (num_graphs={size}), got "
                    f"values in [{int(low)}, {int(high)}]"
                ),
            )
        phi, proj = self.phi(x), self.theta(x)  # (N, C'), (N, M)
        outer = proj.unsqueeze(2) * phi.unsqueeze(1)  # (N, M, C')
        v = outer.new_zeros(num_graphs, self.num_nodes, self.node_channels)
        v = v.index_add(0, batch, outer)  # (G, M, C')
        if self.normalize:
            count = v.new_zeros(num_graphs).index_add_(0, batch, v.new_ones(batch.shape[0]))
            v = v / count.clamp(min=1).view(-1, 1, 1)
        z = self.reason(v)  # (G, M, C')
        y = (proj.unsqueeze(1) @ z.index_select(0, batch)).squeeze(1)  # (N, C')
        return self._output(x, y)

    def extra_repr(self) -> str:
        parts = [f"{self.in_channels}", f"{self.num_nodes}", f"{self.node_channels}"]
        current = dict(
            normalize=self.normalize, graph_form=self.graph_form,
            norm="batch" if self.norm is not None else None, zero_init=self.zero_init,
            norm_eps=self.norm.eps if self.norm is not None else 1e-4,
            norm_momentum=self.norm.momentum if self.norm is not None else 0.1,
        )  # fmt: skip
        parts += [f"{k}={v}" for k, v in current.items() if v != _DEFAULTS[k]]
        return ", ".join(parts)
