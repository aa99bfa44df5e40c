"""The clustered (IVF) k-NN search, the rebuild schedule and knn_recall.

References: a float64 brute force written here (all scores, a stable descending argsort: ties
towards the lower index), and hand-made graphs for the recall.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from nlgraph import NonLocalBlock2d
from nlgraph.graphs import KNN, COOGraph, RegularGraph, ivf, ivf_knn, knn_recall
from nlgraph.graphs.ivf import default_probe
from nlgraph.graphs.spec import GraphContext, GraphState

from ..helpers import DEVICES


def _scores(q: torch.Tensor, k: torch.Tensor, metric: str) -> torch.Tensor:
    q, k = q.double(), k.double()
    if metric == "cosine":
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        k = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if metric == "l2":
        return -((q.unsqueeze(2) - k.unsqueeze(1)) ** 2).sum(-1)
    return q @ k.transpose(1, 2)


def _brute(scores: torch.Tensor, k: int) -> torch.Tensor:
    """k best per row, ties towards the lower index, ascending index order."""
    return torch.argsort(scores, dim=-1, descending=True, stable=True)[..., :k].sort(-1).values


def _mixture(b: int, n: int, c: int, parts: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    means = 4 * torch.randn(b, parts, c, generator=gen)
    pick = torch.randint(0, parts, (b, n), generator=gen)
    return means.gather(1, pick.unsqueeze(-1).expand(-1, -1, c)) + torch.randn(
        b, n, c, generator=gen
    )


@pytest.mark.parametrize("metric", ["logit", "l2", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_all_lists_probed_is_exact(metric, dtype, device):
    """n_probe = n_clusters scans every key: the same sets as the float64 brute force (integer
    features: exact scores, many ties, broken towards the lower index)."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randint(-2, 3, (2, 150, 5), generator=gen).to(dtype)
    k = torch.randint(-2, 3, (2, 333, 5), generator=gen).to(dtype)
    if metric == "cosine":  # normalised vectors round: ties would be decided by rounding
        q, k = (
            q + 0.1 * torch.randn(q.shape, generator=gen),
            k + 0.1 * torch.randn(k.shape, generator=gen),
        )
        q, k = q.to(dtype), k.to(dtype)
    expected = _brute(_scores(q, k, metric), 9)
    got = ivf_knn(q.to(device), k.to(device), 9, metric=metric, n_clusters=12, n_probe=12)
    assert got.mask is None
    assert torch.equal(got.index.cpu(), expected)
    spec = KNN(9, metric=metric, search="ivf", n_clusters=12, n_probe=12)
    assert torch.equal(spec.build(q, k).index, expected)
    # the same through the exact builder of the spec
    assert torch.equal(KNN(9, metric=metric).build(q, k).index, expected)


@pytest.mark.parametrize("metric", ["logit", "l2"])
@pytest.mark.parametrize("order", ["index", "score"])
def test_list_scan_over_every_list_is_exact(metric, order):
    """``ivf_knn`` runs n_probe = n_clusters as the exact search; the list scan itself (groups,
    candidate lists, tiles, the shared top-k) must also be exact when every
    group probes every list, ties and ``exclude`` included (integer features: many ties)."""
    gen = torch.Generator().manual_seed(5)
    b, n, m, c, lists = 2, 300, 500, 4, 7
    q = torch.randint(-2, 3, (b, n, c), generator=gen).float()
    kk = torch.randint(-2, 3, (b, m, c), generator=gen).float()
    assign = torch.randint(0, lists, (b, m), generator=gen)  # unbalanced lists, any split
    group = torch.randint(0, lists, (b, n), generator=gen)
    probes = torch.stack([torch.randperm(lists, generator=gen) for _ in range(b * lists)])
    probes = probes.view(b, lists, lists)
    exclude = torch.randint(0, m, (b, n), generator=gen)
    bias = -(kk * kk).sum(-1) if metric == "l2" else None
    got = ivf._scan(q, kk, bias, assign, group, probes, 9, exclude, order)
    scores = _scores(q, kk, metric)
    scores.scatter_(2, exclude.unsqueeze(2), float("-inf"))
    expected = torch.argsort(scores, dim=-1, descending=True, stable=True)[..., :9]
    if order == "index":
        expected = expected.sort(-1).values
    assert torch.equal(got, expected)


