"""Neural-network modules."""

from .nonlocal_block import NonLocalBlock1d, NonLocalBlock2d, NonLocalBlock3d
from .nonlocal_conv import NonLocalConv
from .presets import PRESETS, make_divisible

__all__ = [
    "PRESETS",
    "NonLocalBlock1d",
    "NonLocalBlock2d",
    "NonLocalBlock3d",
    "NonLocalConv",
    "make_divisible",
]
