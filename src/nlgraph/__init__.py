"""nlgraph: graph-based non-local (relational) reasoning layers for PyTorch.

``import nlgraph`` does not import torch_geometric: the PyG layer :class:`NonLocalConv`, the
transforms (:mod:`nlgraph.transforms`) and the ``Data``/``Batch`` conversions load it when first
used.
"""

from typing import TYPE_CHECKING, Any

from . import compat, graphs, nodes, ops, pairwise
from .attention import Attention
from .compat import LAYOUTS, from_reference, to_reference
from .nn import (
    GlobalReasoning,
    NonLocalBlock1d,
    NonLocalBlock2d,
    NonLocalBlock3d,
    ObjectRelation,
    RelationNetwork,
)
from .ops import nonlocal_aggregate
from .pairwise import Pairwise

if TYPE_CHECKING:
    from . import transforms
    from .nn.nonlocal_conv import NonLocalConv

__version__ = "0.1.0"

__all__ = [
    "LAYOUTS",
    "Attention",
    "GlobalReasoning",
    "NonLocalBlock1d",
    "NonLocalBlock2d",
    "NonLocalBlock3d",
    "NonLocalConv",
    "ObjectRelation",
    "Pairwise",
    "RelationNetwork",
    "__version__",
    "compat",
    "from_reference",
    "graphs",
    "nodes",
    "nonlocal_aggregate",
    "ops",
    "pairwise",
    "to_reference",
    "transforms",
]


def __getattr__(name: str) -> Any:
    if name == "NonLocalConv":  # imports torch_geometric
        from .nn.nonlocal_conv import NonLocalConv

        return NonLocalConv
    if name == "transforms":
        import importlib

        return importlib.import_module(".transforms", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
