"""Neural-network modules."""

from .glore import GlobalReasoning
from .nonlocal_block import NonLocalBlock1d, NonLocalBlock2d, NonLocalBlock3d
from .nonlocal_conv import NonLocalConv
from .object_relation import ObjectRelation
from .presets import PRESETS, make_divisible

__all__ = [
    "PRESETS",
    "GlobalReasoning",
    "NonLocalBlock1d",
    "NonLocalBlock2d",
    "NonLocalBlock3d",
    "NonLocalConv",
    "ObjectRelation",
    "make_divisible",
]
