"""Blobs of the official Caffe2 release (facebookresearch/video-nonlocal-net): 3-D only.

Blob names ``<prefix>_{theta,phi,g,out}_{w,b}`` (conv weights (out, in, 1, 1, 1)) and
``<prefix>_bn_{s,b,rm,riv}`` (SpatialBN scale, bias, running mean, running *variance*), e.g.
prefix ``nonlocal_conv3_1``; values may be numpy arrays. Blobs of other prefixes and the
``*_momentum`` blobs of training pickles are ignored. Semantics as SlowFast: the input is
max-pooled before φ and g (``USE_MAXPOOL``, window (1, 2, 2)), embedded Gaussian logits scaled
by :math:`C'^{-1/2}` (``USE_SCALE``; ``scale=None`` without it) or dot product, BN epsilon
1.0000001e-5. Without ``_bn_*`` blobs (the frozen-BN "affine" recipe) the block has no norm.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import _common as common

__all__ = ["DEFAULT_PREFIX", "dump", "find_prefixes", "key_map", "load"]

#: The prefix :func:`dump` uses when none is given.
DEFAULT_PREFIX = "nonlocal"
_CONVS = {"theta": "theta", "phi": "phi", "g": "g", "out": "w_z"}
_BN = {"bn_s": "norm.weight", "bn_b": "norm.bias", "bn_rm": "norm.running_mean",
       "bn_riv": "norm.running_var"}  # fmt: skip
_SUFFIXES = {f"{c}_{p}" for c in _CONVS for p in "wb"} | set(_BN)
_BLOB = re.compile(r"^(.+)_(theta|phi|g|out)_w$")


def key_map(s: common.Structure, prefix: str = DEFAULT_PREFIX) -> common.KeyMap:
    """Blob name -> nlgraph key."""
    kmap = {}
    for ref, ours in _CONVS.items():
        if ours in ("theta", "phi") and s.mode == "gaussian":
            continue
        kmap[f"{prefix}_{ref}_w"] = f"{ours}.weight"
        kmap[f"{prefix}_{ref}_b"] = f"{ours}.bias"
    if s.norm:
        kmap |= {f"{prefix}_{ref}": ours for ref, ours in _BN.items()}
    return kmap


def find_prefixes(blobs: Mapping[str, Any]) -> list[str]:
    """The prefixes of the non-local blocks among ``blobs`` (those with a ``*_{theta,phi,g,out}_w``
    blob), sorted."""
    return sorted({m.group(1) for k in blobs if isinstance(k, str) and (m := _BLOB.match(k))})


def _to_tensor(key: str, value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value, dtype=value.dtype.newbyteorder("="), order="C"))
    return value


def load(req: common.Request) -> common.NonLocalBlockLike:
    """A block from Caffe2 blobs (see :func:`nlgraph.compat.from_reference`)."""
    state_dict, prefix = req.state_dict, req.prefix
    if isinstance(state_dict, Mapping) and isinstance(state_dict.get("blobs"), Mapping):
        state_dict = state_dict["blobs"]  # the release pickles: {"blobs": {...}, ...}
    common.check_mapping(state_dict)
    found = find_prefixes(state_dict)
    if prefix is None:
        if not found:
            raise ValueError(
                "state_dict: expected Caffe2 non-local blobs '<prefix>_theta_w', "
                f"'<prefix>_g_w', '<prefix>_out_w', ..., got none{common.looks_like(state_dict, 'caffe2')}"
            )
        if len(found) > 1:
            raise ValueError(
                f"prefix: expected one of {found} (the blobs hold several non-local blocks), "
                "got None"
            )
        prefix = found[0]
    elif prefix not in found:
        raise ValueError(
            f"prefix: expected one of {found} (the prefixes of the blobs), got {prefix!r}"
        )
    head = f"{prefix}_"
    mine = {
        k: v for k, v in state_dict.items()
        if isinstance(k, str) and k.startswith(head) and k[len(head):] in _SUFFIXES
    }  # fmt: skip
    tensors = common.tensors_of(mine, convert=_to_tensor)
    norm = any(k[len(head) :].startswith("bn_") for k in tensors)
    sub = True if req.sub_sample is None else bool(req.sub_sample)
    structure = common.Structure(req.mode, sub, norm, True)
    return common.load_block("caffe2", tensors, partial(key_map, prefix=prefix), structure, req)


def dump(block: common.NonLocalBlockLike, prefix: str | None = None) -> dict[str, Tensor]:
    """``block`` as Caffe2 blobs, as tensors (see :func:`nlgraph.compat.to_reference`)."""
    common.check_block(
        block, "caffe2", placement="before", pool_size=(1, 2, 2),
        scales=common.inner_scales(block), norm_required=False,
    )  # fmt: skip
    s = common.Structure(block.mode, block.sub_sample, block.norm is not None, True)
    return common.dump_block(block, key_map(s, DEFAULT_PREFIX if prefix is None else prefix))
