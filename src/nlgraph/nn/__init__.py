"""Neural-network modules.

:class:`NonLocalConv` is a PyG ``MessagePassing`` layer: it (and with it torch_geometric) is
imported on first access, so ``import nlgraph.nn`` stays light.
"""

from typing import TYPE_CHECKING, Any

from .glore import GlobalReasoning
from .nonlocal_block import NonLocalBlock1d, NonLocalBlock2d, NonLocalBlock3d, NonLocalBlockNd
from .object_relation import ObjectRelation
from .presets import PRESETS, make_divisible
from .relation_network import RelationNetwork

if TYPE_CHECKING:
    from .nonlocal_conv import NonLocalConv

__all__ = [
    "PRESETS",
    "GlobalReasoning",
    "NonLocalBlock1d",
    "NonLocalBlock2d",
    "NonLocalBlock3d",
    "NonLocalBlockNd",
    "NonLocalConv",
    "ObjectRelation",
    "RelationNetwork",
    "make_divisible",
]


def __getattr__(name: str) -> Any:
    if name == "NonLocalConv":  # imports torch_geometric
        from .nonlocal_conv import NonLocalConv

        return NonLocalConv
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
