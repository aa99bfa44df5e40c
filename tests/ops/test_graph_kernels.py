"""The regular, coo and csr kernels against the independent fp64 masked-dense reference."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from nlgraph import Pairwise, nonlocal_aggregate
from nlgraph.graphs import COOGraph, RegularGraph
from nlgraph.ops import AggregateInputs, select_kernel
from tests.helpers import MODES, reference_aggregate

F64 = torch.float64


def _pairwise(mode: str, c: int) -> tuple[Pairwise, dict]:
    if mode == "concatenation":
        cw = torch.randn(2 * c, dtype=F64)
        return Pairwise(mode, concat_weight=cw), dict(concat_u=cw[:c], concat_w=cw[c:])
    scale = 0.43 if mode == "embedded_gaussian" else 1.0
    return Pairwise(mode, scale=scale), dict(scale=scale)


def _random_regular(g: int, n: int, m: int, k: int) -> tuple[RegularGraph, torch.Tensor]:
    """A regular graph without duplicate edges, some padding and one empty row, and its mask."""
    index = torch.stack([torch.stack([torch.randperm(m)[:k] for _ in range(n)]) for _ in range(g)])
    valid = torch.rand(g, n, k) > 0.3
    valid[:, 0] = False  # query 0 has no neighbour: y_0 = 0
    dense = torch.zeros(g, n, m, dtype=torch.bool)
    for s in range(g):
        for i in range(n):
            for slot in range(k):
                if valid[s, i, slot]:
                    dense[s, i, index[s, i, slot]] = True
    return RegularGraph(index, m, valid), dense


def _qkv(b: int, n: int, m: int, c: int, cv: int, grad: bool = False):
    ts = torch.randn(b, n, c, dtype=F64), torch.randn(b, m, c, dtype=F64)
    ts += (torch.randn(b, m, cv, dtype=F64),)
    return tuple(t.requires_grad_(grad) for t in ts)


SPARSE = ["regular", "coo", "csr"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", SPARSE)
def test_full_graph_equals_dense(mode: str, backend: str) -> None:
    q, k, v = _qkv(2, 19, 11, 6, 4)
    pw, kw = _pairwise(mode, 6)
    got = nonlocal_aggregate(q, k, v, pw, backend=backend)
    want, _ = reference_aggregate(q, k, v, mode, **kw)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(got, nonlocal_aggregate(q, k, v, pw), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("backend", ["auto", *SPARSE])
def test_regular_graph_equals_masked_reference(mode: str, per_sample: bool, backend: str) -> None:
    if backend == "coo" and per_sample:
        pytest.skip("coo runs one graph shared by the batch")
    b, n, m = 3, 17, 9
    q, k, v = _qkv(b, n, m, 5, 3, grad=True)
    pw, kw = _pairwise(mode, 5)
    graph, mask = _random_regular(b if per_sample else 1, n, m, 5)
    y, attn = nonlocal_aggregate(q, k, v, pw, graph=graph, return_attention=True, backend=backend)
    y_ref, w_ref = reference_aggregate(q, k, v, mode, mask=mask, **kw)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(attn.to_dense(), w_ref, atol=1e-10, rtol=1e-10)
    assert torch.equal(y[:, 0], torch.zeros_like(y[:, 0]))
    g = torch.randn_like(y)
    for got, want in zip(
        torch.autograd.grad(y, (q, k, v), g), torch.autograd.grad(y_ref, (q, k, v), g)
    ):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    if not per_sample:  # the same graph as an edge_index
        y_coo = nonlocal_aggregate(q, k, v, pw, graph=graph.to_coo(0))
        torch.testing.assert_close(y_coo, y_ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_sample", [False, True])
def test_csr_unpadded_regular_graph_gradcheck(mode: str, per_sample: bool) -> None:
    """Every row full (the csr kernel's k-per-row fast path), against the reference."""
    b, n, m, kk = 2, 9, 7, 3
    q, k, v = _qkv(b, n, m, 4, 3, grad=True)
    pw, kw = _pairwise(mode, 4)
    graph, mask = _random_regular(b if per_sample else 1, n, m, kk)
    graph = RegularGraph(graph.index, m)  # no padding
    mask = torch.zeros(graph.index.shape[0], n, m, dtype=torch.bool)
    mask.scatter_(2, graph.index, True)
    y = nonlocal_aggregate(q, k, v, pw, graph=graph, backend="csr")
    y_ref, _ = reference_aggregate(q, k, v, mode, mask=mask, **kw)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    assert gradcheck(
        lambda q, k, v: nonlocal_aggregate(q, k, v, pw, graph=graph, backend="csr"), (q, k, v)
    )


def test_csr_not_picked_while_compiling(monkeypatch) -> None:
    from nlgraph.ops.kernels import csr

    q, k, v = _qkv(1, 5, 4, 3, 3)
    graph, _ = _random_regular(1, 5, 4, 2)
    inp = AggregateInputs(q, k, v, Pairwise("dot_product"), graph)
    assert select_kernel(inp).NAME == "csr"
    monkeypatch.setattr(csr, "_is_compiling", lambda: True)
    assert select_kernel(inp).NAME == "regular"
    with pytest.raises(ValueError, match=r"^backend: 'csr' cannot run.*torch.compile"):
        select_kernel(inp, "csr")


@pytest.mark.parametrize("mode", MODES)
def test_regular_small_chunks_and_gradients_match_reference(mode: str, monkeypatch) -> None:
    from nlgraph.ops.kernels import regular

    monkeypatch.setattr(regular, "CHUNK_ELEMENTS", 40)  # several query chunks
    b, n, m = 2, 11, 6
    q, k, v = _qkv(b, n, m, 4, 3, grad=True)
    pw, kw = _pairwise(mode, 4)
    graph, mask = _random_regular(b, n, m, 4)
    y = nonlocal_aggregate(q, k, v, pw, graph=graph, backend="regular")
    y_ref, _ = reference_aggregate(q, k, v, mode, mask=mask, **kw)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (q, k, v), g)
    ref = torch.autograd.grad(y_ref, (q, k, v), g)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    for got, want in zip(grads, ref):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    fn = lambda q, k, v: nonlocal_aggregate(q, k, v, pw, graph=graph, backend="regular")  # noqa: E731
    assert gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", ["auto", "coo", "csr"])
