"""Non-local blocks over k-NN, window, temporal-group and user edge sets, against the fp64
reference restricted to a neighbour mask built independently (brute force, explicit loops)."""

from __future__ import annotations

import itertools

import pytest
import torch

from nlgraph import NonLocalBlock1d, NonLocalBlock2d, NonLocalBlock3d
from nlgraph.graphs import (
    KNN,
    EdgeIndex,
    GraphContext,
    GraphSpec,
    RegularGraph,
    TemporalGroups,
    Window,
)
from tests.helpers import (
    DEFAULT_POOL,
    MODES,
    block_reference_args,
    randomise_block_,
    reference_block,
)

F64 = torch.float64
BLOCKS = {1: NonLocalBlock1d, 2: NonLocalBlock2d, 3: NonLocalBlock3d}
SHAPES = {1: (9,), 2: (7, 9), 3: (3, 5, 6)}


def _block(dims: int, mode: str, sub_sample: bool, **kw) -> torch.nn.Module:
    block = BLOCKS[dims](6, 4, mode=mode, sub_sample=sub_sample, zero_init=False, dtype=F64, **kw)
    return randomise_block_(block)


def _x(dims: int, b: int = 2) -> torch.Tensor:
    return torch.randn(b, 6, *SHAPES[dims], dtype=F64)


