"""SlowFast ``Nonlocal`` state_dicts (``slowfast/models/nonlocal_helper.py``): 3-D only.

Keys ``conv_theta``, ``conv_phi``, ``conv_g``, ``conv_out`` (all with bias) and ``bn``
(BatchNorm3d). The input is max-pooled *before* φ and g (``pool_placement="before"``); the
pool is not stored: ``sub_sample=None`` means the config default ``NONLOCAL.POOL=[1, 2, 2]``,
``pool_size=`` sets another window, ``sub_sample=False`` none. Modes: ``"embedded_gaussian"``
(SlowFast's ``softmax``, always scaled by :math:`C'^{-1/2}`) and ``"dot_product"``.
"""

from __future__ import annotations

from torch import Tensor

from . import _common as common

__all__ = ["dump", "key_map", "load"]


def key_map(s: common.Structure) -> common.KeyMap:
    """Reference key -> nlgraph key, in SlowFast's registration order."""
    return (
        common.conv_keys("conv_theta", "theta") | common.conv_keys("conv_phi", "phi")
        | common.conv_keys("conv_g", "g") | common.conv_keys("conv_out", "w_z") | common.norm_keys("bn")
    )  # fmt: skip


def load(req: common.Request) -> common.NonLocalBlockLike:
    """A block from a SlowFast state_dict (see :func:`nlgraph.compat.from_reference`)."""
    tensors = common.tensors_of(req.state_dict, req.prefix)
    sub = True if req.sub_sample is None else bool(req.sub_sample)
    structure = common.Structure(req.mode, sub, True, True)
    return common.load_block("slowfast", tensors, key_map, structure, req)


def dump(block: common.NonLocalBlockLike, prefix: str | None = None) -> dict[str, Tensor]:
    """``block`` as a SlowFast state_dict (see :func:`nlgraph.compat.to_reference`)."""
    common.check_block(
        block, "slowfast", placement="before", pool_size=None,
        scales=common.inner_scales(block, none=False), norm_required=True,
    )  # fmt: skip
    s = common.Structure(block.mode, block.sub_sample, True, True)
    return common.add_prefix(common.dump_block(block, key_map(s)), prefix)
