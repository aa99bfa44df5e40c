"""nlgraph: graph-based non-local (relational) reasoning layers for PyTorch."""

from . import compat, graphs, nodes, ops, pairwise
from .attention import Attention
from .compat import LAYOUTS, from_reference, to_reference
from .nn import (
    GlobalReasoning,
    NonLocalBlock1d,
    NonLocalBlock2d,
    NonLocalBlock3d,
    NonLocalConv,
    ObjectRelation,
)
from .ops import nonlocal_aggregate
from .pairwise import Pairwise

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
    "__version__",
    "compat",
    "from_reference",
    "graphs",
    "nodes",
    "nonlocal_aggregate",
    "ops",
    "pairwise",
    "to_reference",
]
