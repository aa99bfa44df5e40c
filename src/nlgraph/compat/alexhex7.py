"""AlexHex7/Non-local_pytorch ``NONLocalBlock1D/2D/3D`` state_dicts (``lib/non_local_*.py``).

Keys: ``g[.0]``, ``W`` (conv) or ``W.0`` + ``W.1`` (conv + BatchNorm, ``bn_layer=True``),
``theta``, ``phi[.0]`` (not in the Gaussian file), ``concat_project.0`` (Conv2d 2C'→1, no bias);
the ``.0`` nesting of g and phi means ``sub_sample=True``. Pooling after the projections with
the fixed windows 2, (2, 2), (1, 2, 2); no temperature; W_z always has a bias.
"""

from __future__ import annotations

from torch import Tensor

from . import _common as common

__all__ = ["dump", "key_map", "load"]


def key_map(s: common.Structure) -> common.KeyMap:
    """Reference key -> nlgraph key, in AlexHex7's registration order."""
    w_z = "W.0" if s.norm else "W"
    return common.pooled_key_map(s, "", w_z, "W.1", "concat_project.0.weight")


def load(req: common.Request) -> common.NonLocalBlockLike:
    """A block from an AlexHex7 state_dict (see :func:`nlgraph.compat.from_reference`)."""
    tensors = common.tensors_of(req.state_dict, req.prefix)
    sub = common.nested_sub_sample(tensors, req.sub_sample, default=True)
    norm = any(k.startswith("W.1.") for k in tensors)
    return common.load_block(
        "alexhex7", tensors, key_map, common.Structure(req.mode, sub, norm, True), req
    )


def dump(block: common.NonLocalBlockLike, prefix: str | None = None) -> dict[str, Tensor]:
    """``block`` as an AlexHex7 state_dict (see :func:`nlgraph.compat.to_reference`)."""
    common.check_block(
        block, "alexhex7", placement="after", pool_size="default",
        scales={"None (it has no temperature)": 1.0}, norm_required=False,
    )  # fmt: skip
    s = common.Structure(block.mode, block.sub_sample, block.norm is not None, True)
    return common.add_prefix(common.dump_block(block, key_map(s)), prefix)
