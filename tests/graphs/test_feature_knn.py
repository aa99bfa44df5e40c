"""Exact top-k selection used by the feature-space KNN graph, against a stable argsort."""

from __future__ import annotations

import pytest
import torch

from nlgraph.graphs.feature_knn import topk_grouped, topk_lowest_index


def _reference(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest per row, ties to the lower index, in ascending index order."""
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)[..., :k]
    return order.sort(-1).values


@pytest.mark.parametrize("m", [7, 300, 1000, 4096, 5000])
@pytest.mark.parametrize("k", [1, 5, 16])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("select", [topk_lowest_index, topk_grouped], ids=["plain", "grouped"])
def test_topk_selection_is_exact(m, k, ties, select):
    k = min(k, m)  # k = m: every column
    scores = torch.randint(0, 4, (2, 19, m)).double() if ties else torch.randn(2, 19, m)
    assert torch.equal(select(scores, k), _reference(scores, k))


def test_grouped_ties_across_groups():
    """The k-th value ties with an entry in a group that is not among the top-k groups."""
    scores = torch.zeros(1, 1024)
    scores[0, 1000] = 5.0  # group 7
    scores[0, 10] = 3.0  # group 0
    scores[0, 600] = 3.0  # group 4: tied with index 10, which wins
    scores[0, 200] = 3.0  # group 1
    assert topk_grouped(scores, 2).tolist() == [[10, 1000]]
    assert topk_grouped(scores, 3).tolist() == [[10, 200, 1000]]


@pytest.mark.parametrize("metric", ["logit", "l2"])
@pytest.mark.parametrize("m", [2500, 2560])  # padded last group, and an exact multiple of 128
@pytest.mark.parametrize("small_blocks", [False, True])
def test_knn_build_blocks_are_exact(metric, m, small_blocks, monkeypatch):
    """The blocked build (many blocks, a partial last one, padded groups)
    equals a brute-force stable argsort; integer features make the scores exact and tied."""
    from nlgraph.graphs import KNN, feature_knn

    if small_blocks:  # 2**14 elements: 6 or 7 query rows per block
        monkeypatch.setattr(feature_knn, "AUTO_BLOCK_ELEMENTS", 1 << 14)
    gen = torch.Generator().manual_seed(m)
    q = torch.randint(-2, 3, (2, 301, 4), generator=gen).float()
    k = torch.randint(-2, 3, (2, m, 4), generator=gen).float()
    got = KNN(16, metric=metric).build(q, k).index
    if metric == "logit":
        scores = q.double() @ k.double().transpose(1, 2)
    else:
        scores = -torch.cdist(q.double(), k.double())
    assert torch.equal(got, _reference(scores, 16))
