"""Edge sets (full, k-NN, window, user edge_index), graph specs, builders and conversions."""

from .base import COOGraph, RegularGraph
from .boxes import BOX_METRICS, BoxKNN, box_geometry, box_graph, box_iou, geometry_embedding
from .convert import (
    data_to_feature_map,
    feature_map_to_data,
    from_edge_index,
    full_edge_index,
    grid_positions,
    to_edge_index,
)
from .feature_knn import KNN
from .ivf import ivf_knn
from .latent import Latent
from .point_knn import knn, knn_graph
from .recall import knn_recall
from .spec import EdgeIndex, Full, GraphContext, GraphSpec, GraphState
from .window import TemporalGroups, Window, window_offsets

__all__ = [
    "BOX_METRICS",
    "KNN",
    "BoxKNN",
    "COOGraph",
    "EdgeIndex",
    "Full",
    "GraphContext",
    "GraphSpec",
    "GraphState",
    "Latent",
    "RegularGraph",
    "box_geometry",
    "box_graph",
    "box_iou",
    "TemporalGroups",
    "Window",
    "data_to_feature_map",
    "feature_map_to_data",
    "from_edge_index",
    "full_edge_index",
    "geometry_embedding",
    "grid_positions",
    "ivf_knn",
    "knn",
    "knn_graph",
    "knn_recall",
    "to_edge_index",
    "window_offsets",
]