def test_coo_graph_equals_masked_reference_with_gradients(mode: str, backend: str) -> None:
    n, m = 10, 8
    q, k, v = _qkv(2, n, m, 4, 3, grad=True)
    pw, kw = _pairwise(mode, 4)
    mask = torch.rand(n, m) > 0.6
    mask[3] = False
    target, source = mask.nonzero().t()
    perm = torch.randperm(source.numel())  # edge order must not matter
    graph = COOGraph(torch.stack([source[perm], target[perm]]), n, m)
    y, attn = nonlocal_aggregate(q, k, v, pw, graph=graph, backend=backend, return_attention=True)
    y_ref, w_ref = reference_aggregate(q, k, v, mode, mask=mask, **kw)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(attn.to_dense(), w_ref, atol=1e-10, rtol=1e-10)
    # the edge weights come back in the order of edge_index
    src, dst = graph.edge_index
    torch.testing.assert_close(attn.edges(0)[1], w_ref[0, dst, src], atol=1e-10, rtol=1e-10)
    fn = lambda q, k, v: nonlocal_aggregate(q, k, v, pw, graph=graph, backend=backend)  # noqa: E731
    assert gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("mode", MODES)
def test_duplicate_edges_count_twice_in_coo_and_csr(mode: str) -> None:
    """A repeated edge is a neighbour twice: the same as a regular row listing it twice."""
    n, m = 6, 5
    q, k, v = _qkv(2, n, m, 4, 3, grad=True)
    pw, _ = _pairwise(mode, 4)
    index = torch.randint(0, m, (1, n, 4))
    index[0, :, 1] = index[0, :, 0]  # every row holds one key twice
    regular = RegularGraph(index, m)
    edges = regular.to_coo(0)
    shuffled = COOGraph(edges.edge_index[:, torch.randperm(edges.num_edges)], n, m)
    want = nonlocal_aggregate(q, k, v, pw, graph=regular, backend="regular")
    for backend in ("coo", "csr"):
        got = nonlocal_aggregate(q, k, v, pw, graph=shuffled, backend=backend)
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    fn = lambda q, k, v: nonlocal_aggregate(q, k, v, pw, graph=shuffled, backend="csr")  # noqa: E731
    assert gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("mode", MODES)
