"""Presets: a fresh block with the defaults of a public non-local implementation.

============  =========================  =========  ==========  =========  ======  =============================
preset        inner width C'             sub_sample placement   scale      norm    initialisation (identity?)
============  =========================  =========  ==========  =========  ======  =============================
``alexhex7``  max(C // 2, 1)             yes        after       none       batch   PyTorch default; BN γ=β=0 (yes)
``mmcv``      max(C // 2, 1)             no         after       C'^-1/2    none    θφg N(0,.01²); W_z=0 (yes)
``timm``      make_divisible(C / 8, 8)   no         —           C^-1/2     batch   Kaiming fan_out; BN γ=β=0 (yes)
``slowfast``  max(C // 2, 1)             (1, 2, 2)  before      C'^-1/2    batch   Kaiming fan_out; BN γ=1 (no)
``caffe2``    max(C // 2, 1)             (1, 2, 2)  before      C'^-1/2    batch   N(0,.01²); BN γ=β=0 (yes)
============  =========================  =========  ==========  =========  ======  =============================

Notes:
- ``mmcv``: W_z has a bias only without a norm (``norm="batch"`` turns ``out_bias`` off, as
  mmcv's ConvModule does, and zero-initialises the norm instead of W_z).
- ``slowfast``: SlowFast's model-level initialiser MSRA-fills every conv; a standalone
  ``Nonlocal`` keeps BN γ = 1, so the block is *not* the identity at construction (pass
  ``zero_init=True`` for the ``ZERO_INIT_FINAL_BN`` recipe).
- ``caffe2``: BN epsilon 1.0000001e-5 (Caffe2's), W_z ~ N(0, 0.01²), identity via BN γ = 0.
- ``timm`` is 2-D only and embedded Gaussian only; ``slowfast`` and ``caffe2`` are 3-D only and
  support the embedded Gaussian ("softmax") and dot product modes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .._validate import check_choice, check_positive_int

__all__ = ["PRESETS", "make_divisible", "preset_kwargs"]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``), adding one
    ``divisor`` when rounding lost more than 10% (timm's inner-width rule)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"value: expected a finite int or float, got {value!r}")
    if value < 0:
        raise ValueError(f"value: expected a non-negative number, got {value}")
    check_positive_int("divisor", divisor)
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _alexhex7(c: int, mode: str) -> dict[str, Any]:
    return dict(inter_channels=max(c // 2, 1), sub_sample=True, pool_placement="after",
                scale=None, norm="batch", zero_init=True, out_bias=True, weight_init="pytorch")  # fmt: skip


def _mmcv(c: int, mode: str) -> dict[str, Any]:
    return dict(inter_channels=max(c // 2, 1), sub_sample=False, pool_placement="after",
                scale="inner" if mode == "embedded_gaussian" else None, norm=None,
                zero_init=True, out_bias=True, weight_init="mmcv")  # fmt: skip


def _timm(c: int, mode: str) -> dict[str, Any]:
    return dict(inter_channels=make_divisible(c / 8, 8), sub_sample=False, scale="input",
                norm="batch", zero_init=True, out_bias=True, weight_init="kaiming")  # fmt: skip


def _slowfast(c: int, mode: str) -> dict[str, Any]:
    return dict(inter_channels=max(c // 2, 1), sub_sample=True, pool_size=(1, 2, 2),
                pool_placement="before", scale="inner" if mode == "embedded_gaussian" else None,
                norm="batch", zero_init=False, out_bias=True, weight_init="kaiming")  # fmt: skip


def _caffe2(c: int, mode: str) -> dict[str, Any]:
    return dict(inter_channels=max(c // 2, 1), sub_sample=True, pool_size=(1, 2, 2),
                pool_placement="before", scale="inner" if mode == "embedded_gaussian" else None,
                norm="batch", norm_eps=1.0000001e-5, zero_init=True, out_bias=True,
                weight_init="normal")  # fmt: skip


#: name -> (builder of default kwargs, supported dims, supported modes)
PRESETS: dict[str, tuple[Callable[[int, str], dict[str, Any]], tuple[int, ...], tuple[str, ...]]] = {
    "alexhex7": (_alexhex7, (1, 2, 3), ("gaussian", "embedded_gaussian", "dot_product", "concatenation")),
    "mmcv": (_mmcv, (1, 2, 3), ("gaussian", "embedded_gaussian", "dot_product", "concatenation")),
    "timm": (_timm, (2,), ("embedded_gaussian",)),
    "slowfast": (_slowfast, (3,), ("embedded_gaussian", "dot_product")),
    "caffe2": (_caffe2, (3,), ("embedded_gaussian", "dot_product")),
}  # fmt: skip


def check_layout_support(name: str, dims: int, mode: str) -> None:
    """Raise ``ValueError`` if layout/preset ``name`` has no ``dims``-D block or no ``mode``."""
    check_choice("layout" if name not in PRESETS else "name", name, PRESETS)
    _, supported_dims, supported_modes = PRESETS[name]
    if dims not in supported_dims:
        raise ValueError(
            f"dims: {name!r} has only {'/'.join(f'{d}-D' for d in supported_dims)} blocks, "
            f"got a {dims}-D block"
        )
    check_choice(f"mode ({name!r})", mode, supported_modes)


def preset_kwargs(
    name: str, in_channels: int, dims: int, overrides: dict[str, Any]
) -> dict[str, Any]:
    """Constructor kwargs for preset ``name``, with ``overrides`` applied on top."""
    check_choice("name", name, PRESETS)
    mode = overrides.get("mode", "embedded_gaussian")
    check_layout_support(name, dims, mode)
    kwargs = PRESETS[name][0](in_channels, mode)
    if name == "mmcv" and overrides.get("norm", kwargs["norm"]) is not None:
        kwargs["out_bias"] = False
    kwargs["mode"] = mode
    kwargs.update(overrides)
    return kwargs