def test_half_precision_is_searched_in_float32():
    x = _mixture(1, 600, 8, 6, seed=8).bfloat16()
    got = ivf_knn(x, x, 5, n_clusters=8, n_probe=8)
    assert torch.equal(got.index, _brute(_scores(x.float(), x.float(), "logit"), 5))
    assert got.centroids.dtype == torch.float32


def test_score_order_and_exclude():
    """order="score": best first; exclude: a query's own index is never a neighbour."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 200, 4, generator=gen)
    scores = _scores(x, x, "l2")
    scores[0, torch.arange(200), torch.arange(200)] = float("-inf")
    expected = torch.argsort(scores, dim=-1, descending=True, stable=True)[..., :6]
    own = torch.arange(200).unsqueeze(0)
    got = ivf_knn(x, x, 6, metric="l2", n_clusters=8, n_probe=8, exclude=own, order="score")
    assert torch.equal(got.index, expected)


def test_fewer_candidates_than_k_is_padding():
    """Two far-apart clumps, one list each, one probe: a query sees its own clump only, so it
    gets that clump's keys (all of them) and padding after them."""
    gen = torch.Generator().manual_seed(1)
    key = torch.cat(
        [torch.randn(1, 5, 3, generator=gen), 100 + torch.randn(1, 7, 3, generator=gen)], 1
    )
    query = torch.cat(
        [torch.randn(1, 4, 3, generator=gen), 100 + torch.randn(1, 4, 3, generator=gen)], 1
    )
    got = ivf_knn(query, key, 6, metric="l2", n_clusters=2, n_probe=1)
    assert got.mask is not None
    assert got.mask.sum(-1).tolist() == [[5, 5, 5, 5, 6, 6, 6, 6]]
    assert torch.equal(got.index[0, 0, :5], torch.arange(5))  # the whole first clump
    assert got.index[0, 0, 5] == 0  # padding holds a valid index
    # the second clump's queries: their 6 nearest among the 7 keys of their clump
    expected = _brute(_scores(query[:, 4:], key[:, 5:], "l2"), 6) + 5
    assert torch.equal(got.index[0, 4:], expected[0])


def test_recall_on_clustered_data():
    """With the defaults, a Gaussian mixture keeps most true neighbours (a quality floor), and
    more probes never lose recall here."""
    x = _mixture(1, 4096, 16, 32, seed=5)
    exact = KNN(16, metric="l2").build(x, x)
    low = KNN(16, metric="l2", search="ivf", n_probe=1).build(x, x)
    default = KNN(16, metric="l2", search="ivf").build(x, x)
    r_low, r_default = knn_recall(low, exact), knn_recall(default, exact)
    assert r_default >= 0.9
    assert r_default >= r_low


def test_same_generator_same_graph():
    x = _mixture(2, 1000, 8, 10, seed=2)
    a = ivf_knn(x, x, 5, generator=torch.Generator().manual_seed(7), n_clusters=16, n_probe=2)
    b = ivf_knn(x, x, 5, generator=torch.Generator().manual_seed(7), n_clusters=16, n_probe=2)
    assert torch.equal(a.index, b.index) and torch.equal(a.centroids, b.centroids)
    spec = KNN(5, search="ivf", n_clusters=16, n_probe=2, seed=3)
    assert torch.equal(spec.build(x, x).index, spec.build(x, x).index)


def test_warm_start_uses_the_modules_centroids():
    """The spec keeps the centroids in the module's state and starts the next call from them:
    the result equals ivf_knn warm-started by hand."""
    x = _mixture(1, 2000, 8, 10, seed=4)
    spec = KNN(8, search="ivf", n_clusters=16, n_probe=2)
    state = GraphState()
    ctx = GraphContext(2000, 2000, x.device, query=x, key=x, state=state, training=True)
    first = spec.build(ctx)
    kept = state[("centroids", spec)]
    assert kept.shape == (1, 16, 8)
    second = spec.build(ctx)
    by_hand = ivf_knn(
        x,
        x,
        8,
        n_clusters=16,
        n_probe=2,
        generator=torch.Generator().manual_seed(0),
        centroids=kept,
    )
    assert torch.equal(second.index, by_hand.index)
    assert isinstance(first, RegularGraph)


