r"""Latent-node (low-rank) keys and values for the non-local blocks, after GloRe.

Chen et al., "Graph-Based Global Reasoning Networks", CVPR 2019,
https://arxiv.org/abs/1811.12814. Instead of attending to the N' key positions, every query
attends to M learned latent nodes, each a weighted sum of the key positions:

.. math::
    \tilde k_m = \frac{1}{Z} \sum_{j=1}^{N'} B_{jm}\, \phi_j, \qquad
    \tilde v_m = \frac{1}{Z} \sum_{j=1}^{N'} B_{jm}\, g_j, \qquad
    y_i = \frac{1}{C_i} \sum_{m=1}^{M} f(\theta_i, \tilde k_m)\, \tilde v_m

where :math:`B = W_B x + b_B` is the (N', M) projection, a plain linear 1x1 convolution of the
input with no softmax (as GloRe's B = θ(X)), and Z = N' with ``normalize=True`` (GloRe's optional
normalisation by the number of positions), else 1. The aggregation is the full graph over M keys,
so it costs O(N · M · C') time and O(N · M) memory (the (B, N, M) weights), instead of O(N · N').
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .._validate import check_positive_int, describe

__all__ = ["Latent"]


@dataclass(frozen=True, repr=False)
class Latent:
    r"""Keys and values are M learned latent nodes (GloRe-style low-rank non-local block).

    Inside ``NonLocalBlock{1,2,3}d(..., graph=Latent(M))`` the block owns a projection
    ``latent_proj`` (a 1x1 ConvNd(C, M) with bias) giving M weights per key position, builds the
    latent keys and values with :meth:`project` and aggregates over the full graph of the M
    latent nodes (see the module docstring for the math).

    Args:
        num_nodes (int): M >= 1, the number of latent nodes.
        normalize (bool): divide the projected keys and values by N', the number of key
            positions, so that their scale (and the attention logits) does not grow with the map
            size. GloRe's ``normalize`` option, off by default there; on by default here because
            the latent keys enter exponentiated logits. (default: ``True``)

    Shapes:
        - :meth:`project` weights (B, N', M), key (B, N', Cq), value (B, N', Cv)
          → latent key (B, M, Cq), latent value (B, M, Cv)

    Raises:
        TypeError: "num_nodes: expected a positive int, got float 2.0"
        ValueError: "num_nodes: expected a positive int, got 0"

    Example:
        >>> k, v = Latent(4).project(torch.randn(2, 10, 4), torch.randn(2, 10, 8),
        ...                          torch.randn(2, 10, 3))
        >>> k.shape, v.shape
        (torch.Size([2, 4, 8]), torch.Size([2, 4, 3]))
    """

    num_nodes: int
    normalize: bool = True

    def __post_init__(self) -> None:
        check_positive_int("num_nodes", self.num_nodes)
        if not isinstance(self.normalize, bool):
            raise TypeError(
                f"normalize: expected a bool, got {type(self.normalize).__name__} "
                f"{self.normalize!r}"
            )

    def __repr__(self) -> str:
        extra = "" if self.normalize else ", normalize=False"
        return f"Latent(num_nodes={self.num_nodes}{extra})"

    def project(self, weights: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        r"""Latent keys :math:`\tilde k = B^\top \phi / Z` and values :math:`\tilde v = B^\top g / Z`.

        Args:
            weights (Tensor): B, (B, N', M), the projection weights of every key position.
            key (Tensor): φ, (B, N', Cq).
            value (Tensor): g, (B, N', Cv).

        Returns:
            tuple[Tensor, Tensor]: (B, M, Cq) and (B, M, Cv).
        """
        if weights.dim() != 3 or weights.shape[-1] != self.num_nodes:
            raise ValueError(
                f"weights: expected shape (B, N', {self.num_nodes}), got {describe(weights)}"
            )
        if key.shape[:2] != weights.shape[:2] or value.shape[:2] != weights.shape[:2]:
            raise ValueError(
                "weights, key, value: expected the same (B, N') leading dims, got\n"
                f"  weights: {describe(weights)}\n  key: {describe(key)}\n"
                f"  value: {describe(value)}"
            )
        bt = weights.transpose(1, 2)
        if self.normalize:
            bt = bt / weights.shape[1]
        return bt @ key, bt @ value