def test_coo_gradcheck_with_duplicate_edges_and_an_isolated_query(mode: str) -> None:
    """The coo kernel in float64 against torch's numerical gradients, on a random edge list with
    repeated edges and a query without neighbours. Its values are checked first against the
    reference with every edge as its own key column (so a repeated edge counts twice)."""
    n, m, e = 7, 5, 14
    q, k, v = _qkv(2, n, m, 3, 2, grad=True)
    pw, kw = _pairwise(mode, 3)
    edge_index = torch.stack([torch.randint(0, m, (e,)), torch.randint(1, n, (e,))])
    edge_index = torch.cat([edge_index, edge_index[:, :4]], 1)  # four edges listed twice
    edge_index = edge_index[:, torch.randperm(edge_index.shape[1])]
    graph = COOGraph(edge_index, n, m)  # query 0 has no incoming edge
    source, target = edge_index
    mask = target[None, :] == torch.arange(n)[:, None]  # (N, E): query i owns edge e
    y_ref, _ = reference_aggregate(q, k[:, source], v[:, source], mode, mask=mask, **kw)

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return nonlocal_aggregate(q, k, v, pw, graph=graph, backend="coo")

    y = fn(q, k, v)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    assert torch.equal(y[:, 0], torch.zeros_like(y[:, 0]))
    assert gradcheck(fn, (q, k, v))


def test_auto_dispatch_by_graph_kind() -> None:
    q, k, v = _qkv(1, 5, 4, 3, 3)
    pw = Pairwise("dot_product")
    graph, _ = _random_regular(1, 5, 4, 2)
    picks = {
        "full": select_kernel(AggregateInputs(q, k, v, pw, "full")).NAME,
        "regular": select_kernel(AggregateInputs(q, k, v, pw, graph)).NAME,
        "coo": select_kernel(AggregateInputs(q, k, v, pw, graph.to_coo())).NAME,
    }
    assert picks == {"full": "dense", "regular": "csr", "coo": "csr"}
    half = AggregateInputs(q.half(), k.half(), v.half(), pw, graph)  # csr: fp32/fp64 only
    assert select_kernel(half).NAME == "regular"
    assert (
        select_kernel(AggregateInputs(q.half(), k.half(), v.half(), pw, graph.to_coo())).NAME
        == "coo"
    )
    with pytest.raises(ValueError, match=r"^backend: 'dense' cannot run"):
        nonlocal_aggregate(q, k, v, pw, graph=graph, backend="dense")
    per_sample, _ = _random_regular(2, 5, 4, 2)
    q2, k2, v2 = _qkv(2, 5, 4, 3, 3)
    with pytest.raises(ValueError, match=r"^backend: 'coo' cannot run"):
        nonlocal_aggregate(q2, k2, v2, pw, graph=per_sample, backend="coo")


