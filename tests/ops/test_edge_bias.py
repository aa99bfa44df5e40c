"""``edge_bias`` (an additive logit per edge) on every kernel, against an fp64 loop reference."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from nlgraph import Pairwise, nonlocal_aggregate
from nlgraph.graphs import COOGraph, RegularGraph

F64 = torch.float64
SCALE = 0.37


def _reference(q, k, v, edges, bias):
    """y_i = Σ_e softmax_e(SCALE·q_i·k_j + β_e) v_j over the edges (j, i, β_e) into i."""
    b, n = q.shape[0], q.shape[1]
    out = torch.zeros(b, n, v.shape[-1], dtype=F64)
    for s in range(b):
        for i in range(n):
            into = [(j, beta[s]) for (j, t, beta) in edges if t == i]
            if not into:
                continue
            logits = torch.stack([SCALE * (q[s, i] @ k[s, j]) + beta for j, beta in into])
            w = torch.softmax(logits, 0)
            out[s, i] = sum(w[e] * v[s, j] for e, (j, _) in enumerate(into))
    return out


def _qkv(b=2, n=9, m=7, c=5, cv=3):
    return (
        torch.randn(b, n, c, dtype=F64, requires_grad=True),
        torch.randn(b, m, c, dtype=F64, requires_grad=True),
        torch.randn(b, m, cv, dtype=F64, requires_grad=True),
    )


PW = Pairwise("embedded_gaussian", scale=SCALE)


@pytest.mark.parametrize("backend", ["dense", "regular", "coo", "csr"])
@pytest.mark.parametrize("lead", [1, 2])
def test_full_graph_bias(backend: str, lead: int) -> None:
    q, k, v = _qkv()
    bias = torch.randn(lead, 9, 7, dtype=F64, requires_grad=True)
    edges = [(j, i, bias[:, i, j].expand(2)) for i in range(9) for j in range(7)]
    want = _reference(q, k, v, edges, bias)
    got = nonlocal_aggregate(q, k, v, PW, backend=backend, edge_bias=bias)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    g_got = torch.autograd.grad((got**2).sum(), (q, k, v, bias))
    g_want = torch.autograd.grad((want**2).sum(), (q, k, v, bias))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("backend", ["regular", "coo", "csr"])
@pytest.mark.parametrize("padded", [False, True])
def test_regular_graph_bias(backend: str, padded: bool) -> None:
    q, k, v = _qkv()
    index = torch.stack([torch.randperm(7)[:4] for _ in range(9)]).unsqueeze(0)
    mask = (torch.rand(1, 9, 4) > 0.3) if padded else None
    if padded:
        mask[0, 2] = False  # an empty row: y = 0
    bias = torch.randn(2, 9, 4, dtype=F64, requires_grad=True)
    edges = [
        (int(index[0, i, s]), i, bias[:, i, s])
        for i in range(9)
        for s in range(4)
        if mask is None or mask[0, i, s]
    ]
    want = _reference(q, k, v, edges, bias)
    graph = RegularGraph(index, 7, mask)
    got = nonlocal_aggregate(q, k, v, PW, graph=graph, backend=backend, edge_bias=bias)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    g_got = torch.autograd.grad((got**2).sum(), (q, k, bias))
    g_want = torch.autograd.grad((want**2).sum(), (q, k, bias))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("backend", ["coo", "csr"])
@pytest.mark.parametrize("sorted_edges", [False, True])
def test_coo_graph_bias(backend: str, sorted_edges: bool) -> None:
    q, k, v = _qkv()
    src, dst = torch.randint(0, 7, (30,)), torch.randint(0, 9, (30,))
    dst[dst == 4] = 5  # query 4 gets no edge
    if sorted_edges:
        dst, order = torch.sort(dst, stable=True)
        src = src[order]
    bias = torch.randn(1, 30, dtype=F64, requires_grad=True)
    edges = [(int(src[e]), int(dst[e]), bias[:, e].expand(2)) for e in range(30)]
    want = _reference(q, k, v, edges, bias)
    graph = COOGraph(torch.stack([src, dst]), 9, 7)
    got, attn = nonlocal_aggregate(
        q, k, v, PW, graph=graph, backend=backend, edge_bias=bias, return_attention=True
    )
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    # The exported weights carry the bias too: they reproduce y.
    dense = attn.to_dense()
    torch.testing.assert_close(dense @ v, want, atol=1e-10, rtol=1e-10)
    g_got = torch.autograd.grad((got**2).sum(), (q, k, v, bias))
    g_want = torch.autograd.grad((want**2).sum(), (q, k, v, bias))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("backend", ["dense", "regular", "coo", "csr"])
def test_bias_gradcheck(backend: str) -> None:
    q, k, v = _qkv(b=1, n=4, m=3, c=2, cv=2)
    bias = torch.randn(1, 4, 3, dtype=F64, requires_grad=True)
    assert gradcheck(
        lambda *t: nonlocal_aggregate(*t[:3], PW, backend=backend, edge_bias=t[3]),
        (q, k, v, bias),
    )


def test_minus_inf_bias_drops_an_edge() -> None:
    q, k, v = _qkv()
    src, dst = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 1, 1])
    graph = COOGraph(torch.stack([src, dst]), 9, 7)
    bias = torch.tensor([[0.0, float("-inf"), 0.0, 0.0]], dtype=F64)
    for backend in ("coo", "csr"):
        y = nonlocal_aggregate(q, k, v, PW, graph=graph, backend=backend, edge_bias=bias)
        torch.testing.assert_close(y[:, 0], v[:, 0], atol=1e-12, rtol=0)


def test_bias_errors() -> None:
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"edge_bias: expected shape \(1 or 2, 9, 7\)"):
        nonlocal_aggregate(q, k, v, PW, edge_bias=torch.zeros(2, 7, 9, dtype=F64))
    with pytest.raises(TypeError, match="edge_bias: expected dtype torch.float64"):
        nonlocal_aggregate(q, k, v, PW, edge_bias=torch.zeros(2, 9, 7))
    with pytest.raises(ValueError, match="edge_bias: only the softmax modes"):
        nonlocal_aggregate(q, k, v, "dot_product", edge_bias=torch.zeros(2, 9, 7, dtype=F64))
    graph = COOGraph(torch.tensor([[0, 1], [0, 0]]), 9, 7)
    with pytest.raises(ValueError, match=r"\(1 or 2, 2\) for a coo graph"):
        nonlocal_aggregate(q, k, v, PW, graph=graph, edge_bias=torch.zeros(2, 3, dtype=F64))
    with pytest.raises(TypeError, match="edge_bias: expected a Tensor"):
        nonlocal_aggregate(q, k, v, PW, edge_bias=[0.0])


@pytest.mark.parametrize("backend", ["dense", "regular", "coo", "csr"])
@pytest.mark.parametrize("graph_kind", ["full", "regular", "coo"])
def test_all_edges_dropped_gives_zero_everywhere(backend: str, graph_kind: str) -> None:
    """One policy on every kernel: a query whose every edge has bias -inf gets y_i = 0 and no
    gradient; the other queries are exact, and no NaN reaches any output or gradient."""
    if backend == "dense" and graph_kind != "full":
        pytest.skip("dense: full graph only")
    if backend == "regular" and graph_kind == "coo":
        pytest.skip("regular: no COO graphs")
    q, k, v = _qkv()
    n, m = q.shape[1], k.shape[1]
    if graph_kind == "full":
        graph, edges = "full", [(j, i) for i in range(n) for j in range(m)]
        bias = torch.randn(2, n, m, dtype=F64)
        bias[:, 3] = float("-inf")  # query 3 loses every edge
        bias[1, 5] = float("-inf")  # and query 5 of sample 1
        per_edge = [bias[:, i, j] for j, i in edges]
    else:
        index = torch.tensor([[[0, 1, 4]] * n])
        edges = [(j, i) for i in range(n) for j in (0, 1, 4)]
        bias = torch.randn(2, n, 3, dtype=F64)
        bias[:, 3] = float("-inf")
        bias[1, 5] = float("-inf")
        per_edge = [bias[:, i, slot] for i in range(n) for slot in range(3)]
        graph = RegularGraph(index, m)
        if graph_kind == "coo":
            graph, bias = graph.to_coo(), bias.reshape(2, -1)
    bias.requires_grad_(True)
    y = nonlocal_aggregate(q, k, v, PW, graph=graph, backend=backend, edge_bias=bias)
    assert torch.equal(y[:, 3], torch.zeros_like(y[:, 3])) and torch.equal(
        y[1, 5], torch.zeros(3, dtype=F64)
    )
    keep = [(j, i, beta) for (j, i), beta in zip(edges, per_edge) if i != 3]
    expected = _reference(q, k, v, keep, None)
    expected[1, 5] = 0.0
    torch.testing.assert_close(y, expected, atol=1e-10, rtol=1e-10)
    grads = torch.autograd.grad(y.square().sum(), (q, k, v, bias))
    for g in grads[:3]:
        assert bool(torch.isfinite(g).all())
    assert torch.equal(grads[0][:, 3], torch.zeros_like(grads[0][:, 3]))
