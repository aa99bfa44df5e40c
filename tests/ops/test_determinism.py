"""Bitwise repeatability of every kernel under ``torch.use_deterministic_algorithms(True)``.

On CPU every kernel's forward and backward must give identical bits twice in a row: y and the
gradients of q, k, v, the concatenation weight and ``edge_bias`` (the ``index_add``/``scatter``
paths of ``regular``, ``coo`` and ``csr``'s concatenation, ``coo``'s segment softmax,
``csr``'s sparse products, ``dense``'s fused attention and sorted suffix sums, and the triton
kernel in Triton's interpreter at a tiny shape, in one softmax and one mean mode: it has no
atomics by construction). The CPU shapes (B·E·C ≈ 41k gathered elements, above PyTorch's
parallel grain size of 32768) let its parallel CPU loops split the work across threads. Under
the flag PyTorch's CPU ``index_add`` is about 10x slower than without (a serial deterministic
path), so the shapes stay at that. The flag also
fills uninitialised memory with NaN, so a kernel reading a slot it never wrote shows up as NaN.

On CUDA (skipped here without a device) the kernels declared ``IS_DETERMINISTIC`` must repeat
bitwise under the flag, ``dense``'s concatenation raises PyTorch's own error for ``cumsum``, and
``csr`` (cuSPARSE, outside the flag's reach) is declined: ``backend="auto"`` routes around it and
naming it raises ``ValueError`` (see :mod:`nlgraph.ops.kernels.base`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor

from nlgraph import Pairwise, nonlocal_aggregate
from nlgraph.graphs import COOGraph, RegularGraph
from nlgraph.ops import AggregateInputs, select_kernel
from nlgraph.ops.dispatch import KERNELS
from nlgraph.ops.kernels.base import Kernel, deterministic_flag_set
from tests.helpers import MODES, SOFTMAX_MODES, graph_to

HAS_TRITON = importlib.util.find_spec("triton") is not None
RUNS = [
    ("dense", "full"),
    ("regular", "regular"),
    ("regular", "regular-per-sample"),
    ("coo", "regular"),
    ("coo", "coo"),
    ("csr", "regular"),
    ("csr", "coo"),
    ("triton", "regular"),
    ("triton", "coo"),
]


@pytest.fixture(autouse=True)
def _deterministic(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` for the test, the previous state after; the
    interpreter for the triton kernel on CPU tensors."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _case(
    kind: str, mode: str, device: str, tiny: bool
) -> tuple[tuple[Tensor, ...], Pairwise, Any, Tensor | None]:
    """Leaf q, k, v, the pairwise function, the graph (with duplicate edges and a query without
    any) and an edge bias (softmax modes), all requiring grad."""
    gen = torch.Generator().manual_seed(0)
    b, n, m, k, c = (2, 12, 8, 4, 5) if tiny else (2, 160, 96, 8, 16)
    q, key, v = (torch.randn(b, r, c, generator=gen) for r in (n, m, m))
    graph: Any = "full"
    bias_shape: tuple[int, ...] = (b, n, m)
    if kind.startswith("regular"):
        g = b if kind.endswith("per-sample") else 1
        mask = torch.rand(g, n, k, generator=gen) > 0.2
        mask[:, 0] = False
        graph = RegularGraph(torch.randint(0, m, (g, n, k), generator=gen), m, mask)
        bias_shape = (b, n, k)
    elif kind == "coo":
        dst = torch.randint(1, n, (n * k,), generator=gen)  # query 0 without edges
        src = torch.randint(0, m, (n * k,), generator=gen)
        edge_index = torch.stack([torch.cat([src, src[:7]]), torch.cat([dst, dst[:7]])])
        graph = COOGraph(edge_index, n, m)
        bias_shape = (b, edge_index.shape[1])
    bias = torch.randn(bias_shape, generator=gen) if mode in SOFTMAX_MODES else None
    cw = torch.randn(2 * c, generator=gen) if mode == "concatenation" else None
    leaves = [t.to(device).requires_grad_() for t in (q, key, v)]
    if cw is not None:
        cw = cw.to(device).requires_grad_()
        leaves.append(cw)
    if bias is not None:
        bias = bias.to(device).requires_grad_()
        leaves.append(bias)
    graph = graph_to(graph, device)
    scale = 0.25 if mode == "embedded_gaussian" else 1.0
    return tuple(leaves), Pairwise(mode, scale, cw), graph, bias


def _run_twice(kernel: str, kind: str, mode: str, device: str, tiny: bool) -> None:
    leaves, pw, graph, bias = _case(kind, mode, device, tiny)
    q, k, v = leaves[:3]
    why = KERNELS[kernel].not_supported_reasons(AggregateInputs(q, k, v, pw, graph, False, bias))
    if why:
        pytest.skip(f"{kernel}: {'; '.join(why)}")
    g = torch.randn(q.shape[0], q.shape[1], v.shape[-1], generator=torch.Generator().manual_seed(1))
    runs = []
    for _ in range(2):
        y = nonlocal_aggregate(q, k, v, pw, graph=graph, backend=kernel, edge_bias=bias)
        grads = torch.autograd.grad(y, leaves, g.to(device))
        runs.append((y, *grads))
    names = ["y", "dq", "dk", "dv", *(["dconcat"] if pw.concat_weight is not None else [])]
    names += ["dbias"] if bias is not None else []
    for name, first, second in zip(names, *runs):
        assert not torch.isnan(first).any(), f"{kernel}: NaN in {name} (uninitialised memory?)"
        assert torch.equal(first, second), f"{kernel}: {name} differs between two runs"


CASES = [
    (kernel, kind, mode)
    for kernel, kind in RUNS
    for mode in (("embedded_gaussian", "concatenation") if kernel == "triton" else MODES)
]
CUDA_CASES = [(kernel, kind, mode) for kernel, kind in RUNS for mode in MODES]


@pytest.mark.parametrize(("kernel", "kind", "mode"), CASES, ids=["-".join(c) for c in CASES])
def test_bitwise_repeatable_on_cpu(kernel: str, kind: str, mode: str) -> None:
    if kernel == "triton" and not HAS_TRITON:
        pytest.skip("needs the optional package 'triton' (nlgraph[triton])")
    _run_twice(kernel, kind, mode, "cpu", tiny=kernel == "triton")


def test_return_attention_repeatable_on_cpu() -> None:
    # csr scatters the weights of an unsorted COOGraph back to edge order (index_put).
    leaves, pw, graph, _ = _case("coo", "embedded_gaussian", "cpu", tiny=False)
    q, k, v = leaves[:3]
    for kernel in ("coo", "csr"):
        a = nonlocal_aggregate(q, k, v, pw, graph=graph, backend=kernel, return_attention=True)
        b = nonlocal_aggregate(q, k, v, pw, graph=graph, backend=kernel, return_attention=True)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1].weights, b[1].weights)


# --------------------------------------------------------------------------- declarations
def _meta_inputs() -> AggregateInputs:
    """float32 inputs on the meta device: a stand-in accelerator for the capability checks."""
    q, k, v = (torch.empty(2, 16, 4, device="meta") for _ in range(3))
    graph = RegularGraph(torch.zeros(1, 16, 3, dtype=torch.long), 16)
    return AggregateInputs(q, k, v, Pairwise("embedded_gaussian"), graph)


def test_nondeterministic_kernels_are_declined_off_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Kernel, "SUPPORTED_DEVICES", ("cpu", "cuda", "meta"))
    for name in ("csr", "regular", "coo"):  # csr overrides nothing device-related
        monkeypatch.setattr(KERNELS[name], "SUPPORTED_DEVICES", ("cpu", "cuda", "meta"))
    inp = _meta_inputs()
    assert deterministic_flag_set()
    declined = {name for name, kern in KERNELS.items() if not kern.IS_DETERMINISTIC}
    assert declined == {"csr"}
    why = KERNELS["csr"].not_supported_reasons(inp)
    assert any("torch.use_deterministic_algorithms(True)" in r for r in why)
    assert not KERNELS["regular"].not_supported_reasons(inp)
    assert select_kernel(inp).NAME == "regular"  # auto routes around csr
    with pytest.raises(ValueError, match=r"^backend: 'csr' cannot run.*nondeterministic"):
        select_kernel(inp, "csr")
    torch.use_deterministic_algorithms(True, warn_only=True)  # PyTorch only warns: so do we
    assert not deterministic_flag_set()
    assert select_kernel(inp).NAME == "csr"
    torch.use_deterministic_algorithms(False)
    assert select_kernel(inp).NAME == "csr"


def test_cpu_inputs_never_declined_for_determinism() -> None:
    leaves, pw, graph, _ = _case("regular", "embedded_gaussian", "cpu", tiny=True)
    inp = AggregateInputs(leaves[0], leaves[1], leaves[2], pw, graph)
    assert select_kernel(inp).NAME == "csr"  # bitwise repeatable on CPU (tested above)


# --------------------------------------------------------------------------- CUDA
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
@pytest.mark.parametrize(
    ("kernel", "kind", "mode"), CUDA_CASES, ids=["-".join(c) for c in CUDA_CASES]
)
def test_cuda_deterministic_or_declined(
    kernel: str, kind: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # compiled triton kernels on the GPU
    if kernel == "triton" and not HAS_TRITON:
        pytest.skip("needs the optional package 'triton' (nlgraph[triton])")
    if not KERNELS[kernel].IS_DETERMINISTIC:
        leaves, pw, graph, bias = _case(kind, mode, "cuda", tiny=True)
        with pytest.raises(ValueError, match="nondeterministic on cuda"):
            nonlocal_aggregate(
                leaves[0], leaves[1], leaves[2], pw, graph=graph, backend=kernel, edge_bias=bias
            )
        return
    if kernel == "dense" and mode == "concatenation":  # PyTorch has no deterministic cumsum
        leaves, pw, graph, bias = _case(kind, mode, "cuda", tiny=True)
        with pytest.raises(RuntimeError, match="deterministic"):
            nonlocal_aggregate(leaves[0], leaves[1], leaves[2], pw, graph=graph, backend=kernel)
        return
    _run_twice(kernel, kind, mode, "cuda", tiny=False)


@needs_cuda
def test_cuda_auto_routes_around_csr() -> None:
    leaves, pw, graph, _ = _case("regular", "embedded_gaussian", "cuda", tiny=True)
    inp = AggregateInputs(leaves[0], leaves[1], leaves[2], pw, graph)
    assert select_kernel(inp).NAME == "regular"
    torch.use_deterministic_algorithms(False)
    assert select_kernel(inp).NAME == "csr"
