"""Choosing a kernel for :func:`nlgraph.ops.nonlocal_aggregate`.

``backend="auto"`` walks a priority list and takes the first kernel with no
``not_supported_reasons``; it reads shapes, dtypes, devices and the graph kind only, never
tensor values (no host synchronisation, safe under ``torch.compile``). The full graph runs on
``dense``; a RegularGraph or COOGraph on ``csr`` (sparse-matrix products: 2-4x faster than the
ELL gather of ``regular`` from N=4096 on, and never slower from N=256, see
``benchmarks/results/kernels.md``) in float32/float64 outside ``torch.compile``, else on
``regular`` (RegularGraph) or ``coo`` (COOGraph). Any kernel can be named explicitly when it
supports the graph (e.g. the full graph through ``regular``, ``coo`` or ``csr``, which is how
the kernels are checked against each other). The fused ``triton`` kernel runs when named
(``backend="triton"``: CUDA tensors, or CPU tensors in Triton's interpreter); ``auto`` does not
pick it yet: it has run in the interpreter only, and ``auto`` takes it on CUDA once the GPU
benchmark (``benchmarks/gpu.py``) shows where it wins.
"""

from __future__ import annotations

from .inputs import AggregateInputs
from .kernels.base import Kernel
from .kernels.coo import COOKernel
from .kernels.csr import CSRKernel
from .kernels.dense import DenseKernel
from .kernels.regular import RegularKernel
from .kernels.triton_sparse import TritonKernel

__all__ = ["KERNELS", "priority_list", "select_kernel"]

#: Every kernel by NAME.
KERNELS: dict[str, type[Kernel]] = {
    DenseKernel.NAME: DenseKernel,
    RegularKernel.NAME: RegularKernel,
    COOKernel.NAME: COOKernel,
    CSRKernel.NAME: CSRKernel,
    TritonKernel.NAME: TritonKernel,
}


def priority_list(inp: AggregateInputs) -> list[type[Kernel]]:
    """Kernels to try for ``inp``, best first, by graph kind.

    The full graph always goes to ``dense`` (its fast paths beat gathering N' keys per query);
    sparse graphs to ``csr`` first, then ``regular`` (RegularGraph) or ``coo`` (COOGraph), which
    take the inputs ``csr`` declines (half precision, ``torch.compile`` tracing). The fused
    ``triton`` kernel is not in the list yet (module docstring).
    """
    kind = inp.graph_kind
    if kind == "full":
        return [DenseKernel]
    if kind == "regular":
        return [CSRKernel, RegularKernel, COOKernel]
    if kind == "coo":
        return [CSRKernel, COOKernel]
    return list(KERNELS.values())  # unknown kind: every kernel reports why not


def select_kernel(inp: AggregateInputs, backend: str = "auto") -> type[Kernel]:
    """The kernel that runs ``inp``.

    Raises:
        TypeError: ``inp`` is not an :class:`AggregateInputs`.
        ValueError: ``backend`` is unknown, or names a kernel that cannot run ``inp`` (with its
            reasons).
        NotImplementedError: ``backend="auto"`` and no kernel can run ``inp`` (every kernel's
            reasons listed).
    """
    if not isinstance(inp, AggregateInputs):
        raise TypeError(f"inp: expected an AggregateInputs, got {type(inp).__name__}")
    if backend == "auto":
        reasons = {}
        for kernel in priority_list(inp):
            why = kernel.not_supported_reasons(inp)
            if not why:
                return kernel
            reasons[kernel.NAME] = why
        listed = "\n".join(f"  {name}: {'; '.join(why)}" for name, why in reasons.items())
        raise NotImplementedError(f"backend: no kernel supports these inputs:\n{listed}")
    if backend not in KERNELS:
        names = ", ".join(repr(n) for n in ("auto", *KERNELS))
        raise ValueError(f"backend: expected one of {names}, got {backend!r}")
    kernel = KERNELS[backend]
    why = kernel.not_supported_reasons(inp)
    if why:
        raise ValueError(f"backend: {backend!r} cannot run these inputs: {'; '.join(why)}")
    return kernel
