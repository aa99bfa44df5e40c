"""nlgraph: graph-based non-local (relational) reasoning layers for PyTorch."""

from . import compat, graphs, ops, pairwise
from .attention import Attention
from .compat import LAYOUTS, from_reference, to_reference
from .nn import NonLocalBlock1d, NonLocalBlock2d, NonLocalBlock3d, NonLocalConv
from .ops import nonlocal_aggregate
from .pairwise import Pairwise

__version__ = "0.1.0"

__all__ = [
    "LAYOUTS",
    "Attention",
    "NonLocalBlock1d",
    "NonLocalBlock2d",
    "NonLocalBlock3d",
    "NonLocalConv",
    "Pairwise",
    "__version__",
    "compat",
    "from_reference",
    "graphs",
    "nonlocal_aggregate",
    "ops",
    "pairwise",
    "to_reference",
]