def test_evaluation_starts_from_the_kept_centroids_and_leaves_them():
    """An eval-mode call warm-starts from the training centroids but does not replace them
    with centroids of its own (e.g. validation) batch."""
    x = _mixture(1, 2000, 8, 10, seed=4)
    other = _mixture(1, 2000, 8, 10, seed=5)
    spec = KNN(8, search="ivf", n_clusters=16, n_probe=2)
    state = GraphState()
    spec.build(GraphContext(2000, 2000, x.device, query=x, key=x, state=state, training=True))
    kept = state[("centroids", spec)]
    ctx = GraphContext(2000, 2000, x.device, query=other, key=other, state=state)
    got = spec.build(ctx)
    assert state[("centroids", spec)] is kept
    by_hand = ivf_knn(
        other,
        other,
        8,
        n_clusters=16,
        n_probe=2,
        generator=torch.Generator().manual_seed(0),
        centroids=kept,
    )
    assert torch.equal(got.index, by_hand.index)


@pytest.mark.parametrize(
    ("lists", "k", "keys", "expected"),
    [
        (16, None, None, 1),  # the fraction alone: max(1, 16 // 16)
        (64, 16, 4096, 4),  # 1/16 of 64; the floor 8·16·64/4096 = 2 is lower
        (256, 16, 65536, 8),  # 1/32 from 256 lists; floor 0.5 -> 1
        (512, 16, 262144, 16),
        (16, 32, 256, 16),  # floor 8·32·16/256 = 32 > L: every list (the exact search)
        (16, 8, 256, 4),  # floor 8·8·16/256 = 4
        (32, 32, 1024, 8),  # floor 8·32·32/1024 = 8 > 32 // 16
    ],
)
def test_default_probe_scans_about_8k_keys_at_least(lists, k, keys, expected):
    assert default_probe(lists, k=k, num_keys=keys) == expected


def test_default_search_at_small_sizes_is_the_exact_one():
    """k = 32 of 256 keys: the default probes every list, so the result is the exact graph
    (the old default probed 1 of 16 lists and found about half of the neighbours)."""
    x = _mixture(2, 256, 8, 4, seed=9)
    got = KNN(32, search="ivf").build(x, x)
    exact = KNN(32, search="exact").build(x, x)
    assert got.mask is None
    assert torch.equal(got.index, exact.index)


def test_refresh_every_keeps_the_graph_in_training_only():
    torch.manual_seed(0)
    block = NonLocalBlock2d(8, 4, sub_sample=False, graph=KNN(4, refresh_every=3))
    x1, x2 = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    graphs = [block.build_graph(x) for x in (x1, x2, x2, x2)]
    assert graphs[1] is graphs[0] and graphs[2] is graphs[0]  # calls 2 and 3 reuse call 1's
    assert graphs[3] is not graphs[0]  # call 4 rebuilds, on its own input
    assert torch.equal(graphs[3].index, KNN(4).build(*block.embed(x2)[:2]).index)
    other = block.build_graph(torch.randn(1, 8, 6, 6))  # another shape: never the kept graph
    assert other.index.shape[0] == 1
    block.eval()
    assert block.build_graph(x1) is not block.build_graph(x1)  # eval: every call builds
    # forward with the schedule equals forward with the kept graph passed explicitly
    block.train()
    block.reset_graph_state()
    g = block.build_graph(x1)
    out = block(x2)  # second call: reuses g
    assert torch.equal(out, block(x2, graph=g))


def test_state_is_not_pickled_or_copied():
    block = NonLocalBlock2d(8, 4, graph=KNN(4, search="ivf", refresh_every=2))
    block(torch.randn(1, 8, 8, 8))
    assert len(block.graph_state) == 2  # centroids and the kept graph
    assert len(copy.deepcopy(block).graph_state) == 0
    assert len(pickle.loads(pickle.dumps(block)).graph_state) == 0
    assert "_graph_state" not in block.state_dict()


def test_block_with_all_lists_probed_equals_exact_graph():
    """A block's output and gradients with the clustered graph (every list probed) equal those
    with the exact graph."""
    torch.manual_seed(1)
    block = NonLocalBlock2d(8, 4, zero_init=False, graph=KNN(5))
    ivf = copy.deepcopy(block)
    ivf.graph = KNN(5, search="ivf", n_clusters=4, n_probe=4)
    x = torch.randn(2, 8, 8, 8, requires_grad=True)
    xi = x.detach().clone().requires_grad_(True)
    z, zi = block(x), ivf(xi)
    assert torch.equal(z, zi)
    z.square().sum().backward()
    zi.square().sum().backward()
    assert torch.equal(x.grad, xi.grad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k: expected a positive int"),
        ({"k": 2, "search": "lsh"}, "search: expected one of"),
        ({"k": 2, "n_probe": 2}, "n_probe: only used by search='ivf'"),
        ({"k": 2, "search": "ivf", "n_probe": 0}, "n_probe: expected a positive int"),
        (
            {"k": 2, "search": "ivf", "n_clusters": 4, "n_probe": 5},
            r"n_probe: expected an int in \[1, n_clusters=4\]",
        ),
        ({"k": 2, "refresh_every": 0}, "refresh_every: expected a positive int"),
    ],
)
def test_spec_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KNN(**kwargs)


