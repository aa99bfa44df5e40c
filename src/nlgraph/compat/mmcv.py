"""mmcv ``NonLocal1d/2d/3d`` state_dicts (``mmcv/cnn/bricks/non_local.py``, mmcv 1.x and 2.x).

Keys: ``g[.0].conv``, ``conv_out.conv`` (+ ``conv_out.bn`` with ``norm_cfg=BN``), ``theta.conv``,
``phi[.0].conv`` (not in Gaussian mode), ``concat_project.conv`` (Conv2d 2C'→1, no bias); the
``.0`` nesting means ``sub_sample=True``. ``conv_out`` has a bias only without a norm.
``use_scale`` is not stored: the default ``scale="inner"`` is mmcv's ``use_scale=True``; pass
``scale=None`` for ``use_scale=False`` (it only acts in the embedded-Gaussian mode).
"""

from __future__ import annotations

from typing import cast

from torch import Tensor

from . import _common as common

__all__ = ["dump", "key_map", "load"]


def key_map(s: common.Structure) -> common.KeyMap:
    """Reference key -> nlgraph key, in mmcv's registration order."""
    return common.pooled_key_map(
        s, ".conv", "conv_out.conv", "conv_out.bn", "concat_project.conv.weight"
    )


def load(req: common.Request) -> common.NonLocalBlockLike:
    """A block from an mmcv state_dict (see :func:`nlgraph.compat.from_reference`)."""
    tensors = common.tensors_of(req.state_dict, req.prefix)
    sub = common.nested_sub_sample(tensors, req.sub_sample, default=False)
    norm = any(k.startswith("conv_out.bn.") for k in tensors)
    structure = common.Structure(req.mode, sub, norm, out_bias=not norm)
    return common.load_block("mmcv", tensors, key_map, structure, req)


def dump(block: common.NonLocalBlockLike, prefix: str | None = None) -> dict[str, Tensor]:
    """``block`` as an mmcv state_dict (see :func:`nlgraph.compat.to_reference`)."""
    common.check_block(
        block, "mmcv", placement="after", pool_size="default",
        scales=common.inner_scales(block), norm_required=False,
    )  # fmt: skip
    norm = block.norm is not None
    bias = cast(Tensor | None, block.w_z.bias)
    if norm and bias is not None and bool(bias.detach().ne(0).any()):
        raise ValueError(
            "block: expected out_bias=False (or a zero W_z bias) for layout 'mmcv' with a norm "
            "(mmcv's conv_out has no bias before its norm), got a non-zero bias"
        )
    s = common.Structure(block.mode, block.sub_sample, norm, out_bias=not norm)
    return common.add_prefix(common.dump_block(block, key_map(s)), prefix)
