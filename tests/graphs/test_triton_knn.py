"""The fused Triton k-NN search (``nlgraph.graphs._triton_knn``), run on CPU tensors in Triton's
interpreter: exact against an independent float64 brute force and equal to the torch exact
builder of ``KNN``, ties towards the lower key index included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip(
    "triton", reason="the fused k-NN search needs triton (pip install nlgraph[triton])"
)

from nlgraph.graphs import KNN  # noqa: E402
from nlgraph.graphs import _triton_knn as fused  # noqa: E402
from nlgraph.graphs._triton_knn import (  # noqa: E402
    MAX_K,
    force_triton_knn,
    triton_knn,
    triton_knn_unsupported,
    use_triton_knn,
)

METRICS = ("logit", "l2", "cosine")


@pytest.fixture(autouse=True)
def interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton's interpreter for every test (the kernel is jitted lazily, per setting)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def brute_force(query: torch.Tensor, key: torch.Tensor, k: int, metric: str) -> torch.Tensor:
    """(B, N, k) ascending indices of the k best keys in float64: a stable descending sort of
    the scores, so equal scores keep the lower key first; NaN is not expected here."""
    q, kk = query.double(), key.double()
    if metric == "cosine":
        q, kk = F.normalize(q, dim=-1), F.normalize(kk, dim=-1)
    if metric == "l2":
        scores = -(torch.cdist(q, kk) ** 2)
    else:
        scores = q @ kk.transpose(1, 2)
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    return torch.sort(order[..., :k], dim=-1).values


def torch_exact(query: torch.Tensor, key: torch.Tensor, k: int, metric: str) -> torch.Tensor:
    with force_triton_knn(False):
        graph = KNN(k, metric=metric, search="exact").build(query, key)
    return graph.index


def integer_data(*shape: int, low: int = -2, high: int = 3, seed: int = 0) -> torch.Tensor:
    """Small integers: every product and sum is exact in float32 and many scores tie."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, shape, generator=generator).float()


@pytest.mark.parametrize("metric", METRICS)
def test_random_matches_float64_brute_force(metric: str) -> None:
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(2, 37, 6, generator=generator)
    key = torch.randn(2, 53, 6, generator=generator)
    index = triton_knn(query, key, 5, metric=metric)
    assert index.shape == (2, 37, 5) and index.dtype == torch.long
    assert torch.equal(index, brute_force(query, key, 5, metric))
    assert torch.equal(index, torch_exact(query, key, 5, metric))


@pytest.mark.parametrize("metric", METRICS)
def test_ties_towards_lower_index(metric: str) -> None:
    query, key = integer_data(2, 37, 4, seed=2), integer_data(2, 53, 4, seed=3)
    index = triton_knn(query, key, 5, metric=metric)
    scores = query @ key.transpose(1, 2)
    kth = scores.sort(-1, descending=True).values[..., 4]
    assert (scores == kth.unsqueeze(-1)).sum(-1).max() > 2  # the k-th place is really tied
    assert torch.equal(index, torch_exact(query, key, 5, metric))
    if metric != "cosine":  # exact scores: the float64 order is the float32 order
        assert torch.equal(index, brute_force(query, key, 5, metric))


def test_all_scores_equal() -> None:
    query, key = torch.ones(1, 20, 3), torch.ones(1, 70, 3)
    expected = torch.arange(7).expand(1, 20, 7)
    assert torch.equal(triton_knn(query, key, 7), expected)


@pytest.mark.parametrize(
    ("n", "m", "c", "k"),
    [(37, 53, 5, 52), (16, 40, 3, 1), (20, 100, 40, MAX_K), (9, 17, 16, 17)],
    ids=["k=N'-1", "k=1", "k=MAX_K,C>chunk", "k=N'"],
)
def test_sizes(n: int, m: int, c: int, k: int) -> None:
    query, key = integer_data(1, n, c, seed=4), integer_data(1, m, c, seed=5)
    index = triton_knn(query, key, k, metric="l2")
    assert torch.equal(index, brute_force(query, key, k, "l2"))
    if k < m:
        assert torch.equal(index, torch_exact(query, key, k, "l2"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("metric", METRICS)
def test_half_inputs_match_torch_path(dtype: torch.dtype, metric: str) -> None:
    """Scores rounded to the input dtype, as the torch path's half bmm: the same ties."""
    query = integer_data(2, 37, 6, low=-4, high=5, seed=6).to(dtype)
    key = integer_data(2, 53, 6, low=-4, high=5, seed=7).to(dtype)
    assert torch.equal(triton_knn(query, key, 5, metric=metric), torch_exact(query, key, 5, metric))


@pytest.mark.parametrize("metric", ("logit", "l2"))
def test_nan_and_signed_zero(metric: str) -> None:
    """NaN scores rank last, level with -inf (a key with a NaN feature is nobody's neighbour
    while k finite keys exist; a query with one takes the first k keys); -0.0 ties with 0.0."""
    generator = torch.Generator().manual_seed(8)
    query, key = (
        torch.randn(1, 10, 4, generator=generator),
        torch.randn(1, 30, 4, generator=generator),
    )
    key[0, 7, 1] = float("nan")
    query[0, 3, 2] = float("nan")
    index = triton_knn(query, key, 3, metric=metric)
    assert not (index[:, [0, 1, 2, 4, 5, 6, 7, 8, 9]] == 7).any()
    assert index[0, 3].tolist() == [0, 1, 2]
    assert torch.equal(index, torch_exact(query, key, 3, metric))
    zero_keys = torch.zeros(1, 40, 4)
    zero_keys[0, ::2] = -0.0
    assert triton_knn(torch.zeros(1, 8, 4), zero_keys, 3)[0, 0].tolist() == [0, 1, 2]


def test_knn_builder_takes_the_kernel_only_when_forced_on_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    query, key = integer_data(2, 37, 4, seed=9), integer_data(2, 53, 4, seed=10)
    assert not use_triton_knn(query, key, 5)  # never on CPU by default
    calls = []
    real = fused.triton_knn

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("nlgraph.graphs.feature_knn.triton_knn", spy)
    for metric in METRICS:
        spec = KNN(5, metric=metric, search="exact")
        expected = spec.build(query, key).index
        with force_triton_knn():
            assert use_triton_knn(query, key, 5)
            graph = spec.build(query, key)
        assert torch.equal(graph.index, expected)
        assert graph.num_keys == 53 and graph.mask is None
    assert len(calls) == len(METRICS)
    assert not use_triton_knn(query, key, 5)  # the switch is scoped


def test_unsupported_inputs_fall_back() -> None:
    query, key = integer_data(1, 8, 4, seed=11), integer_data(1, 80, 4, seed=12)
    assert triton_knn_unsupported(query, key, MAX_K) == []
    assert "k=65" in triton_knn_unsupported(query, key, MAX_K + 1)[0]
    assert "dtype=torch.float64" in triton_knn_unsupported(query.double(), key.double(), 3)[0]
    with pytest.raises(NotImplementedError, match=r"^triton_knn: unsupported inputs: k=65"):
        triton_knn(query, key, MAX_K + 1)
    with force_triton_knn():  # unsupported: KNN keeps its torch path
        graph = KNN(MAX_K + 1, search="exact").build(query, key)
        assert torch.equal(graph.index, brute_force(query, key, MAX_K + 1, "logit"))
        double = KNN(3, search="exact").build(query.double(), key.double())
        assert torch.equal(double.index, brute_force(query, key, 3, "logit"))


def test_no_queries() -> None:
    assert triton_knn(torch.zeros(2, 0, 4), torch.zeros(2, 9, 4), 3).shape == (2, 0, 3)
