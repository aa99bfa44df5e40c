r"""RelationNetwork against a slow float64 reference written from the paper's formula.

Santoro et al. 2017: :math:`\mathrm{RN}(O) = f\bigl(\sum_{i,j} g([o_i; o_j; c])\bigr)`. The
reference concatenates :math:`[x_i; x_j; c]` for every pair (the module never does: it splits
the first layer of g), applies the layers of g and f from their weights, and pools with a
boolean edge mask (all pairs, or the edges of a graph); the PyG-style reference loops over the
edges one by one.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from nlgraph.graphs import KNN, COOGraph, RegularGraph
from nlgraph.nn import RelationNetwork


def _linears(seq: nn.Module) -> list[nn.Linear]:
    return [m for m in seq.modules() if isinstance(m, nn.Linear)]


def _g(rn: RelationNetwork, z: Tensor) -> Tensor:
    """g on concatenated pair inputs [x_i; x_j; c] (..., 2C + C_c), float64."""
    weights = [rn.g_target.weight, rn.g_source.weight]
    if rn.g_cond is not None:
        weights.append(rn.g_cond.weight)
    w1 = torch.cat(weights, 1).double()
    h = torch.relu(z @ w1.T + rn.g_target.bias.double())
    for lin in _linears(rn.g):
        h = torch.relu(h @ lin.weight.double().T + lin.bias.double())
    return h


def _f(rn: RelationNetwork, h: Tensor) -> Tensor:
    layers = _linears(rn.f)
    for k, lin in enumerate(layers):
        h = h @ lin.weight.double().T + lin.bias.double()
        if k < len(layers) - 1:
            h = torch.relu(h)
    return h


def reference_dense(
    rn: RelationNetwork, x: Tensor, cond: Tensor | None, mask: Tensor, agg: str, readout: str
) -> Tensor:
    """mask (B, N, N): mask[b, i, j] is the edge j -> i."""
    x = x.double()
    b, n, c = x.shape
    parts = [x[:, :, None].expand(b, n, n, c), x[:, None].expand(b, n, n, c)]
    if cond is not None:
        parts.append(cond.double()[:, None, None].expand(b, n, n, -1))
    h = _g(rn, torch.cat(parts, -1)) * mask.double()[..., None]  # (B, N, N, H)
    dims = (2,) if readout == "node" else (1, 2)
    out, count = h.sum(dims), mask.double().sum(dims)
    if agg == "mean":
        out = out / count.clamp_min(1)[..., None]
    return _f(rn, out)


def reference_edges(
    rn: RelationNetwork, x: Tensor, cond: Tensor | None, edge_index: Tensor, batch: Tensor,
    num_graphs: int, agg: str, readout: str,
) -> Tensor:  # fmt: skip
    """An explicit loop over the edges j -> i of PyG-style input."""
    rows = x.shape[0] if readout == "node" else num_graphs
    out = torch.zeros(rows, rn.hidden_channels, dtype=torch.float64)
    count = torch.zeros(rows, dtype=torch.float64)
    for j, i in edge_index.t().tolist():
        parts = [x[i].double(), x[j].double()]
        if cond is not None:
            parts.append(cond[batch[i]].double())
        row = i if readout == "node" else int(batch[i])
        out[row] += _g(rn, torch.cat(parts))
        count[row] += 1
    if agg == "mean":
        out = out / count.clamp_min(1)[:, None]
    return _f(rn, out)


def full_mask(b: int, n: int, self_loops: bool) -> Tensor:
    mask = torch.ones(b, n, n, dtype=torch.bool)
    if not self_loops:
        mask &= ~torch.eye(n, dtype=torch.bool)
    return mask


def make(**kw: object) -> RelationNetwork:
    torch.manual_seed(0)
    kw.setdefault("hidden_channels", 8)
    kw.setdefault("out_channels", 5)
    return RelationNetwork(6, **kw).double()  # type: ignore[arg-type]


@pytest.mark.parametrize("readout", ["graph", "node"])
@pytest.mark.parametrize("agg", ["sum", "mean"])
@pytest.mark.parametrize("self_loops", [True, False])
@pytest.mark.parametrize("cond_channels", [0, 3])
def test_full_graph(readout: str, agg: str, self_loops: bool, cond_channels: int) -> None:
    rn = make(cond_channels=cond_channels, aggregation=agg, readout=readout, self_loops=self_loops)
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    cond = torch.randn(3, 3, dtype=torch.float64) if cond_channels else None
    want = reference_dense(rn, x, cond, full_mask(3, 5, self_loops), agg, readout)
    got = rn(x, cond)
    assert got.shape == ((3, 5) if readout == "node" else (3,)) + (5,)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("readout", ["graph", "node"])
@pytest.mark.parametrize("self_loops", [True, False])
def test_knn_graph(readout: str, self_loops: bool) -> None:
    rn = make(cond_channels=2, graph=KNN(3, metric="l2"), readout=readout, self_loops=self_loops)
    x = torch.randn(2, 7, 6, dtype=torch.float64)
    cond = torch.randn(2, 2, dtype=torch.float64)
    # The k nearest (l2, self included) by brute force.
    nearest = torch.cdist(x, x).argsort(-1)[..., :3]
    mask = torch.zeros(2, 7, 7, dtype=torch.bool).scatter_(2, nearest, True)
    if not self_loops:
        mask &= ~torch.eye(7, dtype=torch.bool)
    torch.testing.assert_close(rn(x, cond), reference_dense(rn, x, cond, mask, "sum", readout))


def test_regular_graph_per_sample_with_padding() -> None:
    rn = make(readout="node", aggregation="mean")
    x = torch.randn(2, 4, 6, dtype=torch.float64)
    index = torch.stack([torch.randperm(4)[:3] for _ in range(8)]).reshape(2, 4, 3)
    real = torch.rand(2, 4, 3) < 0.7  # padding slots (False) still hold valid indices
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    for b, i, s in real.nonzero().tolist():
        mask[b, i, index[b, i, s]] = True
    got = rn(x, graph=RegularGraph(index, 4, real))
    torch.testing.assert_close(got, reference_dense(rn, x, None, mask, "mean", "node"))


def test_shared_edge_index_and_coo_graph() -> None:
    rn = make(cond_channels=2)
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    cond = torch.randn(3, 2, dtype=torch.float64)
    ei = torch.tensor([[0, 1, 4, 2, 3], [1, 1, 0, 4, 3]])
    mask = torch.zeros(3, 5, 5, dtype=torch.bool)
    mask[:, ei[1], ei[0]] = True
    want = reference_dense(rn, x, cond, mask, "sum", "graph")
    torch.testing.assert_close(rn(x, cond, edge_index=ei), want)
    torch.testing.assert_close(rn(x, cond, graph=COOGraph(ei, 5, 5)), want)


@pytest.mark.parametrize("readout", ["graph", "node"])
@pytest.mark.parametrize("agg", ["sum", "mean"])
def test_pyg_edge_index_with_batch(readout: str, agg: str) -> None:
    rn = make(cond_channels=3, aggregation=agg, readout=readout)
    batch = torch.tensor([1, 0, 1, 1, 0, 2, 0])  # unsorted; graph 2 has no edge
    x = torch.randn(7, 6, dtype=torch.float64)
    cond = torch.randn(3, 3, dtype=torch.float64)
    ei = torch.tensor([[0, 2, 3, 1, 4, 6, 4], [2, 3, 0, 4, 6, 1, 4]])
    want = reference_edges(rn, x, cond, ei, batch, 3, agg, readout)
    torch.testing.assert_close(rn(x, cond, edge_index=ei, batch=batch), want)


def test_pyg_full_graph_matches_dense() -> None:
    rn = make(cond_channels=2, self_loops=False)
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    cond = torch.randn(3, 2, dtype=torch.float64)
    perm = torch.randperm(12)
    flat, batch = x.reshape(12, 6)[perm], torch.arange(3).repeat_interleave(4)[perm]
    torch.testing.assert_close(rn(flat, cond, batch=batch), rn(x, cond))
    node = make(readout="node")
    torch.testing.assert_close(node(flat, batch=batch), node(x).reshape(12, -1)[perm])


@pytest.mark.parametrize("readout", ["graph", "node"])
@pytest.mark.parametrize("graph", ["full", "knn"])
def test_chunking_and_checkpoint_are_exact(readout: str, graph: str) -> None:
    spec = "full" if graph == "full" else KNN(3, metric="l2")
    x = torch.randn(2, 6, 6, dtype=torch.float64, requires_grad=True)
    outs, grads = [], []
    for chunk, ckpt in ((1 << 16, False), (1, False), (7, True)):
        rn = make(readout=readout, graph=spec, chunk_size=chunk, checkpoint=ckpt, self_loops=False)
        out = rn(x)
        (gx,) = torch.autograd.grad(out.square().sum(), x)
        outs.append(out)
        grads.append(gx)
    for out, gx in zip(outs[1:], grads[1:]):
        torch.testing.assert_close(out, outs[0])
        torch.testing.assert_close(gx, grads[0])


def test_gradcheck() -> None:
    rn = make(hidden_channels=4, out_channels=2, cond_channels=2, g_layers=2, self_loops=False)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    cond = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c: rn(a, c), (x, cond))
    ei = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])
    batch = torch.tensor([0, 0, 1, 1])
    flat = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c: rn(a, c, edge_index=ei, batch=batch), (flat, cond))


def test_repr_and_shapes() -> None:
    rn = RelationNetwork(26, 256, 10, cond_channels=11)
    assert rn.extra_repr() == "26, 256, 10, cond_channels=11"
    rn = RelationNetwork(8, 16, readout="node", graph=KNN(4, metric="l2"), f_layers=0)
    assert rn.extra_repr() == ("8, 16, 16, f_layers=0, readout='node', graph=KNN(k=4, metric='l2')")
    assert rn(torch.randn(2, 9, 8)).shape == (2, 9, 16)
    assert RelationNetwork(8, 16, 3)(torch.randn(2, 1, 8)).shape == (2, 3)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"^aggregation: expected one of 'sum', 'mean'"):
        RelationNetwork(4, aggregation="max")
    with pytest.raises(ValueError, match=r"^readout: expected"):
        RelationNetwork(4, readout="edge")
    with pytest.raises(TypeError, match=r"^graph: expected 'full', a GraphSpec"):
        RelationNetwork(4, graph=8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^graph: expected one of 'full'"):
        RelationNetwork(4, graph="dense")
    with pytest.raises(TypeError, match=r"^in_channels: expected a positive int"):
        RelationNetwork(4.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^g_layers: expected a positive int"):
        RelationNetwork(4, g_layers=0)
    with pytest.raises(ValueError, match=r"^out_channels: expected None or hidden_channels"):
        RelationNetwork(4, 8, 3, f_layers=0)
    with pytest.raises(ValueError, match=r"^cond_channels: expected a non-negative int"):
        RelationNetwork(4, cond_channels=-1)
    with pytest.raises(TypeError, match=r"^self_loops: expected a bool"):
        RelationNetwork(4, self_loops=1)  # type: ignore[arg-type]


def test_bad_inputs() -> None:
    rn = RelationNetwork(4, 8, 3, cond_channels=2)
    x, cond = torch.randn(2, 5, 4), torch.randn(2, 2)
    with pytest.raises(TypeError, match=r"^x: expected a floating-point tensor"):
        rn(x.long(), cond)
    with pytest.raises(ValueError, match=r"^x: expected a 3-D tensor \(B, N, C\)"):
        rn(torch.randn(2, 5, 4, 1), cond)
    with pytest.raises(ValueError, match=r"^x: expected 4 channels"):
        rn(torch.randn(2, 5, 3), cond)
    with pytest.raises(ValueError, match=r"^cond: expected a \(2, 2\) tensor, got None"):
        rn(x)
    with pytest.raises(ValueError, match=r"^cond: expected a \(2, 2\) tensor \(one"):
        rn(x, torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"^cond: expected None"):
        RelationNetwork(4, 8)(x, cond)
    with pytest.raises(ValueError, match=r"^edge_index: expected a \(2, E\) int64"):
        rn(x, cond, edge_index=torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(IndexError, match=r"^edge_index\[0\] \(sources\): expected indices in"):
        rn(x, cond, edge_index=torch.tensor([[5], [0]]))
    with pytest.raises(ValueError, match=r"^batch: expected None with dense input"):
        rn(x, cond, batch=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^graph: expected None with PyG input"):
        rn(torch.randn(5, 4), cond, graph="full")
    with pytest.raises(TypeError, match=r"^batch: expected an int64 tensor"):
        rn(torch.randn(5, 4), cond, batch=torch.zeros(5, dtype=torch.int32))
    with pytest.raises(IndexError, match=r"^batch: expected indices in \[0, 2\)"):
        rn(torch.randn(5, 4), cond, batch=torch.tensor([0, 0, 1, 2, 2]))
    with pytest.raises(ValueError, match=r"^graph: expected a RegularGraph over the 5 objects"):
        rn(x, cond, graph=RegularGraph(torch.zeros(1, 4, 2, dtype=torch.long), 4))
