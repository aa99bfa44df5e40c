"""Edge sets (full, k-NN, window, user edge_index), builders and conversions."""

from .base import COOGraph, RegularGraph
from .feature_knn import KNN
from .knn import knn, knn_graph
from .window import TemporalGroups, Window, window_offsets

__all__ = [
    "KNN",
    "COOGraph",
    "RegularGraph",
    "TemporalGroups",
    "Window",
    "knn",
    "knn_graph",
    "window_offsets",
]
