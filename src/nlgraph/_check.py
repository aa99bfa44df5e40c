"""``nlgraph check``: import a checkpoint with ``from_reference`` and compare the block with the
layout's own module where it is installed (mmcv), the exact round trip ``to_reference`` and the
naive block, on a random float64 input. The command line (:mod:`nlgraph.cli`) parses the
arguments; see ``docs/cli.md``.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ._cli_util import device_error, importable, table, version_of
from ._naive import naive_from_block
from .nn import NonLocalBlock1d, NonLocalBlock2d, NonLocalBlock3d

__all__ = ["CHECK_ATOL", "CHECK_SCALES", "CheckError", "check", "load_checkpoint"]


#: ``check``'s tolerance in float64: max |z_nlgraph - z_other| on the random input.
CHECK_ATOL = 1e-10
#: The reference modules ``check`` builds where their package is installed: layout -> (module
#: holding ``NonLocal1d/2d/3d``, pip package).
CHECK_REFERENCES = {"mmcv": ("mmcv.cnn", "mmcv-lite")}
#: Why the other layouts' reference modules are not compared.
_NO_REFERENCE = {
    "alexhex7": "AlexHex7/Non-local_pytorch is not a pip package",
    "timm": "timm's NonLocalAttn is not built by this check",
    "slowfast": "facebookresearch/SlowFast is not a pip package",
    "caffe2": "the Caffe2 release (video-nonlocal-net) is not a pip package",
}
#: from_reference argument -> the ``check`` argument that sets it (for error messages).
_CHECK_FLAGS = {"state_dict": "CHECKPOINT", "layout": "--layout", "dims": "--dims",
                "mode": "--mode", "prefix": "--prefix", "scale": "--scale"}  # fmt: skip
#: ``--scale`` values -> the ``scale`` override.
CHECK_SCALES = {"inner": "inner", "input": "input", "none": None}
_CAFFE2_BLOB = re.compile(r"_((theta|phi|g|out)_[wb]|bn_(s|b|rm|riv))")


class CheckError(ValueError):
    """A bad ``check`` argument; the message names it (``"--key: expected ..., got ..."``)."""


def _as_flag(exc: Exception) -> CheckError:
    """``exc``'s message on one line, its leading from_reference argument renamed to the flag."""
    text = "; ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip()) or repr(exc)
    name, sep, rest = text.partition(": ")
    head = re.split(r"[\[ ]", name, maxsplit=1)[0]
    if sep and head in _CHECK_FLAGS:
        text = f"{_CHECK_FLAGS[head]}{name[len(head) :]}: {rest}"
    return CheckError(text)


