"""The feature-space KNN graph builder against a brute-force stable argsort."""

from __future__ import annotations

import pytest
import torch


def _reference(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest per row, ties to the lower index, in ascending index order."""
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)[..., :k]
    return order.sort(-1).values


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
