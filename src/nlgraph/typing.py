"""Shared type aliases (as ``torch_geometric.typing``)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

#: The four pairwise functions of Wang et al. (2018).
Mode = Literal["gaussian", "embedded_gaussian", "dot_product", "concatenation"]
#: Temperature of the embedded-Gaussian logits: none, C'^-1/2, C^-1/2, or a constant.
Scale = Literal["inner", "input"] | float | None
#: Where the key/value max-pool sits relative to the phi/g projections.
PoolPlacement = Literal["after", "before"]
#: Public weight layouts understood by :mod:`nlgraph.compat`.
Layout = Literal["alexhex7", "mmcv", "timm", "slowfast", "caffe2"]
#: A graph: only ``"full"`` (all pairs) in this release.
GraphSpec = Literal["full"]
#: ``edge_index`` of shape (2, E): row 0 source/key j, row 1 target/query i.
EdgeIndex = Tensor

__all__ = ["EdgeIndex", "GraphSpec", "Layout", "Mode", "PoolPlacement", "Scale"]
