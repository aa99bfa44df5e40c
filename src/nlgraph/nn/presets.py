"""The presets of :mod:`nlgraph.compat.presets`, re-exported where the blocks use them.

A preset is a fresh block with the defaults of a public non-local implementation
(``NonLocalBlock2d.from_preset("mmcv", 64)``); the table of what each sets lives with the
weight layouts in :mod:`nlgraph.compat.presets`.
"""

from __future__ import annotations

from ..compat.presets import PRESETS, check_layout_support, make_divisible, preset_kwargs

__all__ = ["PRESETS", "check_layout_support", "make_divisible", "preset_kwargs"]
