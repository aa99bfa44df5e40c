"""Small helpers shared by the command line (:mod:`nlgraph.cli`) and its ``check`` command."""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from collections.abc import Sequence
from importlib import metadata

import torch

__all__ = ["device_error", "importable", "table", "version_of"]


def version_of(dist: str) -> str:
    """The installed version of distribution ``dist``, or ``"not installed"``."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def importable(module: str) -> str:
    """``"yes"`` when ``module`` imports, else ``"no"`` with the reason of a broken build."""
    if importlib.util.find_spec(module) is None:
        return "no"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(module)
    except Exception as exc:  # a broken build (ABI mismatch) is worth reporting, not raising
        return f"no ({type(exc).__name__}: {exc})".splitlines()[0][:120]
    return "yes"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines.append("-+-".join("-" * w for w in widths))
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def device_error(device: str) -> str | None:
    """Why ``device`` cannot be used here (``"--device: expected ..., got ..."``), or None."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        return f"--device: expected a device such as cpu or cuda:0, got {device!r}"
    if dev.type not in ("cpu", "cuda"):
        return f"--device: expected cpu or cuda, got {device!r}"
    if dev.type == "cuda" and not torch.cuda.is_available():
        return f"--device: expected cpu (no CUDA device is available here), got {device!r}"
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        last = torch.cuda.device_count() - 1
        return f"--device: expected cuda:0 to cuda:{last}, got {device!r}"
    return None
