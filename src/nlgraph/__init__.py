"""nlgraph: graph-based non-local (relational) reasoning layers for PyTorch."""

from . import ops, pairwise
from .attention import Attention
from .nn import NonLocalBlock1d, NonLocalBlock2d, NonLocalBlock3d
from .ops import nonlocal_aggregate
from .pairwise import Pairwise

__version__ = "0.1.0"

__all__ = [
    "Attention",
    "NonLocalBlock1d",
    "NonLocalBlock2d",
    "NonLocalBlock3d",
    "Pairwise",
    "__version__",
    "nonlocal_aggregate",
    "ops",
    "pairwise",
]
