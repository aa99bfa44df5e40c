"""timm ``NonLocalAttn`` state_dicts (``timm/layers/non_local_attn.py``): 2-D only.

Keys ``t``, ``p``, ``g`` (1x1 convs C→C_r), ``z`` (C_r→C) and ``norm`` (BatchNorm2d). Embedded
Gaussian only, no sub-sampling; the logits are scaled by the *input* width, :math:`C^{-1/2}`
(``scale="input"``); pass ``scale=None`` for ``use_scale=False``.
"""

from __future__ import annotations

from torch import Tensor

from .._validate import resolve_flag
from . import _common as common

__all__ = ["dump", "key_map", "load"]


def key_map(s: common.Structure) -> common.KeyMap:
    """Reference key -> nlgraph key, in timm's registration order."""
    return (
        common.conv_keys("t", "theta") | common.conv_keys("p", "phi") | common.conv_keys("g", "g")
        | common.conv_keys("z", "w_z") | common.norm_keys("norm")
    )  # fmt: skip


def load(req: common.Request) -> common.NonLocalBlockLike:
    """A block from a timm state_dict (see :func:`nlgraph.compat.from_reference`)."""
    tensors = common.tensors_of(req.state_dict, req.prefix)
    sub = resolve_flag("sub_sample", req.sub_sample, False, False, "timm never sub-samples")
    return common.load_block(
        "timm", tensors, key_map, common.Structure(req.mode, sub, True, True), req
    )


def dump(block: common.NonLocalBlockLike, prefix: str | None = None) -> dict[str, Tensor]:
    """``block`` as a timm state_dict (see :func:`nlgraph.compat.to_reference`)."""
    scales = {"None": 1.0, "'input'": block.in_channels**-0.5}
    common.check_block(
        block, "timm", placement=None, pool_size=None, scales=scales, norm_required=True
    )
    s = common.Structure(block.mode, False, True, True)
    return common.add_prefix(common.dump_block(block, key_map(s)), prefix)
