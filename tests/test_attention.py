"""nlgraph.Attention: dense view, edge list, weights and networkx export."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

from nlgraph import Attention, Pairwise, nonlocal_aggregate
from tests.helpers import MODES, SOFTMAX_MODES

F64 = torch.float64


def _attention(mode: str, b: int = 2, n: int = 5, m: int = 3) -> Attention:
    q, k, v = torch.randn(b, n, 4, dtype=F64), torch.randn(b, m, 4, dtype=F64), torch.randn(b, m, 2)
    pw = Pairwise(mode, concat_weight=torch.randn(8, dtype=F64))
    _, attn = nonlocal_aggregate(q, k, v.double(), pw, return_attention=True)
    return attn


def test_to_dense_and_sizes() -> None:
    dense = torch.rand(2, 5, 3)
    attn = Attention(dense)
    assert attn.to_dense() is dense
    assert attn.num_queries == 5 and attn.num_keys == 3


def test_edge_index_matches_explicit_list() -> None:
    attn = Attention(torch.rand(2, 4, 3))
    ei = attn.edge_index
    assert ei.dtype == torch.long and ei.shape == (2, 12)
    explicit = [(j, i) for i in range(4) for j in range(3)]  # (source key j, target query i)
    assert list(zip(*ei.tolist())) == explicit


def test_weights_aligned_with_edge_index() -> None:
    dense = torch.rand(2, 4, 3)
    attn = Attention(dense)
    w = attn.weights
    assert w.shape == (2, 12)
    src, dst = attn.edge_index
    for b in range(2):
        assert torch.equal(w[b], dense[b, dst, src])


@pytest.mark.parametrize("mode", MODES)
def test_to_networkx(mode) -> None:
    attn = _attention(mode)
    dense = attn.to_dense()
    for sample in (0, 1, -1):
        g = attn.to_networkx(sample)
        assert isinstance(g, nx.DiGraph)
        assert g.number_of_nodes() == 5 + 3
        assert g.number_of_edges() == 5 * 3
        b = sample % 2
        assert g.edges[("k", 2), ("q", 4)]["weight"] == pytest.approx(dense[b, 4, 2].item())
        assert g.edges[("k", 0), ("q", 1)]["weight"] == pytest.approx(dense[b, 1, 0].item())
        # Keys only send, queries only receive.
        assert all(g.in_degree(("k", j)) == 0 and g.out_degree(("k", j)) == 5 for j in range(3))
        in_sums = dict(g.in_degree(weight="weight"))
        for i in range(5):
            expected = 1.0 if mode in SOFTMAX_MODES else dense[b, i].sum().item()
            assert in_sums[("q", i)] == pytest.approx(expected, abs=1e-12)


def test_to_networkx_accepts_tensors_that_require_grad() -> None:
    dense = torch.rand(1, 2, 2, requires_grad=True)
    g = Attention(dense * 1.0).to_networkx()
    assert g.number_of_edges() == 4


@pytest.mark.parametrize("sample", [2, 5, -3])
def test_to_networkx_bad_sample(sample) -> None:
    attn = Attention(torch.rand(2, 3, 3))
    with pytest.raises(IndexError, match=r"^sample: expected an index in \[0, 2\), got"):
        attn.to_networkx(sample)


def test_repr() -> None:
    assert repr(Attention(torch.rand(2, 5, 3))) == (
        "Attention(batch=2, num_queries=5, num_keys=3, graph='full')"
    )


@pytest.mark.parametrize("shape", [(5, 3), (1, 2, 5, 3), ()])
def test_bad_dense_shape(shape) -> None:
    with pytest.raises(ValueError, match=r"^dense: expected a \(B, N, N'\) tensor"):
        Attention(torch.rand(shape))
