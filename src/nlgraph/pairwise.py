r"""The four pairwise functions of the non-local block and their normalisation.

Wang et al., "Non-local Neural Networks", CVPR 2018, https://arxiv.org/abs/1711.07971.

A pairwise function is two small things: a score :math:`f(q_i, k_j)` on an edge and a
per-query normaliser :math:`C_i`:

.. math::
    y_i = \frac{1}{C_i} \sum_{j \in N(i)} f(q_i, k_j)\, v_j

=====================  ==========================================  ===========================
mode                   :math:`f(q_i, k_j)`                         :math:`C_i`
=====================  ==========================================  ===========================
``gaussian``           :math:`\exp(x_i \cdot x_j)` (raw input)     :math:`\sum_{j\in N(i)} f`
``embedded_gaussian``  :math:`\exp(s\, \theta_i \cdot \phi_j)`     :math:`\sum_{j\in N(i)} f`
``dot_product``        :math:`\theta_i \cdot \phi_j`               :math:`|N(i)|`
``concatenation``      :math:`\mathrm{ReLU}(u\cdot\theta_i + w\cdot\phi_j)`  :math:`|N(i)|`
=====================  ==========================================  ===========================

On the full graph :math:`|N(i)| = N'`, the number of keys after sub-sampling, which is what
every public implementation divides by. Kernels (:mod:`nlgraph.ops.kernels`) only enumerate
edges and pair their operands: the *raw interaction* of an edge is :math:`q_i \cdot k_j`, or
:math:`a_i + b_j` for concatenation (:meth:`Pairwise.operands` gives the scalar halves
:math:`a_i = u\cdot\theta_i`, :math:`b_j = w\cdot\phi_j`). This module turns raw interactions
into edge logits (:func:`edge_logits`) and names the normaliser (:attr:`Pairwise.normaliser`);
the normalisation itself is the one shared primitive of ``nlgraph.ops._segment``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._validate import check_choice

__all__ = [
    "MODES",
    "SOFTMAX_MODES",
    "Pairwise",
    "check_scale_mode",
    "edge_logits",
    "edge_logits_backward",
    "normaliser",
    "resolve_scale",
]

#: The four pairwise functions, in the paper's order.
MODES: tuple[str, ...] = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")
#: Modes normalised by a softmax over the neighbours (the others divide by the neighbour count).
SOFTMAX_MODES: tuple[str, ...] = ("gaussian", "embedded_gaussian")


def normaliser(mode: str) -> str:
    """``"softmax"`` for the Gaussian modes, ``"mean"`` (division by |N(i)|) for the others."""
    return "softmax" if mode in SOFTMAX_MODES else "mean"


def edge_logits(mode: str, scale: float, raw: Tensor) -> Tensor:
    r"""Edge scores from raw interactions, any shape.

    ``raw`` is :math:`q_i\cdot k_j` (:math:`a_i + b_j` for concatenation); the result is
    :math:`s \cdot raw` (softmax modes; ``scale`` = s), :math:`raw` (dot product) or
    :math:`\mathrm{ReLU}(raw)` (concatenation).
    """
    if mode == "concatenation":
        return torch.relu(raw)
    if mode in SOFTMAX_MODES and scale != 1.0:
        return raw * scale
    return raw


def edge_logits_backward(mode: str, scale: float, grad: Tensor, raw: Tensor) -> Tensor:
    """The gradient of :func:`edge_logits` with respect to ``raw``, given ``grad`` of its output
    (the ReLU's derivative at 0 is taken as 0)."""
    if mode == "concatenation":
        return grad * (raw > 0).to(grad.dtype)
    if mode in SOFTMAX_MODES and scale != 1.0:
        return grad * scale
    return grad


def resolve_scale(scale: str | float | None, in_channels: int, inter_channels: int) -> float:
    r"""Turn a ``scale`` option into the factor that multiplies the embedded-Gaussian logits.

    Args:
        scale (str, float or None): ``None`` (no temperature, factor 1), ``"inner"``
            (:math:`C'^{-1/2}`, Caffe2/SlowFast/mmcv), ``"input"`` (:math:`C^{-1/2}`, timm) or a
            positive float used as is.
        in_channels (int): C, the block's input width.
        inter_channels (int): C', the block's inner width.

    Returns:
        float: the factor s in :math:`\exp(s\,\theta_i\cdot\phi_j)`.
    """
    if scale is None:
        return 1.0
    if isinstance(scale, str):
        check_choice("scale", scale, ("inner", "input"))
        return (inter_channels if scale == "inner" else in_channels) ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(
            "scale: expected None, 'inner', 'input' or a positive float, "
            f"got {type(scale).__name__} {scale!r}"
        )
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale: expected a positive finite float, got {scale!r}")
    return float(scale)


def check_scale_mode(scale: str | float | None, mode: str) -> None:
    """``ValueError`` unless ``scale`` is None or ``mode`` is ``"embedded_gaussian"``: a
    temperature only multiplies the embedded-Gaussian logits (as in every reference)."""
    if scale is not None and mode != "embedded_gaussian":
        raise ValueError(
            f"scale: expected None for mode {mode!r} (a temperature only multiplies the "
            f"embedded-Gaussian logits), got {scale!r}"
        )


@dataclass(frozen=True, eq=False)
class Pairwise:
    r"""A pairwise function :math:`f` and its normaliser :math:`C` (see the module docstring).

    Args:
        mode (str): ``"gaussian"``, ``"embedded_gaussian"``, ``"dot_product"`` or
            ``"concatenation"``.
        scale (float): factor s multiplying the logits of the softmax modes (default ``1.0``).
            The block passes 1.0 for ``"gaussian"``, as every reference does.
        concat_weight (Tensor, optional): the ``concatenation`` projection :math:`[u; w]` of
            shape (2C',) (query half first), i.e. the flattened weight of the 2C'→1 1x1 conv.
            Required for ``"concatenation"``, ignored otherwise.

    Shapes:
        - queries q: (B, N, C'), keys k: (B, N', C')
        - :meth:`dense_scores`: (B, N, N')
    """

    mode: str
    scale: float = 1.0
    concat_weight: Tensor | None = None

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        if self.mode == "concatenation" and self.concat_weight is None:
            raise ValueError(
                "concat_weight: expected a (2C',) tensor for mode 'concatenation', got None"
            )

    @property
    def is_softmax(self) -> bool:
        """True for the two Gaussian modes (softmax normaliser), False for the count modes."""
        return self.mode in SOFTMAX_MODES

    @property
    def normaliser(self) -> str:
        """``"softmax"`` or ``"mean"``: how the edge logits of a query are normalised."""
        return normaliser(self.mode)

    @property
    def logit_scale(self) -> float:
        """The factor on the raw logits: ``scale`` for the softmax modes, 1 otherwise."""
        return self.scale if self.is_softmax else 1.0

    def concat_terms(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        r"""The two halves :math:`a_i = u\cdot q_i` (B, N) and :math:`b_j = w\cdot k_j` (B, N')."""
        assert self.concat_weight is not None  # guaranteed by __post_init__
        u, w = self.concat_weight.to(q.dtype).chunk(2)
        return q @ u, k @ w

    def operands(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """What the kernels pair on each edge: ``(q, k)``, or for concatenation the scalar
        halves ``(a, b)`` of :meth:`concat_terms` (their raw interaction is a sum, not a dot)."""
        if self.mode == "concatenation":
            return self.concat_terms(q, k)
        return q, k

    def edge_logits(self, raw: Tensor) -> Tensor:
        """:func:`edge_logits` with this pairwise function's mode and scale."""
        return edge_logits(self.mode, self.logit_scale, raw)

    def dense_scores(self, q: Tensor, k: Tensor) -> Tensor:
        r"""All-pairs scores before normalisation, (B, N, N').

        Logits :math:`s\,q_i\cdot k_j` for the softmax modes, :math:`q_i\cdot k_j` for the dot
        product and :math:`\mathrm{ReLU}(a_i + b_j)` for concatenation. Builds an N×N' tensor:
        used for ``return_attention`` and small problems only.
        """
        if self.mode == "concatenation":
            a, b = self.concat_terms(q, k)
            return self.edge_logits(a.unsqueeze(-1) + b.unsqueeze(-2))
        return self.edge_logits(q @ k.transpose(-1, -2))

    def normalise_dense(self, scores: Tensor) -> Tensor:
        """Normalise all-pairs scores over the keys (last axis): softmax, or division by N'
        (the shared normalisation of ``nlgraph.ops._segment``; an all -inf row gives zeros)."""
        from .ops._segment import normalise_rows  # ops imports this module

        return normalise_rows(self.normaliser, scores)
