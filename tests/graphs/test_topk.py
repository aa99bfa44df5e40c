"""The shared tie-aware top-k of every graph builder, against a stable argsort."""

from __future__ import annotations

import pytest
import torch

from nlgraph.graphs._topk import topk_tie_low


def _reference(scores: torch.Tensor, k: int, largest: bool, order: str) -> torch.Tensor:
    """The k best per row, ties to the lower index (a stable sort in float64)."""
    best = torch.argsort(scores.double(), dim=-1, descending=largest, stable=True)[..., :k]
    return best.sort(-1).values if order == "index" else best


@pytest.mark.parametrize("m", [7, 300, 1000, 4096, 9000])  # 9000: 64-column groups
@pytest.mark.parametrize("k", [1, 5, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("ties", [False, True])
def test_exact_against_stable_sort(m, k, dtype, ties) -> None:
    k = min(k, m)
    gen = torch.Generator().manual_seed(m + k)
    if ties:
        scores = torch.randint(-3, 4, (2, 9, m), generator=gen).to(dtype)
    else:
        scores = torch.randn(2, 9, m, generator=gen).to(dtype)
    for largest in (True, False):
        for order in ("index", "score"):
            got = topk_tie_low(scores, k, largest=largest, order=order)
            assert got.dtype == torch.long and got.shape == (2, 9, k)
            assert torch.equal(got, _reference(scores, k, largest, order)), (largest, order)


def test_ties_across_groups() -> None:
    """The k-th value ties with entries in groups that are not among the best groups."""
    scores = torch.zeros(1, 8192)
    scores[0, 8000] = 5.0
    scores[0, 10] = 3.0
    scores[0, 4000] = 3.0  # tied with index 10, which wins
    scores[0, 200] = 3.0
    assert topk_tie_low(scores, 2).tolist() == [[10, 8000]]
    assert topk_tie_low(scores, 3).tolist() == [[10, 200, 8000]]
    assert topk_tie_low(scores, 3, order="score").tolist() == [[8000, 10, 200]]


def test_signed_zeros_tie() -> None:
    """-0.0 and 0.0 are equal scores: the lower index wins either way round."""
    scores = torch.tensor([[-0.0, 0.0, -1.0], [0.0, -0.0, -1.0]])
    assert topk_tie_low(scores, 1).tolist() == [[0], [0]]
    assert topk_tie_low(-scores, 1, largest=False).tolist() == [[0], [0]]


def test_infinities_and_short_rows() -> None:
    scores = torch.tensor([[float("-inf"), 2.0, float("inf"), float("-inf")]])
    assert topk_tie_low(scores, 2, order="score").tolist() == [[2, 1]]
    assert topk_tie_low(scores, 3).tolist() == [[0, 1, 2]]  # the first -inf, by index
    assert topk_tie_low(scores, 9).tolist() == [[0, 1, 2, 3]]  # k >= M: every index
    assert topk_tie_low(scores, 9, order="score").tolist() == [[2, 1, 0, 3]]


def test_no_host_reads() -> None:
    """The selection never reads a tensor value back (compile- and CUDA-async-safe)."""
    from tests.host_reads import count_host_reads

    scores = torch.randint(0, 3, (4, 9000)).float()
    assert count_host_reads(lambda: topk_tie_low(scores, 16)) == []
    assert count_host_reads(lambda: topk_tie_low(scores.double(), 16)) == []


@pytest.mark.parametrize("m", [7, 300, 9000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_nan_ranks_last_level_with_minus_inf(m, dtype) -> None:
    """Regression: NaN used to rank first (as in torch.topk), so one NaN feature made a key
    every query's nearest neighbour. Now NaN ranks last, tied with -inf (lower index first),
    whether the best is the largest or the smallest."""
    gen = torch.Generator().manual_seed(m)
    scores = torch.randn(3, m, generator=gen).to(dtype)
    scores[:, ::5] = float("nan")
    scores[1, 1::7] = float("-inf")
    scores[2, :] = float("nan")  # a row of NaN only: the first k indices
    for largest in (True, False):
        worst = float("-inf") if largest else float("inf")
        want = _reference(scores.nan_to_num(nan=worst, posinf=float("inf"), neginf=float("-inf")),
                          4, largest, "score")  # fmt: skip
        got = topk_tie_low(scores.clone(), 4, largest=largest, order="score")
        assert torch.equal(got, want)
        assert got[2].tolist() == [0, 1, 2, 3]
    assert torch.equal(topk_tie_low(scores.clone(), m, order="score")[2], torch.arange(m))
