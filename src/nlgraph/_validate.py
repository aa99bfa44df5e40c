"""Input validation shared by the public entry points.

Every error follows one form: ``"<argument>: expected <X>, got <Y>"``. Validation runs once at
the public entry (module constructors, ``forward``, ``nonlocal_aggregate``), never in kernels.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_channels_dtype_device",
    "check_choice",
    "check_float_tensor",
    "check_positive_int",
    "describe",
]


def describe(t: Tensor) -> str:
    """One-line description of a tensor for error messages: shape, dtype and device."""
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}: expected one of {listed}, got {value!r}")


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` as an int, raising ``TypeError``/``ValueError`` unless it is a positive int."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected a positive int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return value


def check_float_tensor(name: str, t: Any) -> Tensor:
    """Raise ``TypeError`` unless ``t`` is a floating-point tensor."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not torch.is_floating_point(t):
        raise TypeError(
            f"{name}: expected a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {t.dtype}"
        )
    return t


def check_channels_dtype_device(
    name: str, t: Tensor, channels: int, weight: Tensor, owner: str
) -> None:
    """Check that ``t`` has ``channels`` channels in dim 1 and the dtype (unless autocast is on)
    and device of ``weight``, the parameters of ``owner`` (e.g. ``"the block's"``)."""
    if t.shape[1] != channels:
        raise ValueError(
            f"{name}: expected {channels} channels (dim 1), got {t.shape[1]} in {describe(t)}"
        )
    if t.dtype != weight.dtype and not torch.is_autocast_enabled(t.device.type):
        raise TypeError(
            f"{name}: expected dtype {weight.dtype} ({owner} parameters), got {t.dtype}"
        )
    if t.device != weight.device:
        raise ValueError(
            f"{name}: expected device {weight.device} ({owner} parameters), got {t.device}"
        )
