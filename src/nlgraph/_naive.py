r"""The naive non-local block, written the way the public PyTorch ports write it.

Private module: :class:`NaiveNonLocal` is the *baseline* that the demo (``python -m nlgraph
demo``) and ``benchmarks/dense.py`` compare nlgraph against, not a reference for the tests
(those use an independent fp64 einsum reference). It follows the AlexHex7/mmcv formulation op
by op: 1x1 convolutions θ, φ, g; reshape/permute to (B, N, C') and (B, C', N'); one batched
matmul to the full (B, N, N') affinity; softmax over the keys or division by N'; for
concatenation, θ and φ repeated to (B, C', N, N'), concatenated to (B, 2C', N, N') and projected
by a 2C'→1 1x1 convolution followed by ReLU; a second matmul with g; :math:`W_z`, the norm and
the residual sum:

.. math::
    z = x + \mathrm{Norm}\bigl(W_z\,(A\,g)\bigr), \qquad
    A = \mathrm{normalise}_j\, f(\theta_i, \phi_j) \in \mathbb{R}^{N \times N'}

Its memory is O(N·N') (O(2C'·N·N') for concatenation), which is the point of the comparison.
:func:`naive_from_block` builds one with the weights and options of an nlgraph block, so both
compute the same function.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .pairwise import MODES, SOFTMAX_MODES

if TYPE_CHECKING:
    from .nn.nonlocal_block import NonLocalBlockNd

__all__ = ["NaiveNonLocal", "concat_tensor_bytes", "naive_from_block"]

_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


class NaiveNonLocal(nn.Module):
    r"""Non-local block through the full (B, N, N') affinity, as in the public ports.

    Wang et al., "Non-local Neural Networks", CVPR 2018, https://arxiv.org/abs/1711.07971.
    Usually built by :func:`naive_from_block`; the submodules are plain copies of the block's.

    Args:
        g (nn.Module): 1x1 conv C→C'.
        w_z (nn.Module): 1x1 conv C'→C.
        theta, phi (nn.Module, optional): 1x1 convs C→C'; ``None`` in the Gaussian mode.
        norm (nn.Module, optional): the norm after :math:`W_z`, or ``None``.
        concat_weight (Tensor, optional): (2C',) weight of the concatenation projection, θ half
            first; required for ``mode="concatenation"``.
        dims (int): spatial dimensions, 1, 2 or 3.
        mode (str): one of :data:`nlgraph.pairwise.MODES`.
        sub_sample (bool): max-pool keys and values with kernel = stride = ``pool_size``.
        pool_size (tuple of int): the pooling window.
        pool_placement (str): ``"after"`` (pool φ(x), g(x)) or ``"before"`` (project pooled x).
        scale (float): factor multiplying the logits of the softmax modes. (default: ``1.0``)
        query_chunk (int, optional): compute the affinity for this many query rows at a time
            (exact: every normalisation is per row). ``None`` builds it whole, as the public
            ports do; set it to bound memory when the naive block serves as a slow reference.
            (default: ``None``)

    Shapes:
        - input x: (B, C, \*S), N = prod(S); output z: same shape
        - affinity: (B, N, N'), or (B, chunk, N') with ``query_chunk``
    """

    def __init__(
        self,
        g: nn.Module,
        w_z: nn.Module,
        theta: nn.Module | None,
        phi: nn.Module | None,
        norm: nn.Module | None,
        concat_weight: Tensor | None,
        *,
        dims: int,
        mode: str,
        sub_sample: bool,
        pool_size: tuple[int, ...],
        pool_placement: str = "after",
        scale: float = 1.0,
        query_chunk: int | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {', '.join(map(repr, MODES))}, got {mode!r}")
        self.dims, self.mode, self.sub_sample = dims, mode, sub_sample
        self.pool_size, self.pool_placement = tuple(pool_size), pool_placement
        self.scale, self.query_chunk = float(scale), query_chunk
        self.g, self.w_z, self.theta, self.phi, self.norm = g, w_z, theta, phi, norm
        self.concat_project: nn.Sequential | None = None
        if mode == "concatenation":
            if concat_weight is None:
                raise ValueError("concat_weight: expected a (2C',) tensor, got None")
            width = concat_weight.numel()
            conv = nn.Conv2d(
                width, 1, 1, bias=False, device=concat_weight.device, dtype=concat_weight.dtype
            )
            with torch.no_grad():
                conv.weight.copy_(concat_weight.detach().reshape(1, width, 1, 1))
            self.concat_project = nn.Sequential(conv, nn.ReLU())

    def _pool(self, t: Tensor) -> Tensor:
        return _MAXPOOL[self.dims](t, kernel_size=self.pool_size, stride=self.pool_size)

    def _affinity(self, theta_x: Tensor, phi_x: Tensor) -> Tensor:
        """Normalised weights (B, n, N') for queries (B, n, Cq) and keys (B, Cq, N')."""
        n_keys = phi_x.shape[-1]
        if self.mode == "concatenation":
            assert self.concat_project is not None
            n = theta_x.shape[1]
            # (B, C', n, 1) and (B, C', 1, N') repeated to (B, C', n, N'), then (B, 2C', n, N').
            t = theta_x.permute(0, 2, 1).unsqueeze(-1).repeat(1, 1, 1, n_keys)
            p = phi_x.unsqueeze(2).repeat(1, 1, n, 1)
            f = self.concat_project(torch.cat([t, p], dim=1))
            return f.view(f.shape[0], n, n_keys) / n_keys
        f = torch.matmul(theta_x, phi_x)
        if self.mode in SOFTMAX_MODES:
            if self.scale != 1.0:
                f = f * self.scale
            return F.softmax(f, dim=-1)
        return f / n_keys

    def forward(self, x: Tensor) -> Tensor:
        """z = x + Norm(W_z (A g)) computed through the explicit affinity A."""
        b = x.shape[0]
        before = self.sub_sample and self.pool_placement == "before"
        after = self.sub_sample and not before
        x_kv = self._pool(x) if before else x
        g_x = self.g(x_kv)
        g_x = self._pool(g_x) if after else g_x
        inter = g_x.shape[1]
        g_x = g_x.view(b, inter, -1).permute(0, 2, 1)  # (B, N', C')
        if self.mode == "gaussian":
            theta_x = x.view(b, x.shape[1], -1).permute(0, 2, 1)  # (B, N, C)
            phi_x = (self._pool(x) if self.sub_sample else x).view(b, x.shape[1], -1)
        else:
            assert self.theta is not None and self.phi is not None
            theta_x = self.theta(x)
            theta_x = theta_x.view(b, theta_x.shape[1], -1).permute(0, 2, 1)  # (B, N, C')
            phi_x = self.phi(x_kv)
            phi_x = self._pool(phi_x) if after else phi_x
            phi_x = phi_x.view(b, phi_x.shape[1], -1)  # (B, C', N')
        n = theta_x.shape[1]
        chunk = self.query_chunk or n
        pieces = [
            torch.matmul(self._affinity(theta_x[:, i : i + chunk], phi_x), g_x)
            for i in range(0, n, chunk)
        ]
        y = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
        y = y.permute(0, 2, 1).contiguous().view(b, inter, *x.shape[2:])
        w_y = self.w_z(y)
        if self.norm is not None:
            w_y = self.norm(w_y)
        return w_y + x


def naive_from_block(block: NonLocalBlockNd, *, query_chunk: int | None = None) -> NaiveNonLocal:
    """A :class:`NaiveNonLocal` computing the same function as an nlgraph non-local block.

    The block's θ, φ, g, :math:`W_z` and norm are deep-copied (weights, buffers, train/eval
    mode, dtype and device included); the concatenation weight becomes the 2C'→1 1x1 conv of
    the public ports. Later changes to either module do not affect the other.

    Args:
        block (NonLocalBlock1d, NonLocalBlock2d or NonLocalBlock3d): the block to mirror.
        query_chunk (int, optional): see :class:`NaiveNonLocal`. (default: ``None``)

    Returns:
        NaiveNonLocal: in the same train/eval mode as ``block``.

    Example:
        >>> block = NonLocalBlock2d(16, zero_init=False)
        >>> x = torch.randn(2, 16, 8, 8)
        >>> torch.allclose(block(x), naive_from_block(block)(x), atol=1e-5)
        True
    """
    if block.graph != "full":
        raise NotImplementedError(f"block.graph: expected 'full', got {block.graph!r}")
    concat_weight = None
    if block.concat_project is not None:  # mode "concatenation"
        concat_weight = block.concat_project.weight.detach().reshape(-1).clone()
    pw = block.pairwise()
    naive = NaiveNonLocal(
        copy.deepcopy(block.g),
        copy.deepcopy(block.w_z),
        copy.deepcopy(block.theta),
        copy.deepcopy(block.phi),
        copy.deepcopy(block.norm),
        concat_weight,
        dims=block.dims,
        mode=block.mode,
        sub_sample=block.sub_sample,
        pool_size=block.pool_size,
        pool_placement=block.pool_placement,
        scale=pw.scale if pw.is_softmax else 1.0,
        query_chunk=query_chunk,
    )
    return naive.train(block.training)


def concat_tensor_bytes(n: int, n_keys: int, inter_channels: int, itemsize: int = 4) -> int:
    """Bytes of the (B=1) 2C'×N×N' tensor the naive concatenation builds (for skip decisions)."""
    return 2 * inter_channels * n * n_keys * itemsize