def test_graph_errors() -> None:
    q, k, v = _qkv(1, 5, 4, 3, 3)
    long = torch.long
    with pytest.raises(IndexError, match=r"^graph \(key indices\): expected indices in \[0, 4\)"):
        nonlocal_aggregate(q, k, v, "dot_product", graph=RegularGraph(torch.full((1, 5, 2), 4), 4))
    wrong_size = COOGraph(torch.zeros(2, 3, dtype=long), 6, 4)
    with pytest.raises(ValueError, match=r"^graph: expected 5 queries and 4 keys"):
        nonlocal_aggregate(q, k, v, "dot_product", graph=wrong_size)
    bad_target = COOGraph(torch.tensor([[0, 1], [0, 5]]), 5, 4)
    with pytest.raises(IndexError, match=r"^edge_index\[1\] \(queries\): expected indices"):
        nonlocal_aggregate(q, k, v, "dot_product", graph=bad_target)
    with pytest.raises(TypeError, match=r"^graph: expected 'full'"):
        nonlocal_aggregate(q, k, v, "dot_product", graph=torch.zeros(2, 3, dtype=long))
    three = RegularGraph(torch.zeros(3, 5, 2, dtype=long), 4)
    with pytest.raises(ValueError, match=r"^graph: expected a RegularGraph index of shape"):
        nonlocal_aggregate(q, k, v, "dot_product", graph=three)
    with pytest.raises(ValueError, match=r"^index: expected a \(G, N, k\) int64"):
        RegularGraph(torch.zeros(5, 2, dtype=long), 4)


@pytest.mark.parametrize(("backend", "fraction"), [("regular", 0.5), ("csr", 1.0)])
def test_training_memory_is_bounded(backend: str, fraction: float) -> None:
    """No (B, N, k, C) gather is kept alive for backward: a training step at N = 65536, k = 16,
    C = 32 peaks below one gathered (B, N, k, C) tensor (128 MiB), the regular kernel below
    half of it (measured: regular ~57 MiB, csr ~102 MiB, most of it int64 edge indices)."""
    from nlgraph._measure import memory_stats

    b, n, m, kk, c = 1, 65536, 65536, 16, 32
    q, k, v = (torch.randn(b, n, c, requires_grad=True) for _ in range(3))
    graph = RegularGraph(torch.randint(0, m, (1, n, kk)), m)

    def step() -> None:
        y = nonlocal_aggregate(q, k, v, "embedded_gaussian", graph=graph, backend=backend)
        y.backward(torch.ones(b, n, c))

    gathered = b * n * kk * c * 4  # one (B, N, k, C) float32 tensor: 128 MiB
    assert memory_stats(step).peak_bytes < gathered * fraction


@pytest.mark.parametrize("mode", MODES)
def test_coo_segment_backends_agree(mode: str, monkeypatch) -> None:
    """torch-scatter and plain PyTorch give the same numbers and gradients."""
    # Without torch-scatter "auto" is plain PyTorch too: the comparison would be vacuous.
    pytest.importorskip("torch_scatter", reason="needs the optional package 'torch_scatter'")
    from nlgraph.ops.kernels import _scatter

    n, m = 12, 9
    q, k, v = _qkv(2, n, m, 4, 3, grad=True)
    pw, kw = _pairwise(mode, 4)
    mask = torch.rand(n, m) > 0.5
    target, source = mask.nonzero().t()
    graph = COOGraph(torch.stack([source, target]), n, m)
    results = {}
    for name in ("torch", "auto"):
        monkeypatch.setattr(_scatter, "BACKEND", name)
        y = nonlocal_aggregate(q, k, v, pw, graph=graph, backend="coo")
        results[_scatter.backend()] = (y, *torch.autograd.grad(y.sum(), (q, k, v)))
    y_ref, _ = reference_aggregate(q, k, v, mode, mask=mask, **kw)
    for got in results.values():
        torch.testing.assert_close(got[0], y_ref, atol=1e-10, rtol=1e-10)
        for a, b in zip(got, results["torch"]):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_torch_scatter_backend_reports_missing(monkeypatch) -> None:
    from nlgraph.ops.kernels import _scatter

    monkeypatch.setattr(_scatter, "BACKEND", "torch_scatter")
    monkeypatch.setattr(_scatter, "_torch_scatter", lambda: None)
    with pytest.raises(ImportError, match="torch_scatter does not import"):
        _scatter.backend()