def _check(block, x, mask, training: bool = False) -> None:
    block.train(training)
    z = block(x)
    z_ref, _ = reference_block(x, **block_reference_args(block), mask=mask)
    torch.testing.assert_close(z, z_ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sub_sample", [False, True])
@pytest.mark.parametrize("backend", ["regular", "coo"])
def test_full_graph_through_graph_kernels_equals_dense_block(dims, mode, sub_sample, backend):
    block = _block(dims, mode, sub_sample, backend=backend)
    x = _x(dims)
    for training in (False, True):
        _check(block, x, None, training)


def _knn_mask(k: int, metric: str):
    def mask(q: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        if metric == "logit":
            score = q @ key.transpose(1, 2)
        elif metric == "l2":
            score = -torch.cdist(q, key)
        else:
            score = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(
                key, dim=-1
            ).transpose(1, 2)
        order = torch.argsort(score, dim=-1, descending=True, stable=True)[..., :k]
        return torch.zeros_like(score, dtype=torch.bool).scatter_(-1, order, True)

    return mask


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("metric", ["logit", "l2", "cosine"])
@pytest.mark.parametrize("sub_sample", [False, True])
def test_knn_block_equals_masked_reference(mode, metric, sub_sample):
    block = _block(2, mode, sub_sample, graph=KNN(5, metric=metric, block_size=7))
    x = _x(2)
    _check(block, x, _knn_mask(5, metric))
    _check(block, x, _knn_mask(5, metric), training=True)


def test_knn_k_at_least_keys_is_the_dense_block():
    dense = _block(2, "embedded_gaussian", True)
    sparse = _block(2, "embedded_gaussian", True, graph=KNN(12))  # N' = 3 * 4 = 12
    sparse.load_state_dict(dense.state_dict())
    x = _x(2)
    assert torch.equal(sparse.eval()(x), dense.eval()(x))


def test_knn_ties_go_to_the_lower_index():
    block = NonLocalBlock1d(2, 2, mode="gaussian", sub_sample=False, graph=KNN(2), dtype=F64)
    x = torch.tensor([[[1.0, 1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]], dtype=F64)
    q, k, _ = block.embed(x)
    graph = block.build_graph(x, q, k)
    assert graph.index[0, 0].tolist() == [0, 1]  # logits 1, 1, 1, 1, 0: the first two


def _window_mask(shape, radius, dilation, pool):
    key_shape = tuple(s // p for s, p in zip(shape, pool))
    queries = list(itertools.product(*(range(s) for s in shape)))
    keys = list(itertools.product(*(range(s) for s in key_shape)))
    mask = torch.zeros(len(queries), len(keys), dtype=torch.bool)
    for i, c in enumerate(queries):
        cell = [min(cd // p, ks - 1) for cd, p, ks in zip(c, pool, key_shape)]
        for j, kc in enumerate(keys):
            diffs = [kd - cd for kd, cd in zip(kc, cell)]
            if all(abs(d) <= radius * dilation and d % dilation == 0 for d in diffs):
                mask[i, j] = True
    return mask


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("radius", "dilation", "sub_sample"), [(1, 1, False), (1, 2, False), (1, 1, True)]
)
def test_window_block_equals_masked_reference(dims, mode, radius, dilation, sub_sample):
    block = _block(dims, mode, sub_sample, graph=Window(radius, dilation))
    pool = DEFAULT_POOL[dims] if sub_sample else (1,) * dims
    _check(block, _x(dims), _window_mask(SHAPES[dims], radius, dilation, pool))


@pytest.mark.parametrize("mode", MODES)
def test_temporal_groups_block_equals_masked_reference(mode):
    block = _block(3, mode, True, graph=TemporalGroups(2))
    x = torch.randn(2, 6, 4, 4, 5, dtype=F64)
    t_of_query = torch.arange(4).repeat_interleave(4 * 5)
    t_of_key = torch.arange(4).repeat_interleave(2 * 2)  # pool (1, 2, 2)
    mask = (t_of_query[:, None] // 2) == (t_of_key[None, :] // 2)
    _check(block, x, mask)


@pytest.mark.parametrize("mode", MODES)
def test_edge_index_block_equals_masked_reference(mode):
    n, m = 63, 12  # 7x9 queries, 3x4 pooled keys
    mask = torch.rand(n, m) > 0.7
    mask[5] = False  # a query without neighbours: y = 0, z = x + Norm(W_z 0)
    target, source = mask.nonzero().t()
    block = _block(2, mode, True, graph=torch.stack([source, target]))
    _check(block, _x(2), mask)
    _check(block, _x(2), mask, training=True)


def test_shared_graph_and_gradients():
    x = _x(2).requires_grad_(True)
    a = _block(2, "embedded_gaussian", False, graph=KNN(6))
    b = _block(2, "embedded_gaussian", False, graph=KNN(6))
    q, k, _ = a.embed(x)
    graph = a.build_graph(x, q, k)
    z = b(a(x, graph=graph), graph=graph)
    z_ref = reference_block(
        reference_block(x, **block_reference_args(a), mask=_mask_of(graph))[0],
        **block_reference_args(b),
        mask=_mask_of(graph),
    )[0]
    torch.testing.assert_close(z, z_ref, atol=1e-10, rtol=1e-10)
    g = torch.randn_like(z)
    got = torch.autograd.grad(z, (x, a.theta.weight), g)
    want = torch.autograd.grad(z_ref, (x, a.theta.weight), g)
    for u, v in zip(got, want):
        torch.testing.assert_close(u, v, atol=1e-9, rtol=1e-9)


def _mask_of(graph) -> torch.Tensor:
    b, n, _ = graph.index.shape
    return torch.zeros(b, n, graph.num_keys, dtype=torch.bool).scatter_(-1, graph.index, True)


def test_attention_on_graphs():
    block = _block(2, "embedded_gaussian", True, graph=Window(1))
    z, attn = block(_x(2), return_attention=True)
    dense = attn.to_dense()
    assert dense.shape == (2, 63, 12)
    torch.testing.assert_close(dense.sum(-1), torch.ones(2, 63, dtype=F64))
    edge_index, weights = attn.edges(1)
    assert edge_index.shape[0] == 2 and weights.shape == (edge_index.shape[1],)


def test_graph_errors_and_repr():
    with pytest.raises(ValueError, match=r"^graph: expected 'full', a KNN"):
        NonLocalBlock2d(8, graph="knn")
    with pytest.raises(ValueError, match=r"^graph: expected a 3-D block for TemporalGroups"):
        NonLocalBlock2d(8, graph=TemporalGroups(2))
    with pytest.raises(ValueError, match=r"^graph: expected a \(2, E\) int64 tensor"):
        NonLocalBlock2d(8, graph=torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^graph: expected a \(2, E\) int64 tensor"):
        NonLocalBlock2d(8, graph=torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"^k: expected a positive int"):
        KNN(0)
    assert NonLocalBlock2d(8, graph=KNN(16)).extra_repr() == "8, 4, graph=KNN(k=16)"
    ei = torch.zeros(2, 5, dtype=torch.long)
    assert NonLocalBlock2d(8, graph=ei).extra_repr() == "8, 4, graph=EdgeIndex(E=5)"
    assert NonLocalBlock2d(8, graph=EdgeIndex(ei)).extra_repr() == "8, 4, graph=EdgeIndex(E=5)"
    assert (
        NonLocalBlock2d(8, graph=Window(2, 2), backend="coo").extra_repr()
        == "8, 4, graph=Window(radius=2, dilation=2), backend=coo"
    )


def test_knn_reuse_is_gone_and_graphs_are_never_stale():
    """A KNN spec keeps nothing between calls: a new batch of the same shape gets its own
    graph; sharing one graph is explicit (build_graph + forward(graph=...))."""
    with pytest.raises(ValueError, match=r"^reuse: expected False .* block.build_graph\(x\)"):
        KNN(5, reuse=True)
    a = _block(2, "dot_product", False, graph=KNN(5))
    b = _block(2, "dot_product", False, graph=KNN(5))
    x1, x2 = _x(2), _x(2)
    g1 = a.build_graph(x1)
    g2 = a.build_graph(x2)
    assert not torch.equal(g1.index, g2.index)  # same shape, different data: a new graph
    q2, k2, _ = a.embed(x2)
    assert torch.equal(_mask_of(g2), _knn_mask(5, "logit")(q2, k2))
    # Sharing is visible: b runs on a's graph only when it is handed over.
    _check(b, x1, _knn_mask(5, "logit")(*b.embed(x1)[:2]))
    b.eval()
    z = b(x1, graph=g1)
    z_ref, _ = reference_block(x1, **block_reference_args(b), mask=_mask_of(g1))
    torch.testing.assert_close(z, z_ref, atol=1e-10, rtol=1e-10)


def test_edge_index_over_positions_with_sub_sample_names_the_pooling():
    """A natural position-level edge_index on a sub-sampling block fails with an error that
    names the key space, sub_sample and the fix."""
    n = 8 * 8
    ei = torch.stack([torch.arange(n), torch.arange(n)])  # every position to itself
    block = NonLocalBlock2d(4, graph=ei)  # sub_sample=True: 16 pooled keys
    with pytest.raises(IndexError) as err:
        block(torch.randn(1, 4, 8, 8))
    msg = str(err.value)
    assert msg.startswith(
        "edge_index[0] (keys): expected indices in [0, 16), got values in [0, 63]"
    )
    assert "sub_sample" in msg and "pool_size (2, 2)" in msg and "sub_sample=False" in msg
    fixed = NonLocalBlock2d(4, graph=ei, sub_sample=False)
    assert fixed(torch.randn(1, 4, 8, 8)).shape == (1, 4, 8, 8)
    with pytest.raises(IndexError) as err:  # no pooling: no pooling hint
        fixed(torch.randn(1, 4, 6, 6))
    assert (
        str(err.value) == "edge_index[0] (keys): expected indices in [0, 36), got values in [0, 63]"
    )
    queries_only = torch.stack([torch.zeros(n, dtype=torch.long), torch.arange(n)])
    with pytest.raises(
        IndexError, match=r"^edge_index\[1\] \(queries\): expected indices in \[0, 36\)"
    ):
        NonLocalBlock2d(4, graph=queries_only, sub_sample=False)(torch.randn(1, 4, 6, 6))


def test_custom_graph_spec_needs_no_module_change():
    """Any GraphSpec subclass plugs into the blocks: here each query sees its own key cell."""

    class Diagonal(GraphSpec):
        def build(self, ctx: GraphContext):
            i = torch.arange(ctx.num_queries, device=ctx.device)
            return RegularGraph((i % ctx.num_keys).view(1, -1, 1), ctx.num_keys)

    block = _block(1, "embedded_gaussian", False, graph=Diagonal())
    x = _x(1)
    mask = torch.eye(9, dtype=torch.bool)
    _check(block, x, mask)


def test_prepared_graphs_are_a_cache_not_state():
    """Specs and graphs keep what they prepared (windows per size, an edge_index's COOGraph, the
    csr pattern), but pickling or copying a block carries none of it, and the copy computes the
    same thing."""
    import copy
    import pickle

    x = _x(2)
    for graph in (Window(1), torch.tensor([[0, 1, 2], [0, 5, 9]])):
        block = _block(2, "embedded_gaussian", True, graph=graph).eval()
        z = block(x)
        cache = block.graph._built if isinstance(graph, Window) else block.graph._graphs
        assert len(cache) == 1
        for clone in (pickle.loads(pickle.dumps(block)), copy.deepcopy(block)):
            kept = clone.graph._built if isinstance(graph, Window) else clone.graph._graphs
            assert len(kept) == 0
            torch.testing.assert_close(clone(x), z, atol=0, rtol=0)


@pytest.mark.parametrize("mode", ["embedded_gaussian", "gaussian", "dot_product", "concatenation"])
@pytest.mark.parametrize("graph", ["full", "window", "knn", "ivf"])
def test_empty_batch_trains(mode, graph):
    """Regression: a batch of 0 images in training mode raised ZeroDivisionError (the dense
    kernel's query split and the k-NN builder's block size divided by B). Now: an empty output
    and empty gradients."""
    spec = {"full": "full", "window": Window(3), "knn": KNN(4), "ivf": KNN(4, search="ivf")}[graph]
    block = NonLocalBlock2d(8, 4, mode=mode, graph=spec).train()
    x = torch.randn(0, 8, 6, 6, requires_grad=True)
    y = block(x)
    y.sum().backward()
    assert y.shape == x.shape and x.grad is not None and x.grad.shape == x.shape
    assert all(p.grad is None or torch.all(p.grad == 0) for p in block.parameters())


@pytest.mark.parametrize("search", ["exact", "ivf"])
def test_one_nan_pixel_stays_local_with_a_knn_graph(search):
    """Regression: one NaN pixel turned 100% of a KNN block's output into NaN (top-k ranked the
    NaN key first for every query). Now NaN scores rank last: the exact search leaves the NaN
    key out of every other row and only that pixel's own output is NaN. The clustered search
    refuses non-finite embeddings with a ValueError instead."""
    torch.manual_seed(0)
    block = NonLocalBlock2d(8, 4, sub_sample=False, graph=KNN(4, search=search), zero_init=False)
    block.eval()
    x = torch.randn(2, 8, 6, 6)
    x[0, :, 2, 3] = float("nan")
    if search == "ivf":
        with pytest.raises(ValueError, match="^query: expected finite values"):
            block(x)
        return
    with torch.no_grad():
        y = block(x)
    bad = torch.isnan(y).any(1)
    assert bad[0, 2, 3] and int(bad.sum()) == 1
