"""Edge sets (full, k-NN, window, user edge_index), builders and conversions."""

from .base import COOGraph, RegularGraph
from .window import TemporalGroups, Window, window_offsets

__all__ = ["COOGraph", "RegularGraph", "TemporalGroups", "Window", "window_offsets"]