def load_checkpoint(path: Path, key: str | None = None) -> tuple[dict[str, Any], str]:
    """The state_dict in a checkpoint file, read with ``torch.load(weights_only=True)``.

    Args:
        path (Path): the file.
        key (str, optional): the entry holding the state_dict (e.g. ``"state_dict"``,
            ``"model"``). (default: the file's dict itself; when it holds dicts, its only
            entry that is a dict of tensors)

    Returns:
        tuple: (state_dict, where in the file: ``""`` or e.g. ``"['state_dict']"``).

    Raises:
        CheckError: "CHECKPOINT: expected an existing file, got 'model.pt'"; likewise for a file
            ``torch.load`` cannot read, and "--key: ..." for a key that names no dict.
    """
    if not path.is_file():
        raise CheckError(f"CHECKPOINT: expected an existing file, got {str(path)!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling error, reported on one line
        why = (str(exc).strip().splitlines() or [""])[0][:160]
        raise CheckError(
            "CHECKPOINT: expected a file that torch.load(weights_only=True) reads, got "
            f"{str(path)!r} ({type(exc).__name__}: {why})"
        ) from None
    if not isinstance(obj, Mapping):
        raise CheckError(
            "CHECKPOINT: expected a dict (a state_dict or a dict holding one), got "
            f"{type(obj).__name__}"
        )
    nested = [
        k for k, v in obj.items()
        if isinstance(v, Mapping) and v and all(isinstance(t, torch.Tensor) for t in v.values())
    ]  # fmt: skip
    if key is not None:
        if not isinstance(obj.get(key), Mapping):
            raise CheckError(f"--key: expected one of {nested} (its dicts of tensors), got {key!r}")
        return dict(obj[key]), f"[{key!r}]"
    if any(isinstance(v, Mapping) for v in obj.values()):
        if len(nested) != 1:
            raise CheckError(
                f"--key: expected the entry holding the state_dict, one of {nested}, got none"
            )
        return dict(obj[nested[0]]), f"[{nested[0]!r}]"
    return dict(obj), ""


def _layout_tensors(
    state: dict[str, Any], layout: str, prefix: str | None
) -> tuple[dict[str, torch.Tensor], str | None]:
    """The entries of ``state`` that ``from_reference`` read (under ``prefix``, keys kept; for
    Caffe2 the blobs of one prefix) and the prefix that :func:`to_reference` writes them with."""
    if layout == "caffe2":
        from .compat.caffe2 import find_prefixes

        found = find_prefixes(state)
        blob = prefix if prefix is not None else found[0]
        mine = {
            k: v for k, v in state.items()
            if k.startswith(blob) and _CAFFE2_BLOB.fullmatch(k[len(blob) :])
        }  # fmt: skip
        return {k: torch.as_tensor(v) for k, v in mine.items()}, blob
    head = "" if prefix is None else prefix.rstrip(".") + "."
    return {k: torch.as_tensor(v) for k, v in state.items() if k.startswith(head)}, prefix


def _round_trip(
    block: Any, layout: str, source: dict[str, torch.Tensor], prefix: str | None
) -> tuple[float, str]:
    """(max |to_reference - loaded| over the keys, what else differs: "" if keys and dtypes do)."""
    dumped = block.to_reference(layout, prefix=prefix)
    unwritten = [k for k in source if k not in dumped]
    extra = [k for k in dumped if k not in source and not k.endswith("num_batches_tracked")]
    dtype = [k for k in source if k in dumped and dumped[k].dtype != source[k].dtype]
    shape = [k for k in source if k in dumped and dumped[k].shape != source[k].shape]
    diff = 0.0
    for k, t in source.items():
        if k in dumped and k not in shape and t.numel():
            diff = max(diff, (dumped[k].cpu().double() - t.double()).abs().max().item())
    problems = [f"{label} [{', '.join(keys)}]" for label, keys in
                (("keys not written back", unwritten), ("extra keys", extra),
                 ("dtype changed", dtype), ("shape changed", shape)) if keys]  # fmt: skip
    return diff, "; ".join(problems)


def _mmcv_reference(block: Any) -> tuple[torch.nn.Module | None, str]:
    """mmcv's ``NonLocal{1,2,3}d`` configured as ``block`` (mode, C', sub_sample, norm,
    use_scale), and its description; ``(None, why not)`` when mmcv cannot express it."""
    import mmcv.cnn

    c, inner, dims = block.in_channels, block.inter_channels, block.dims
    reduction = next((r for r in range(1, c + 1) if max(c // r, 1) == inner), None)
    if reduction is None:
        return None, f"mmcv cannot express C' = {inner} with C = {c} (max(C // reduction, 1))"
    if block.mode == "embedded_gaussian" and block.scale not in ("inner", None):
        return None, f"mmcv has no temperature like scale={block.scale!r}"
    norm_cfg = {"type": {1: "BN1d", 2: "BN", 3: "BN3d"}[dims]} if block.norm is not None else None
    use_scale = block.scale == "inner" if block.mode == "embedded_gaussian" else True
    module = getattr(mmcv.cnn, f"NonLocal{dims}d")(
        c, reduction=reduction, use_scale=use_scale, mode=block.mode,
        sub_sample=block.sub_sample, norm_cfg=norm_cfg,
    )  # fmt: skip
    version = (
        version_of("mmcv") if version_of("mmcv") != "not installed" else version_of("mmcv-lite")
    )
    return module, (
        f"mmcv.cnn.NonLocal{dims}d({c}, reduction={reduction}, mode={block.mode!r}, "
        f"sub_sample={block.sub_sample}, norm_cfg={norm_cfg}, use_scale={use_scale}) "
        f"(mmcv {version}), the checkpoint's tensors loaded strictly"
    )


def _reference_module(
    block: Any, layout: str, source: dict[str, torch.Tensor], prefix: str | None
) -> tuple[torch.nn.Module | None, str]:
    """The layout's own module holding ``source`` (prefix stripped), or (None, why not)."""
    if layout not in CHECK_REFERENCES:
        return None, f"not installed: {_NO_REFERENCE[layout]}"
    module_name, dist = CHECK_REFERENCES[layout]
    if importable(module_name) != "yes":
        return None, f"not installed: {module_name} (pip install {dist})"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module, what = _mmcv_reference(block)
    if module is None:
        return None, f"not compared: {what}"
    head = "" if prefix is None else prefix.rstrip(".") + "."
    state = {k[len(head) :]: v for k, v in source.items()}
    module.load_state_dict({**module.state_dict(), **state}, strict=True)
    return module, what


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def check(
    checkpoint: Path,
    layout: str,
    *,
    dims: int | None = None,
    mode: str | None = None,
    prefix: str | None = None,
    key: str | None = None,
    scale: str | None = None,
    device: str = "cpu",
    seed: int = 0,
    size: int = 8,
) -> int:
    """Import a checkpoint with ``from_reference``, print what was built, run it and compare.

    The block built from the checkpoint's weights (:meth:`NonLocalBlock2d.from_reference`, the
    class chosen by ``dims`` or by the rank of the conv weights) runs on a random float64 input
    (2, C, size, ...) in eval mode. Printed, each against a tolerance:

    - the round trip: ``block.to_reference(layout)`` against the loaded tensors (exact: keys,
      dtypes, values);
    - where the layout's own module is installed (mmcv: ``mmcv.cnn.NonLocal1d/2d/3d``), that
      module with the same weights and options: max |z - z_reference| (:data:`CHECK_ATOL`);
    - the naive bmm+softmax block (:mod:`nlgraph._naive`) built from the loaded block's options:
      checks nlgraph's kernels on these weights, not the layout's semantics.

    Args:
        checkpoint (Path): a file ``torch.load(weights_only=True)`` reads.
        layout (str): one of :data:`nlgraph.compat.LAYOUTS`.
        dims (int, optional): 1, 2 or 3. (default: from the weights)
        mode (str, optional): the pairwise mode. (default: from the keys; see from_reference)
        prefix (str, optional): the block's module path in a larger state_dict (Caffe2: the
            blob prefix).
        key (str, optional): the entry of the file holding the state_dict.
        scale (str, optional): ``"inner"``, ``"input"`` or ``"none"``, the softmax temperature
            that the checkpoint's module used. (default: the layout's)
        device (str): where the modules run. (default: ``"cpu"``)
        seed (int): seed of the random input. (default: ``0``)
        size (int): the side of the input map. (default: ``8``)

    Returns:
        int: 0 when every comparison passes, 1 otherwise.

    Raises:
        CheckError: a bad argument: "--layout: expected one of 'alexhex7', ..., got 'mmvc'", a
            missing or unreadable file, keys that do not match the layout.
    """
    from .compat import LAYOUTS, from_reference

    if layout not in LAYOUTS:
        listed = ", ".join(repr(name) for name in LAYOUTS)
        raise CheckError(f"--layout: expected one of {listed}, got {layout!r}")
    if scale is not None and scale not in CHECK_SCALES:
        raise CheckError(f"--scale: expected one of {', '.join(CHECK_SCALES)}, got {scale!r}")
    if size < 2:
        raise CheckError(f"--size: expected an int >= 2 (the pooling window), got {size}")
    if (why := device_error(device)) is not None:
        raise CheckError(why)
    state, where = load_checkpoint(Path(checkpoint), key)
    overrides: dict[str, Any] = {} if scale is None else {"scale": CHECK_SCALES[scale]}
    classes = {1: NonLocalBlock1d, 2: NonLocalBlock2d, 3: NonLocalBlock3d}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if dims is None:
                block: Any = from_reference(state, layout, mode=mode, prefix=prefix, **overrides)
            else:
                if dims not in classes:
                    raise CheckError(f"--dims: expected one of 1, 2, 3, got {dims}")
                block = classes[dims].from_reference(
                    state, layout, mode=mode, prefix=prefix, **overrides
                )
        except CheckError:
            raise
        except (ValueError, TypeError) as exc:
            raise _as_flag(exc) from None
    source, dump_prefix = _layout_tensors(state, layout, prefix)
    try:
        trip, problems = _round_trip(block, layout, source, dump_prefix)
    except ValueError as exc:  # the layout cannot express an override, e.g. mmcv --scale input
        flag = "--scale" if scale is not None else "--layout"
        raise CheckError(re.sub(r"^block\b", flag, str(exc).splitlines()[0])) from None
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in source.values()})
    shown = f"{checkpoint}{where}" + (f", prefix {prefix!r}" if prefix is not None else "")
    print(f"checkpoint : {shown} ({len(source)} tensors read, {', '.join(dtypes)})")
    print(f"layout     : {layout}")
    for w in caught:
        print(f"note       : {str(w.message).splitlines()[0]}")
    print(f"built      : {block!r}")
    print(
        f"block      : mode {block.mode!r}, C = {block.in_channels}, C' = {block.inter_channels}, "
        f"{block.dims}-D, sub_sample={block.sub_sample}, scale={block.scale!r}, "
        f"norm={'batch' if block.norm is not None else None}"
    )
    rows: list[list[str]] = []
    failed: list[str] = []

    def add(label: str, diff: float, tolerance: float, extra: str = "") -> None:
        ok = math.isfinite(diff) and diff <= tolerance and not extra
        rows.append([label, f"{diff:.2e}", "exact" if tolerance == 0 else f"{tolerance:g}",
                     "PASS" if ok else "FAIL"])  # fmt: skip
        if not ok:
            failed.append(label + (f" ({extra})" if extra else ""))

    add(f"round trip: to_reference({layout!r}) == checkpoint", trip, 0.0, problems)
    dev = torch.device(device)
    block = block.to(device=dev, dtype=torch.float64).eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, block.in_channels, *(size,) * block.dims, generator=gen, dtype=torch.float64)
    x = x.to(dev)
    print(f"input      : random {tuple(x.shape)} float64 (seed {seed}) on {dev}, eval mode")
    with torch.no_grad():
        z = block(x)
        try:
            reference, what = _reference_module(block, layout, source, prefix)
        except RuntimeError as exc:  # the module refuses the tensors: the conversion is off
            reference, what = None, f"{layout} module: load_state_dict failed"
            add(what, math.nan, CHECK_ATOL, str(exc).strip().splitlines()[0])
        if reference is None:
            print(f"reference  : {what}; its outputs are not compared")
        else:
            print(f"reference  : {what}")
            reference = reference.to(device=dev, dtype=torch.float64).eval()
            add(
                f"{layout} module, same weights: z vs z_ref", _max_diff(z, reference(x)), CHECK_ATOL
            )
        naive = naive_from_block(block).eval()
        add("naive block*: z vs z_naive", _max_diff(z, naive(x)), CHECK_ATOL)
    print(table(["comparison", "max abs diff", "tolerance", "result"], rows))
    print(
        "* the naive bmm+softmax block (nlgraph._naive) built from the loaded block's own "
        "options: it checks nlgraph's kernels on these weights, not the conversion"
    )
    if failed:
        print(f"check FAILED: {'; '.join(failed)}")
        return 1
    print("check passed")
    return 0
