"""Input validation shared by the public entry points.

Every error follows one form: ``"<argument>: expected <X>, got <Y>"``. Validation runs once at
the public entry (module constructors, ``forward``, ``nonlocal_aggregate``), never in kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "NORMS",
    "check_bool",
    "check_async",
    "check_channels_dtype_device",
    "check_choice",
    "check_edge_index",
    "check_float_tensor",
    "check_index_range",
    "check_positive_int",
    "describe",
    "resolve_flag",
]

#: The ``norm`` options of the modules: a BatchNorm after W_z, or none.
NORMS: tuple[Any, ...] = ("batch", None)


def describe(t: Tensor) -> str:
    """One-line description of a tensor for error messages: shape, dtype and device."""
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}: expected one of {listed}, got {value!r}")


def check_bool(name: str, value: Any) -> bool:
    """Return ``value``, raising ``TypeError`` unless it is a bool (not merely truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return value


#: The largest count (of channels, neighbours, nodes, ...) the validators accept: beyond int32 a
#: size is a mistake, and torch would fail deep inside (storage overflow) or try to allocate it.
MAX_COUNT = 2**31 - 1


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` as an int, raising ``TypeError``/``ValueError`` unless it is an int in
    [1, :data:`MAX_COUNT`]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected a positive int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    if value > MAX_COUNT:
        raise ValueError(f"{name}: expected a positive int up to 2**31 - 1, got {value}")
    return value


def check_nonnegative_int(name: str, value: Any) -> int:
    """Return ``value`` as an int, raising ``TypeError``/``ValueError`` unless it is an int in
    [0, :data:`MAX_COUNT`]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name}: expected a non-negative int, got {type(value).__name__} {value!r}"
        )
    if value < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {value}")
    if value > MAX_COUNT:
        raise ValueError(f"{name}: expected a non-negative int up to 2**31 - 1, got {value}")
    return value


def factory_kwargs(device: Any, dtype: Any) -> dict[str, Any]:
    """``{"device": ..., "dtype": ...}`` for a module's parameters, checked: ``dtype`` None or a
    floating-point ``torch.dtype`` (``TypeError``), ``device`` None or anything
    :class:`torch.device` takes (``ValueError``/``TypeError`` naming ``device``)."""
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(
            f"dtype: expected None or a floating-point torch.dtype (parameters are trained), "
            f"got {dtype!r}"
        )
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ValueError(
                f"device: expected a torch.device or its name, got {device!r} ({exc})"
            ) from None
    return {"device": device, "dtype": dtype}


def check_has_data(name: str, t: Tensor) -> Tensor:
    """``ValueError`` for a meta tensor (shapes without values: nothing here can be computed
    from it, and reading one fails deep inside torch)."""
    if t.device.type == "meta":
        raise ValueError(f"{name}: expected a tensor with values (cpu or cuda), got a meta tensor")
    return t


def check_finite_rows(name: str, t: Tensor, purpose: str = "") -> Tensor:
    """``ValueError`` quoting the first row of the 2-D ``t`` with a NaN or infinite entry
    (``purpose``, e.g. ``" for the grid search"``, follows "finite coordinates"). One host read:
    for the point searches, which read sizes on the host anyway."""
    if t.numel():
        finite = torch.isfinite(t).all(1)
        if not bool(finite.all()):
            bad = int(torch.nonzero(~finite)[0])
            raise ValueError(
                f"{name}: expected finite coordinates{purpose}, got row {bad} "
                f"{tuple(t[bad].tolist())}"
            )
    return t


def check_float_tensor(name: str, t: Any) -> Tensor:
    """Raise ``TypeError`` unless ``t`` is a floating-point tensor (``ValueError`` for a meta
    tensor, :func:`check_has_data`)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not torch.is_floating_point(t):
        raise TypeError(
            f"{name}: expected a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {t.dtype}"
        )
    return check_has_data(name, t)


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


def check_edge_index(name: str, value: Any) -> Tensor:
    """Return ``value`` if it is a (2, E) int64 tensor: ``TypeError`` for a non-tensor,
    ``ValueError`` for another shape or dtype. The index values are not read (see
    :func:`check_index_range`)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a (2, E) int64 tensor, got {type(value).__name__}")
    if value.dim() != 2 or value.shape[0] != 2 or value.dtype != torch.long:
        raise ValueError(f"{name}: expected a (2, E) int64 tensor, got {describe(value)}")
    return check_has_data(name, value)


def check_async(ok: Tensor, message: str, explain: Callable[[], Exception]) -> None:
    """Raise ``explain()`` unless the 0-d bool tensor ``ok`` is True, without a host read.

    The condition goes to ``torch._assert_async``: nothing is read back on the success path (no
    synchronisation; ``torch.compile`` traces it). On CPU a failure raises at once, and
    ``explain`` (called only then, free to read values) builds the detailed error; on CUDA the
    failure is a device-side assertion carrying ``message``, reported asynchronously, as for
    PyTorch's own index checks.
    """
    try:
        torch._assert_async(ok, message)
    except RuntimeError:
        raise explain() from None


def check_index_range(name: str, index: Tensor, size: int, hint: str = "") -> None:
    """``IndexError`` unless every entry of ``index`` lies in [0, size), without a host read.

    The check is :func:`check_async`: on the success path nothing is read back. On CPU a failure
    raises here, as an IndexError quoting the valid interval, the values found and ``hint`` (e.g.
    the likely cause); on CUDA it is a device-side assertion carrying the interval and ``hint``.
    """
    if index.numel() == 0:
        return
    low, high = torch.aminmax(index)
    check_async(
        (low >= 0) & (high < size),
        f"{name}: expected indices in [0, {size}){hint}",
        lambda: IndexError(
            f"{name}: expected indices in [0, {size}), got values in [{int(low)}, {int(high)}]"
            f"{hint}"
        ),
    )


def resolve_flag(name: str, given: Any, encoded: Any, default: Any, evidence: str) -> Any:
    """The value of a flag that the data may encode (``encoded``, ``None`` if it does not):
    ``given`` or ``default`` then; ``ValueError`` if ``given`` contradicts ``evidence``."""
    if encoded is None:
        return default if given is None else given
    if given is not None and given != encoded:
        raise ValueError(f"{name}: expected {encoded!r} ({evidence}), got {given!r}")
    return encoded
