"""AlexHex7/Non-local_pytorch ``NONLocalBlock1D/2D/3D`` state_dicts (``lib/non_local_*.py``).

Keys: ``g[.0]``, ``W`` (conv) or ``W.0`` + ``W.1`` (conv + BatchNorm, ``bn_layer=True``),
``theta``, ``phi[.0]`` (not in the Gaussian file), ``concat_project.0`` (Conv2d 2C'→1, no bias);
the ``.0`` nesting of g and phi means ``sub_sample=True``. Pooling after the projections with
the fixed windows 2, (2, 2), (1, 2, 2); no temperature; W_z always has a bias.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..nn.nonlocal_block import _NonLocalBlockNd
from . import _common as common

__all__ = ["dump", "key_map", "load", "nested_sub_sample", "pooled_key_map"]


def pooled_key_map(
    s: common.Structure, conv: str, w_z: str, norm: str, concat: str
) -> common.KeyMap:
    """Key map of AlexHex7's and mmcv's module tree, in their registration order: g (wrapped in
    ``Sequential(conv, pool)`` when sub-sampling: ``g.0``), W_z at ``w_z``, its norm at ``norm``,
    theta, phi (wrapped like g) and the concatenation weight at ``concat``; ``conv`` is the
    path of a conv inside its module (``""`` or ``".conv"``)."""
    wrap = ".0" if s.sub_sample else ""
    kmap = common.conv_keys(f"g{wrap}{conv}", "g") | common.conv_keys(w_z, "w_z", bias=s.out_bias)
    if s.norm:
        kmap |= common.norm_keys(norm)
    if s.mode != "gaussian":
        kmap |= common.conv_keys(f"theta{conv}", "theta")
        kmap |= common.conv_keys(f"phi{wrap}{conv}", "phi")
    if s.mode == "concatenation":
        kmap[concat] = "concat_project.weight"
    return kmap


def nested_sub_sample(keys: Any, given: bool | None, default: bool) -> bool:
    """sub_sample as recorded by AlexHex7/mmcv keys: g and phi become ``Sequential(conv, pool)``
    (keys ``g.0.*``, ``phi.0.*``) when sub-sampling; ``default`` when neither key is present."""
    heads = [k.split(".", 2)[:2] for k in keys if k.split(".", 1)[0] in ("g", "phi")]
    encoded = any(len(h) > 1 and h[1] == "0" for h in heads) if heads else None
    why = (
        "the keys 'g.0.*'/'phi.0.*' hold a pooled Sequential"
        if encoded
        else "the keys of g/phi are not wrapped in a pooled Sequential 'g.0.*'"
    )
    return common.resolve_flag("sub_sample", given, encoded, default, why)


def key_map(s: common.Structure) -> common.KeyMap:
    """Reference key -> nlgraph key, in AlexHex7's registration order."""
    w_z = "W.0" if s.norm else "W"
    return pooled_key_map(s, "", w_z, "W.1", "concat_project.0.weight")


def load(req: common.Request) -> _NonLocalBlockNd:
    """A block from an AlexHex7 state_dict (see :func:`nlgraph.compat.from_reference`)."""
    tensors = common.tensors_of(req.state_dict, req.prefix)
    sub = nested_sub_sample(tensors, req.sub_sample, default=True)
    norm = any(k.startswith("W.1.") for k in tensors)
    return common.load_block(
        "alexhex7", tensors, key_map, common.Structure(req.mode, sub, norm, True), req
    )


def dump(block: _NonLocalBlockNd, prefix: str | None = None) -> dict[str, Tensor]:
    """``block`` as an AlexHex7 state_dict (see :func:`nlgraph.compat.to_reference`)."""
    common.check_block(
        block, "alexhex7", placement="after", pool_size="default",
        scales={"None (it has no temperature)": 1.0}, norm_required=False,
    )  # fmt: skip
    s = common.Structure(block.mode, block.sub_sample, block.norm is not None, True)
    return common.add_prefix(common.dump_block(block, key_map(s)), prefix)