def test_search_bad_input():
    x = torch.randn(1, 50, 4)
    with pytest.raises(ValueError, match=r"n_probe: expected an int in \[1, n_clusters=8\]"):
        ivf_knn(x, x, 3, n_clusters=8, n_probe=9)
    with pytest.raises(ValueError, match="k: expected a positive int"):
        ivf_knn(x, x, 0)
    bad = x.clone()
    bad[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="key: expected finite values"):
        ivf_knn(x, bad, 3)
    with pytest.raises(ValueError, match="query: expected finite values"):
        KNN(3, search="ivf").build(bad, x)
    with pytest.raises(ValueError, match=r"centroids: expected a \(1, 8, 4\) tensor"):
        ivf_knn(x, x, 3, n_clusters=8, centroids=torch.zeros(1, 7, 4))
    with pytest.raises(TypeError, match="seed: expected an int"):
        KNN(3, search="ivf", seed=1.5)  # type: ignore[arg-type]


def test_knn_recall_hand_made():
    exact = RegularGraph(torch.tensor([[[0, 1, 2], [1, 2, 3]]]), 5)
    approx = RegularGraph(
        torch.tensor([[[0, 4, 2], [1, 0, 0]]]),
        5,
        torch.tensor([[[True, True, True], [True, False, False]]]),
    )
    # query 0 finds {0, 2} of {0, 1, 2}; query 1 finds {1} of {1, 2, 3} (padding does not count)
    assert knn_recall(approx, exact) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert knn_recall(exact, exact) == 1.0
    # COO and edge_index (duplicates count once; a query with no exact edge is left out)
    e = COOGraph(torch.tensor([[0, 1, 1], [0, 0, 1]]), 3, 3)
    a = COOGraph(torch.tensor([[1, 1, 2], [0, 0, 1]]), 3, 3)
    assert knn_recall(a, e) == pytest.approx((1 / 2 + 0) / 2)
    assert knn_recall(a.edge_index.flip(0), e.edge_index.flip(0), query_row=0) == pytest.approx(
        0.25
    )
    with pytest.raises(TypeError, match="approx: expected the same kind of graph"):
        knn_recall(a, exact)
    with pytest.raises(ValueError, match=r"approx: expected \(G, N\) = \(1, 2\)"):
        knn_recall(RegularGraph(torch.zeros(1, 3, 3, dtype=torch.long), 5), exact)


def test_point_knn_with_ivf():
    """knn/knn_graph(search="ivf"): every list probed equals the exact search per graph of a
    batch (self-loops left out); bad arguments name themselves."""
    from nlgraph.graphs import knn, knn_graph

    x = _mixture(1, 900, 6, 8, seed=9)[0]
    batch = torch.tensor([0] * 400 + [2] * 500)  # graph 1 is empty
    exact = knn_graph(x, 7, batch, search="exact")
    got = knn_graph(x, 7, batch, search="ivf", n_clusters=6, n_probe=6)
    assert torch.equal(got, exact)
    y = _mixture(1, 50, 6, 8, seed=10)[0]
    assert torch.equal(
        knn(x, y, 4, metric="ip", search="ivf", n_clusters=5, n_probe=5),
        knn(x, y, 4, metric="ip"),
    )
    approx = knn_graph(x, 7, batch, search="ivf")
    assert knn_recall(approx, exact) > 0.8
    with pytest.raises(ValueError, match="n_probe: only used by search='ivf'"):
        knn_graph(x, 3, n_probe=2)
    with pytest.raises(ValueError, match=r"n_probe: expected an int in \[1, n_clusters=2\]"):
        knn_graph(x, 3, search="ivf", n_clusters=2, n_probe=3)
    with pytest.raises(ValueError, match="search: 'ivf' needs backend 'torch'"):
        knn_graph(x, 3, search="ivf", backend="faiss")
