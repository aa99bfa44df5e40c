"""The fused ``triton`` kernel (Triton's interpreter on CPU tensors) against the fp64 reference.

Every test runs with TRITON_INTERPRET=1 (an autouse fixture): the kernels are built on first
use and keyed by that variable, so setting it after ``import nlgraph`` is enough, and it works
even though ``triton`` itself was imported before (here by ``importorskip``) in compiled mode.
The interpreter is slow, so every case is tiny (N = 11, N' = 7, k = 4, C = 5, Cv = 3).

Tolerances against the fp64 reference: float64 1e-10, float32 1e-4 (the kernel's declared
ATOL/RTOL). Half precision (float32 accumulation, operands and y rounded to 8 or 11 bits)
meets the declared ATOL/RTOL on y (float16 1e-2, bfloat16 5e-2); its gradients, which go
through the rounded y and per-edge weights, are checked at twice that.
"""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

import pytest
import torch

pytest.importorskip("triton", reason="needs the optional package 'triton' (nlgraph[triton])")

from nlgraph import Pairwise, nonlocal_aggregate  # noqa: E402
from nlgraph.graphs import COOGraph, RegularGraph  # noqa: E402
from nlgraph.ops import AggregateInputs, select_kernel  # noqa: E402
from nlgraph.ops.dispatch import KERNELS, priority_list  # noqa: E402
from nlgraph.ops.kernels import triton_sparse  # noqa: E402
from nlgraph.ops.kernels.triton_sparse import TritonKernel  # noqa: E402
from tests.helpers import (  # noqa: E402
    MODES,
    SOFTMAX_MODES,
    reference_aggregate,
    reference_scores,
    reference_weights,
)

F64 = torch.float64
B, N, M, K, C, CV = 2, 11, 7, 4, 5, 3
GRAPHS = ["regular-mask-shared", "regular-full-per-sample", "regular-mask-per-sample", "coo"]


@pytest.fixture(autouse=True)
def _interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton's interpreter for CPU tensors (read when the kernels are first built)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


# --------------------------------------------------------------------------- cases
Edges = list[list[tuple[int, int, int]]]  # per sample: (key j, query i, bias slot)


