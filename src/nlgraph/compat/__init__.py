"""Converters between nlgraph's non-local blocks and the weights of public implementations.

:func:`from_reference` builds a block with a public module's semantics and loads its
state_dict exactly; :func:`to_reference` writes a block back in that layout (exact round trip).
One module per layout: :mod:`.alexhex7`, :mod:`.mmcv`, :mod:`.timm`, :mod:`.slowfast`,
:mod:`.caffe2`, each with ``load`` and ``dump``.
"""

from . import alexhex7, caffe2, mmcv, slowfast, timm
from ._common import LAYOUTS, from_reference, to_reference

__all__ = [
    "LAYOUTS",
    "alexhex7",
    "caffe2",
    "from_reference",
    "mmcv",
    "slowfast",
    "timm",
    "to_reference",
]
