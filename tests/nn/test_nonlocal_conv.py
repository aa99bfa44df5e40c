"""NonLocalConv against the dense block, an explicit masked reference and PyG's TransformerConv."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.nn import TransformerConv

from nlgraph.nn import NonLocalBlock1d, NonLocalBlock2d
from nlgraph.nn.nonlocal_conv import NonLocalConv

from ..helpers import MODES, expected_scale, randomise_block_, reference_aggregate

C, CI = 6, 4
DT = torch.float64


def complete_edges(n: int) -> Tensor:
    """Every (j, i) pair, self-loops included, by an explicit loop."""
    return torch.tensor([[j, i] for i in range(n) for j in range(n)], dtype=torch.long).t()


def random_edges(n_src: int, n_dst: int, p: float = 0.4, isolated: int | None = 0) -> Tensor:
    """Random distinct edges j -> i; target ``isolated`` gets none."""
    keep = torch.rand(n_dst, n_src) < p
    if isolated is not None:
        keep[isolated] = False
    i, j = keep.nonzero(as_tuple=True)
    perm = torch.randperm(i.numel())
    return torch.stack([j[perm], i[perm]])


def make_conv(mode: str, **kwargs) -> NonLocalConv:
    scale = "inner" if mode == "embedded_gaussian" else None
    conv = NonLocalConv(C, CI, mode=mode, scale=scale, dtype=DT, **kwargs)
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn_like(p) * 0.4)
    return conv


def reference_conv(conv: NonLocalConv, x_src: Tensor, x_dst: Tensor, edges: Tensor):
    """(out, dense weights) from the parameters by einsum and a boolean mask (no norm)."""
    prm = dict(conv.named_parameters())

    def lin(name: str, t: Tensor) -> Tensor:
        return t @ prm[f"{name}.weight"].t() + prm[f"{name}.bias"]

    if conv.mode == "gaussian":
        q, k = x_dst, x_src
    else:
        q, k = lin("theta", x_dst), lin("phi", x_src)
    u = w = None
    if conv.mode == "concatenation":
        u, w = prm["concat_project.weight"].reshape(-1).chunk(2)
    mask = torch.zeros(x_dst.shape[0], x_src.shape[0], dtype=torch.bool)
    mask[edges[1], edges[0]] = True
    scale = expected_scale(conv.scale, C, CI)
    y, weights = reference_aggregate(
        q[None], k[None], lin("g", x_src)[None], conv.mode, scale, u, w, mask
    )
    z = y[0] @ prm["w_z.weight"].t() + prm["w_z.bias"]
    return x_dst + z, weights[0]


@pytest.mark.parametrize("mode", MODES)
def test_complete_graph_equals_block_per_graph(mode: str) -> None:
    scale = "inner" if mode == "embedded_gaussian" else None
    block = NonLocalBlock1d(C, CI, mode=mode, sub_sample=False, norm=None, scale=scale, dtype=DT)
    randomise_block_(block)
    conv = NonLocalConv(C, CI, mode=mode, scale=scale, dtype=DT)
    ours = block.state_dict()
    conv.load_state_dict({k: ours[k].reshape(v.shape) for k, v in conv.state_dict().items()})
    graphs = [torch.randn(n, C, dtype=DT) for n in (5, 7)]
    batch = Batch.from_data_list([Data(x=g, edge_index=complete_edges(len(g))) for g in graphs])
    out = conv(batch.x, batch.edge_index)
    for b, g in enumerate(graphs):
        expected = block(g.t().unsqueeze(0))[0].t()
        torch.testing.assert_close(out[batch.batch == b], expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_random_graph_equals_masked_reference(mode: str) -> None:
    conv = make_conv(mode)
    x = torch.randn(9, C, dtype=DT)
    edges = random_edges(9, 9)
    out, (ei, alpha) = conv(x, edges, return_attention_weights=True)
    expected, weights = reference_conv(conv, x, x, edges)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    assert torch.equal(ei, edges)
    assert alpha.shape == (edges.shape[1], 1)  # PyG's (E, heads)
    torch.testing.assert_close(alpha[:, 0], weights[edges[1], edges[0]], rtol=0, atol=1e-12)
    # the node without incoming edges: y = 0, so out = x + b_z
    torch.testing.assert_close(out[0], x[0] + conv.w_z.bias, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_bipartite(mode: str) -> None:
    conv = make_conv(mode)
    x_src, x_dst = torch.randn(7, C, dtype=DT), torch.randn(4, C, dtype=DT)
    edges = random_edges(7, 4, p=0.5, isolated=3)
    out, (_, alpha) = conv((x_src, x_dst), edges, return_attention_weights=True)
    expected, weights = reference_conv(conv, x_src, x_dst, edges)
    assert out.shape == (4, C)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(alpha[:, 0], weights[edges[1], edges[0]], rtol=0, atol=1e-12)


def test_equals_transformer_conv() -> None:
    conv = make_conv("embedded_gaussian", residual=False)
    with torch.no_grad():  # W_z = [I; 0], b_z = 0: out[:, :C'] is y
        conv.w_z.weight.copy_(torch.eye(C, CI, dtype=DT))
        conv.w_z.bias.zero_()
    tc = TransformerConv(C, CI, heads=1, root_weight=False).to(DT).eval()
    with torch.no_grad():
        for ours, theirs in (("theta", "lin_query"), ("phi", "lin_key"), ("g", "lin_value")):
            getattr(tc, theirs).weight.copy_(getattr(conv, ours).weight)
            getattr(tc, theirs).bias.copy_(getattr(conv, ours).bias)
    x = torch.randn(10, C, dtype=DT)
    edges = random_edges(10, 10)
    y_tc, (ei_tc, alpha_tc) = tc(x, edges, return_attention_weights=True)
    out, (ei, alpha) = conv(x, edges, return_attention_weights=True)
    torch.testing.assert_close(out[:, :CI], y_tc, rtol=0, atol=1e-10)
    torch.testing.assert_close(out[:, CI:], torch.zeros(10, C - CI, dtype=DT))
    assert torch.equal(ei, ei_tc)
    assert alpha.shape == alpha_tc.shape == (edges.shape[1], 1)  # same layout as PyG's
    torch.testing.assert_close(alpha, alpha_tc, rtol=0, atol=1e-12)


def test_attention_only_when_truthy() -> None:
    conv = make_conv("dot_product")
    x, edges = torch.randn(4, C, dtype=DT), complete_edges(4)
    for flag in (None, False, 0):
        assert isinstance(conv(x, edges, return_attention_weights=flag), Tensor)
    assert isinstance(conv(x, edges, return_attention_weights=True), tuple)


def test_empty_graph_is_identity() -> None:
    conv = NonLocalConv(C, CI, bias=False, dtype=DT)
    x = torch.randn(5, C, dtype=DT)
    out, (ei, alpha) = conv(x, torch.empty(2, 0, dtype=torch.long), return_attention_weights=True)
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    assert ei.shape == (2, 0) and alpha.shape == (0, 1)


def test_sparse_adjacency_equals_edge_index() -> None:
    conv = make_conv("embedded_gaussian")
    x = torch.randn(6, C, dtype=DT)
    edges = random_edges(6, 6)
    adj_t = torch.sparse_coo_tensor(
        edges.flip(0), torch.ones(edges.shape[1]), (6, 6), check_invariants=True
    )
    out, adj = conv(x, adj_t, return_attention_weights=True)
    expected, weights = reference_conv(conv, x, x, edges)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(adj.to_dense(), weights.masked_fill(adj_t.to_dense() == 0, 0))


def test_batch_norm_over_nodes() -> None:
    conv = make_conv("dot_product", norm="batch", residual=False)
    plain = NonLocalConv(C, CI, mode="dot_product", norm=None, residual=False, dtype=DT)
    plain.load_state_dict({k: v for k, v in conv.state_dict().items() if "norm" not in k})
    x, edges = torch.randn(8, C, dtype=DT), random_edges(8, 8)
    z = plain(x, edges)
    mean, var = z.mean(0), z.var(0, unbiased=False)
    expected = (z - mean) / torch.sqrt(var + 1e-5) * conv.norm.weight + conv.norm.bias
    torch.testing.assert_close(conv(x, edges), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode: str) -> None:
    conv = NonLocalConv(3, 2, mode=mode, dtype=DT)
    x = torch.randn(4, 3, dtype=DT, requires_grad=True)
    edges = random_edges(4, 4, p=0.6, isolated=None)
    params = tuple(conv.parameters())

    def fn(x: Tensor, *ps: Tensor) -> Tensor:
        return torch.func.functional_call(conv, dict(zip(dict(conv.named_parameters()), ps)),
                                          (x, edges))  # fmt: skip

    ps = tuple(p.detach().clone().requires_grad_() for p in params)
    assert torch.autograd.gradcheck(fn, (x, *ps))


def test_from_reference_2d_block() -> None:
    block = NonLocalBlock2d(C, CI, sub_sample=False, norm="batch", dtype=DT)
    randomise_block_(block).eval()
    sd = block.to_reference("alexhex7")
    conv = NonLocalConv.from_reference(sd, "alexhex7", residual=True).eval()
    assert conv.norm is not None and conv.theta.weight.shape == (CI, C)
    x = torch.randn(1, C, 3, 4, dtype=DT)
    nodes = x.flatten(2)[0].t()
    out = conv(nodes, complete_edges(12))
    torch.testing.assert_close(out, block(x).flatten(2)[0].t(), rtol=0, atol=1e-10)


def test_from_reference_rejects_sub_sampling() -> None:
    sd = NonLocalBlock1d(C, CI, sub_sample=True, dtype=DT).to_reference("alexhex7")
    with pytest.raises(ValueError, match="^sub_sample: expected False"):
        NonLocalConv.from_reference(sd, "alexhex7")


@pytest.mark.parametrize(
    ("args", "error", "prefix"),
    [
        ((torch.randn(1, 4, C, dtype=DT), complete_edges(4)), ValueError, "x: expected a 2-D"),
        ((torch.randn(4, C + 1, dtype=DT), complete_edges(4)), ValueError, "x: expected 6 chan"),
        ((torch.randn(4, C), complete_edges(4)), TypeError, "x: expected dtype"),
        ((torch.randn(4, C, dtype=DT), complete_edges(4)[:1]), ValueError, "edge_index: exp"),
        ((torch.randn(4, C, dtype=DT), complete_edges(4).int()), ValueError, "edge_index: exp"),
        ((torch.randn(4, C, dtype=DT), [[0], [1]]), TypeError, "edge_index: expected"),
        (
            ((torch.randn(4, C, dtype=DT), torch.randn(3, 2, dtype=DT)), complete_edges(3)),
            ValueError,
            r"x\[1\] \(x_dst\): expected 6 channels",
        ),  # fmt: skip
    ],
)
def test_errors(args: tuple, error: type, prefix: str) -> None:
    conv = NonLocalConv(C, CI, dtype=DT)
    with pytest.raises(error, match="^" + prefix):
        conv(*args)


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="^mode: expected"):
        NonLocalConv(C, mode="cosine")
    with pytest.raises(ValueError, match="^scale: expected None"):
        NonLocalConv(C, mode="dot_product", scale="inner")
    with pytest.raises(ValueError, match="^norm: expected"):
        NonLocalConv(C, norm="layer")
    with pytest.raises(TypeError, match="^in_channels: expected"):
        NonLocalConv(2.0)


def test_repr_and_reset() -> None:
    assert repr(NonLocalConv(16, 8, mode="dot_product")) == "NonLocalConv(16, 8, mode=dot_product)"
    assert repr(NonLocalConv(16)) == "NonLocalConv(16, 8)"
    conv = NonLocalConv(4, norm="batch", residual=False, bias=False)
    assert repr(conv) == "NonLocalConv(4, 2, norm=batch, residual=False, bias=False)"
    before = conv.theta.weight.detach().clone()
    conv.reset_parameters()
    assert not torch.equal(before, conv.theta.weight)
