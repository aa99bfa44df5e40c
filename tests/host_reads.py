"""Counting host reads: the operations that copy a tensor value back to the host.

A forward or backward that reads a value (``.item()``, ``bool(t)``, ``nonzero``, boolean
indexing, ``bincount``, a data-dependent ``repeat_interleave`` ...) synchronises with a CUDA
device and breaks ``torch.compile`` graphs. :func:`count_host_reads` records every such
operation dispatched while a function runs, on any device (on CPU the read is cheap, but the
same code would synchronise on CUDA).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HOST_READ_OPS", "count_host_reads"]

#: aten operations whose result depends on tensor values read back on the host.
HOST_READ_OPS = frozenset(
    {
        "_local_scalar_dense",
        "item",
        "is_nonzero",
        "nonzero",
        "nonzero_static",
        "argwhere",
        "masked_select",
        "bincount",
        "unique_consecutive",
        "_unique",
        "_unique2",
        "unique_dim",
        "histc",
    }
)


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if name in HOST_READ_OPS:
            self.reads.append(name)
        elif name == "repeat_interleave" and func._overloadname in ("Tensor", "self_Tensor"):
            if kwargs.get("output_size") is None:  # tensor repeats: the output length is read
                self.reads.append(name)
        elif name in ("index", "index_put", "index_put_", "_index_put_impl_"):
            indices = args[1]
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
                self.reads.append(f"{name} (boolean mask)")
        return func(*args, **kwargs)


def count_host_reads(fn: Callable[[], Any]) -> list[str]:
    """The host-reading operations (by aten name) dispatched while ``fn()`` runs, in order.

    ``Tensor.tolist`` and ``Tensor.numpy`` read CPU data without going through the dispatcher;
    they are wrapped for the duration and recorded too.
    """
    recorder = _Recorder()
    originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}

    def wrap(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            recorder.reads.append(name)
            return original(self, *args, **kwargs)

        return read

    try:
        for name, original in originals.items():
            setattr(torch.Tensor, name, wrap(name, original))
        with recorder:
            fn()
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    return recorder.reads