def _graph(kind: str) -> tuple[RegularGraph | COOGraph, Edges]:
    """A graph and its per-sample edge lists. Regular graphs may repeat a key in a row, query 0
    of a masked one has no valid slot; the COOGraph is unsorted, repeats edge 0 and leaves
    query 2 without edges."""
    if kind == "coo":
        dst = torch.randint(0, N, (3 * N,))
        dst[dst == 2] = 3
        src = torch.randint(0, M, (3 * N,))
        edge_index = torch.stack([torch.cat([src, src[:1]]), torch.cat([dst, dst[:1]])])
        edges = [(int(j), int(i), e) for e, (j, i) in enumerate(edge_index.t())]
        return COOGraph(edge_index, N, M), [edges] * B
    g = 1 if kind.endswith("shared") else B
    index = torch.randint(0, M, (g, N, K))
    mask = None
    if "mask" in kind:
        mask = torch.rand(g, N, K) > 0.3
        mask[:, 0] = False
    edges = [
        [
            (int(index[s, i, l]), i, i * K + l)
            for i in range(N)
            for l in range(K)
            if mask is None or mask[s, i, l]
        ]
        for s in range(g)
    ]
    return RegularGraph(index, M, mask), edges * (B // g)


def _pairwise(mode: str, dtype: torch.dtype = F64) -> tuple[Pairwise, dict]:
    if mode == "concatenation":
        cw = torch.randn(2 * C, dtype=F64)
        return Pairwise(mode, concat_weight=cw.to(dtype)), dict(concat_u=cw[:C], concat_w=cw[C:])
    scale = 0.43 if mode == "embedded_gaussian" else 1.0
    return Pairwise(mode, scale=scale), dict(scale=scale)


def _qkv(dtype: torch.dtype = F64, shrink: float = 1.0) -> list[torch.Tensor]:
    ts = (torch.randn(B, N, C), torch.randn(B, M, C) * shrink, torch.randn(B, M, CV))
    return [t.to(dtype).requires_grad_(True) for t in ts]


def _reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mode: str,
    ref_kw: dict,
    edges: Edges,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """fp64 y over the edge lists: :func:`reference_aggregate` on the neighbour mask when no
    edge repeats and there is no bias; else its scores and normalisation with multiplicities
    (parallel edges j → i with biases β_e act as one edge with bias log Σ_e exp β_e; an edge
    whose bias is -inf is no edge)."""
    q, k, v = q.double(), k.double(), v.double()
    count = torch.zeros(B, N, M, dtype=F64)
    for s, es in enumerate(edges):
        for j, i, _ in es:
            count[s, i, j] += 1
    if bias is None and count.max() <= 1:
        y, _ = reference_aggregate(q, k, v, mode, mask=count > 0, **ref_kw)
        return y
    scores = reference_scores(q, k, mode, **ref_kw)
    if mode not in SOFTMAX_MODES:
        w = count * scores / count.sum(-1, keepdim=True).clamp_min(1)
        return torch.einsum("bnm,bmc->bnc", w, v)
    beta = None if bias is None else bias.double().expand(B, *bias.shape[1:]).reshape(B, -1)
    prior = []
    for s, es in enumerate(edges):
        slots = defaultdict(list)
        for j, i, slot in es:
            slots[(i, j)].append(slot)
        for i in range(N):
            for j in range(M):
                if not slots[(i, j)]:
                    prior.append(torch.tensor(-torch.inf, dtype=F64))
                elif beta is None:
                    prior.append(count[s, i, j].log())
                elif bool(torch.isinf(beta[s, slots[(i, j)]]).all()):
                    prior.append(torch.tensor(-torch.inf, dtype=F64))
                else:
                    prior.append(torch.logsumexp(beta[s, slots[(i, j)]], 0))
    log_mult = torch.stack(prior).view(B, N, M)
    live = log_mult > -torch.inf
    w = reference_weights(scores + log_mult.masked_fill(~live, 0.0), mode, live)
    return torch.einsum("bnm,bmc->bnc", w, v)


def _check(
    leaves: list[torch.Tensor],
    y: torch.Tensor,
    want: torch.Tensor,
    ref_leaves: list[torch.Tensor],
    atol: float,
    rtol: float,
    grad_scale: float = 1.0,
) -> None:
    """y and the gradients of Σ y·g with respect to ``leaves`` against the reference's."""
    torch.testing.assert_close(y.double(), want, atol=atol, rtol=rtol)
    g = torch.randn(y.shape, dtype=F64)
    got = torch.autograd.grad(y, leaves, g.to(y.dtype))
    ref = torch.autograd.grad(want, ref_leaves, g)
    for a, b in zip(got, ref):
        assert a.dtype == y.dtype and bool(torch.isfinite(a).all())
        torch.testing.assert_close(a.double(), b, atol=atol * grad_scale, rtol=rtol * grad_scale)


def _doubles(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach().double().requires_grad_(True) for t in ts]


# --------------------------------------------------------------------------- reference
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", GRAPHS)
@pytest.mark.parametrize("mode", MODES)
def test_matches_reference(mode: str, kind: str, dtype: torch.dtype) -> None:
    graph, edges = _graph(kind)
    pw, ref_kw = _pairwise(mode, dtype)
    leaves = _qkv(dtype)
    y = nonlocal_aggregate(*leaves, pw, graph=graph, backend="triton")
    assert y.dtype == dtype and y.shape == (B, N, CV)
    ref_leaves = _doubles(leaves)
    want = _reference(*ref_leaves, mode, ref_kw, edges)
    _check(leaves, y, want, ref_leaves, TritonKernel.ATOL[dtype], TritonKernel.RTOL[dtype])
    if kind != "regular-full-per-sample":  # a query without neighbour: y = 0 exactly
        empty = 2 if kind == "coo" else 0
        assert torch.equal(y[:, empty], torch.zeros_like(y[:, empty]))


@pytest.mark.parametrize("lead", [1, B])
@pytest.mark.parametrize("kind", ["regular-mask-per-sample", "coo"])
@pytest.mark.parametrize("mode", SOFTMAX_MODES)
def test_edge_bias(mode: str, kind: str, lead: int) -> None:
    """A differentiable bias per edge; every edge of query 5 gets -inf: y_5 = 0, no NaN."""
    graph, edges = _graph(kind)
    pw, ref_kw = _pairwise(mode)
    shape = (lead, graph.num_edges) if isinstance(graph, COOGraph) else (lead, N, K)
    bias = torch.randn(shape, dtype=F64)
    if isinstance(graph, COOGraph):
        bias[:, graph.edge_index[1] == 5] = -torch.inf
    else:
        bias[:, 5] = -torch.inf
    bias.requires_grad_(True)
    leaves = _qkv()
    y = nonlocal_aggregate(*leaves, pw, graph=graph, backend="triton", edge_bias=bias)
    ref_leaves = _doubles([*leaves, bias])
    want = _reference(*ref_leaves[:3], mode, ref_kw, edges, ref_leaves[3])
    _check([*leaves, bias], y, want, ref_leaves, 1e-10, 1e-10)
    assert torch.equal(y[:, 5], torch.zeros_like(y[:, 5]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["regular-mask-shared", "coo"])
@pytest.mark.parametrize("mode", MODES)
def test_half_precision(mode: str, kind: str, dtype: torch.dtype) -> None:
    graph, edges = _graph(kind)
    pw, ref_kw = _pairwise(mode, dtype)
    leaves = _qkv(dtype, shrink=0.5)  # logits O(1), as in a trained network
    y = nonlocal_aggregate(*leaves, pw, graph=graph, backend="triton")
    assert y.dtype == dtype
    ref_leaves = _doubles(leaves)
    want = _reference(*ref_leaves, mode, ref_kw, edges)
    atol, rtol = TritonKernel.ATOL[dtype], TritonKernel.RTOL[dtype]
    _check(leaves, y, want, ref_leaves, atol, rtol, grad_scale=2.0)


# --------------------------------------------------------------------------- other kernels
@pytest.mark.parametrize("kind", ["regular-mask-per-sample", "coo"])
@pytest.mark.parametrize("mode", MODES)
def test_equals_regular_and_csr_kernels(mode: str, kind: str) -> None:
    graph, _ = _graph(kind)
    pw, _ = _pairwise(mode)
    if pw.concat_weight is not None:
        pw = Pairwise(mode, concat_weight=pw.concat_weight.requires_grad_(True))
    bias = None
    if mode in SOFTMAX_MODES:
        shape = (B, graph.num_edges) if isinstance(graph, COOGraph) else (B, N, K)
        bias = torch.randn(shape, dtype=F64, requires_grad=True)
    leaves = _qkv()
    params = [*leaves] + [t for t in (bias, pw.concat_weight) if t is not None]
    g = torch.randn(B, N, CV, dtype=F64)
    out = {}
    for backend in ("triton", "regular" if isinstance(graph, RegularGraph) else "csr"):
        y = nonlocal_aggregate(*leaves, pw, graph=graph, backend=backend, edge_bias=bias)
        out[backend] = (y, torch.autograd.grad(y, params, g))
    (y_t, g_t), (y_o, g_o) = out.values()
    torch.testing.assert_close(y_t, y_o, atol=1e-12, rtol=1e-12)
    for a, b in zip(g_t, g_o):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_nan_behind_padding_does_not_leak(mode: str) -> None:
    """Padding slots point at key 0, which only they use; its key, value and bias are NaN."""
    index = 1 + torch.randint(0, M - 1, (1, N, K))
    mask = torch.rand(1, N, K) > 0.4
    mask[0, 3] = False
    graph = RegularGraph(index.masked_fill(~mask, 0), M, mask)
    edges = [[(int(index[0, i, l]), i, 0) for i in range(N) for l in range(K) if mask[0, i, l]]]
    pw, ref_kw = _pairwise(mode)
    q, k, v = _qkv()
    with torch.no_grad():
        k[:, 0], v[:, 0] = torch.nan, torch.nan
    bias = None
    if mode in SOFTMAX_MODES:
        bias = torch.zeros(1, N, K, dtype=F64).masked_fill(~mask, torch.nan).requires_grad_(True)
    y = nonlocal_aggregate(q, k, v, pw, graph=graph, backend="triton", edge_bias=bias)
    want = _reference(q, k.nan_to_num(0.0), v.nan_to_num(0.0), mode, ref_kw, edges * B)
    torch.testing.assert_close(y, want.detach(), atol=1e-10, rtol=1e-10)
    leaves = [t for t in (q, k, v, bias) if t is not None]
    grads = torch.autograd.grad(y.square().sum(), leaves)
    assert all(bool(torch.isfinite(gr).all()) for gr in grads)
    assert torch.equal(grads[1][:, 0], torch.zeros(B, C, dtype=F64))
    assert torch.equal(grads[2][:, 0], torch.zeros(B, CV, dtype=F64))
    if bias is not None:
        assert torch.equal(grads[3][~mask], torch.zeros_like(grads[3][~mask]))


def test_deterministic_and_cached() -> None:
    """Bitwise-equal repeats (no atomics); the pattern is built once per graph object."""
    graph, _ = _graph("coo")
    leaves = _qkv()
    runs = []
    for _ in range(2):
        y = nonlocal_aggregate(*leaves, "gaussian", graph=graph, backend="triton")
        runs.append((y, torch.autograd.grad(y.square().sum(), leaves)))
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    assert isinstance(graph._cache["triton"], triton_sparse.TritonPattern)


def test_empty_batch_and_no_value_grad() -> None:
    graph, _ = _graph("regular-mask-shared")
    q, k, v = (t[:0].detach() for t in _qkv())
    y = nonlocal_aggregate(q, k, v, "gaussian", graph=graph, backend="triton")
    assert y.shape == (0, N, CV)
    q, k, v = _qkv()
    y = nonlocal_aggregate(q, k.detach(), v.detach(), "dot_product", graph=graph, backend="triton")
    (dq,) = torch.autograd.grad(y.sum(), q)
    assert dq.shape == q.shape


# --------------------------------------------------------------------------- capabilities
def _inputs(kind: str = "coo") -> AggregateInputs:
    graph, _ = _graph(kind)
    q, k, v = (t.detach() for t in _qkv())
    return AggregateInputs(q, k, v, Pairwise("gaussian"), graph)


def test_registered_but_never_auto_on_cpu() -> None:
    assert KERNELS["triton"] is TritonKernel
    assert TritonKernel.REQUIRES == "triton" and TritonKernel.IS_DETERMINISTIC
    for kind in ("coo", "regular-mask-shared"):
        inp = _inputs(kind)
        assert TritonKernel.supports(inp)  # TRITON_INTERPRET=1
        assert TritonKernel not in priority_list(inp)
        assert select_kernel(inp) is not TritonKernel
        assert select_kernel(inp, "triton") is TritonKernel


def test_reasons_cpu_without_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET")
    assert TritonKernel.not_supported_reasons(_inputs()) == [
        "CPU tensors run only in Triton's interpreter (TRITON_INTERPRET=1)"
    ]
    with pytest.raises(ValueError, match=r"^backend: 'triton' cannot run .*TRITON_INTERPRET=1"):
        nonlocal_aggregate(*_qkv(), "gaussian", graph=_graph("coo")[0], backend="triton")


def test_reasons_without_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_sparse, "triton_available", lambda: False)
    inp = AggregateInputs(*(t.detach() for t in _qkv()), Pairwise("gaussian"), "full")
    assert TritonKernel.not_supported_reasons(inp) == [
        "graph='full' (supported: regular, coo)",
        "needs the optional package 'triton' (pip install \"nlgraph[triton]\")",
    ]


def test_imports_without_triton() -> None:
    """nlgraph imports and reports the missing package when ``import triton`` fails."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, nlgraph\n"
        "from nlgraph.graphs import COOGraph\n"
        "from nlgraph import Pairwise\n"
        "from nlgraph.ops import AggregateInputs\n"
        "from nlgraph.ops.kernels.triton_sparse import TritonKernel\n"
        "g = COOGraph(torch.tensor([[0], [0]]), 1, 1)\n"
        "x = torch.zeros(1, 1, 2)\n"
        "inp = AggregateInputs(x, x, x, Pairwise('gaussian'), g)\n"
        "print(*TritonKernel.not_supported_reasons(inp), sep='\\n')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "needs the optional package 'triton' (pip install \"nlgraph[triton]\")"
    ]
