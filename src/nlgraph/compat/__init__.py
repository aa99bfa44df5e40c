"""Converters between nlgraph's non-local blocks and the weights of public implementations.

:func:`from_reference` builds a block with a public module's semantics and loads its
state_dict exactly; :func:`to_reference` writes a block back in that layout (exact round trip).
One module per layout: :mod:`.alexhex7`, :mod:`.mmcv`, :mod:`.timm`, :mod:`.slowfast`,
:mod:`.caffe2`, each with ``load`` and ``dump``; :mod:`.presets` holds each layout's defaults for
a fresh block. The converters see a block through :class:`NonLocalBlockLike`; ``nlgraph.nn``
depends on this package, not the reverse.
"""

from . import alexhex7, caffe2, mmcv, presets, slowfast, timm
from ._common import LAYOUTS, NonLocalBlockLike, from_reference, to_reference

__all__ = [
    "LAYOUTS",
    "NonLocalBlockLike",
    "alexhex7",
    "caffe2",
    "from_reference",
    "mmcv",
    "presets",
    "slowfast",
    "timm",
    "to_reference",
]
