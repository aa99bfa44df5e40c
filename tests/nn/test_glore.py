r"""GlobalReasoning (GloRe) against an fp64 reference written from Chen et al., "Graph-Based Global
Reasoning Networks", CVPR 2019 (https://arxiv.org/abs/1811.12814), with explicit loops over the
latent nodes and graphs:

.. math::
    V = B^\top \Phi / Z, \quad H = V \pm (A_g V + b_A), \quad
    Y = B\, \mathrm{ReLU}(H) W_g^\top, \quad out = X + \mathrm{BN}(Y W_e^\top)
"""

from __future__ import annotations

import time

import pytest
import torch

from nlgraph.nn import GlobalReasoning
from tests.helpers import randomise_block_

F64 = torch.float64
SHAPES = {1: (7,), 2: (4, 5), 3: (2, 3, 4)}


def _unit(c: int = 6, m: int = 3, cp: int = 5, **kw) -> GlobalReasoning:
    unit = GlobalReasoning(c, m, cp, zero_init=False, dtype=F64, **kw)
    return randomise_block_(unit)


def _params(unit: GlobalReasoning) -> dict:
    return {k: v.detach().clone() for k, v in unit.state_dict().items()}


def reference_rows(x: torch.Tensor, p: dict, *, normalize: bool, sign: float) -> torch.Tensor:
    """The GloRe reasoning path for ONE sample or graph: x (N, C) rows → Y W_e^T (N, C)."""
    x = x.double()
    n = x.shape[0]
    phi = x @ p["phi.weight"].T + p["phi.bias"]  # (N, C')
    proj = x @ p["theta.weight"].T + p["theta.bias"]  # (N, M)
    m_nodes = proj.shape[1]
    # V_m = sum_i B_im phi_i: an explicit loop over positions.
    v = torch.zeros(m_nodes, phi.shape[1], dtype=F64)
    for i in range(n):
        v += torch.outer(proj[i], phi[i])
    if normalize:
        v = v / n
    # Graph convolution across nodes, node by node: (A_g V)_m = sum_k A_mk V_k + b_m.
    a, b = p["adjacency.weight"], p["adjacency.bias"]
    h = torch.stack([v[m] + sign * (sum(a[m, k] * v[k] for k in range(m_nodes)) + b[m])
                     for m in range(m_nodes)])  # fmt: skip
    z = torch.relu(h) @ p["state_update.weight"].T  # (M, C')
    y = torch.einsum("nm,mc->nc", proj, z)
    return y @ p["extend.weight"].T


def reference_bn(z: torch.Tensor, p: dict, eps: float, training: bool) -> torch.Tensor:
    """BatchNorm of rows z (R, C) from its definition (biased batch variance in training)."""
    if training:
        mean, var = z.mean(0), z.var(0, unbiased=False)
    else:
        mean, var = p["norm.running_mean"], p["norm.running_var"]
    return (z - mean) / torch.sqrt(var + eps) * p["norm.weight"] + p["norm.bias"]


def reference_map(x: torch.Tensor, unit: GlobalReasoning, training: bool) -> torch.Tensor:
    p, sign = _params(unit), (1.0 if unit.graph_form == "code" else -1.0)
    b, c = x.shape[:2]
    rows = x.double().reshape(b, c, -1).transpose(1, 2)  # (B, N, C)
    z = torch.stack([reference_rows(r, p, normalize=unit.normalize, sign=sign) for r in rows])
    if unit.norm is not None:
        z = reference_bn(z.reshape(-1, c), p, unit.norm.eps, training).reshape(z.shape)
    return (rows + z).transpose(1, 2).reshape(x.shape)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("graph_form", ["code", "paper"])
@pytest.mark.parametrize("training", [False, True])
def test_map_matches_reference(dims, normalize, graph_form, training):
    torch.manual_seed(0)
    unit = _unit(normalize=normalize, graph_form=graph_form).train(training)
    x = torch.randn(2, 6, *SHAPES[dims], dtype=F64)
    ref = reference_map(x, unit, training)
    out = unit(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)


def test_without_norm_matches_reference():
    torch.manual_seed(1)
    unit = _unit(norm=None)
    assert unit.norm is None and "norm.weight" not in unit.state_dict()
    x = torch.randn(3, 6, 4, 4, dtype=F64)
    torch.testing.assert_close(unit(x), reference_map(x, unit, True), atol=1e-10, rtol=1e-10)


def test_paper_and_code_forms_differ_by_the_sign_of_the_adjacency():
    torch.manual_seed(2)
    code = _unit(graph_form="code").eval()
    paper = _unit(graph_form="paper").eval()
    paper.load_state_dict(code.state_dict())
    with torch.no_grad():
        paper.adjacency.weight.neg_()
        paper.adjacency.bias.neg_()
    x = torch.randn(2, 6, 5, 5, dtype=F64)
    torch.testing.assert_close(code(x), paper(x), atol=1e-12, rtol=1e-12)


def _graphs_x_batch(sizes=(3, 5, 1, 4), interleave: bool = False):
    batch = torch.cat([torch.full((s,), g, dtype=torch.long) for g, s in enumerate(sizes)])
    if interleave:
        batch = batch[torch.randperm(batch.numel())]
    return torch.randn(batch.numel(), 6, dtype=F64), batch


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("interleave", [False, True])
def test_batch_vector_equals_separate_calls(normalize, interleave):
    torch.manual_seed(3)
    unit = _unit(normalize=normalize).eval()
    x, batch = _graphs_x_batch(interleave=interleave)
    out = unit(x, batch)
    for g in range(int(batch.max()) + 1):
        sel = batch == g
        torch.testing.assert_close(out[sel], unit(x[sel]), atol=1e-10, rtol=1e-10)
    assert torch.equal(unit(x, batch, num_graphs=4), out)


def test_batch_vector_matches_reference_in_training():
    """Train-mode BN pools every node of every graph; the reasoning stays per graph."""
    torch.manual_seed(4)
    unit = _unit(normalize=True).train()
    x, batch = _graphs_x_batch(interleave=True)
    p = _params(unit)
    z = torch.zeros_like(x)
    for g in range(4):
        sel = batch == g
        z[sel] = reference_rows(x[sel], p, normalize=True, sign=1.0)
    ref = x + reference_bn(z, p, unit.norm.eps, True)
    torch.testing.assert_close(unit(x, batch), ref, atol=1e-10, rtol=1e-10)


def test_node_input_without_batch_is_one_graph():
    torch.manual_seed(5)
    unit = _unit().eval()
    x = torch.randn(9, 6, dtype=F64)
    ref = x + reference_bn(reference_rows(x, _params(unit), normalize=False, sign=1.0),
                           _params(unit), unit.norm.eps, False)  # fmt: skip
    torch.testing.assert_close(unit(x), ref, atol=1e-10, rtol=1e-10)
    # Same as the 1-D map (1, C, N) holding the nodes as positions.
    torch.testing.assert_close(unit(x.T.unsqueeze(0))[0].T, unit(x), atol=1e-12, rtol=1e-12)


def test_position_permutation_equivariance():
    torch.manual_seed(6)
    unit = _unit().train()
    x = torch.randn(2, 6, 12, dtype=F64)
    perm = torch.randperm(12)
    torch.testing.assert_close(unit(x[..., perm]), unit(x)[..., perm], atol=1e-10, rtol=1e-10)


def test_gradcheck_map_and_graphs():
    torch.manual_seed(7)
    unit = _unit(c=3, m=2, cp=2, normalize=True).train()
    x = torch.randn(2, 3, 2, 3, dtype=F64, requires_grad=True)
    params = tuple(unit.parameters())

    def f_map(x, *ps):
        return torch.func.functional_call(unit, dict(zip(dict(unit.named_parameters()), ps)), (x,))

    assert torch.autograd.gradcheck(f_map, (x, *params), fast_mode=True)
    xn = torch.randn(5, 3, dtype=F64, requires_grad=True)
    batch = torch.tensor([0, 1, 0, 1, 1])

    def f_nodes(x, *ps):
        named = dict(zip(dict(unit.named_parameters()), ps))
        return torch.func.functional_call(unit, named, (x, batch))

    assert torch.autograd.gradcheck(f_nodes, (xn, *params), fast_mode=True)


def test_zero_init_is_identity():
    unit = GlobalReasoning(8, 4)
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(unit(x), x)
    assert torch.count_nonzero(unit.norm.weight) == 0
    assert GlobalReasoning(8, 4, norm=None).extend.weight.abs().sum() == 0


def test_defaults_repr_and_state_dict_keys():
    unit = GlobalReasoning(64, 16)
    assert unit.node_channels == 32  # the official num_s = 2 * num_mid
    assert unit.norm.eps == 1e-4
    assert unit.extra_repr() == "64, 16, 32"
    assert (
        GlobalReasoning(8, 4, 6, normalize=True, graph_form="paper", norm=None).extra_repr()
        == "8, 4, 6, normalize=True, graph_form=paper, norm=None"
    )
    assert set(unit.state_dict()) == {
        "phi.weight", "phi.bias", "theta.weight", "theta.bias", "adjacency.weight",
        "adjacency.bias", "state_update.weight", "extend.weight", "norm.weight", "norm.bias",
        "norm.running_mean", "norm.running_var", "norm.num_batches_tracked",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(num_nodes=0), ValueError, r"^num_nodes: expected a positive int, got 0"),
        (dict(num_nodes=-2), ValueError, r"^num_nodes: expected a positive int"),
        (dict(num_nodes=2.0), TypeError, r"^num_nodes: expected a positive int, got float"),
        (dict(node_channels=0), ValueError, r"^node_channels: expected a positive int"),
        (dict(in_channels=0), ValueError, r"^in_channels: expected a positive int"),
        (dict(graph_form="laplace"), ValueError, r"^graph_form: expected one of 'code'"),
        (dict(norm="layer"), ValueError, r"^norm: expected one of 'batch', None"),
        (dict(norm_eps=0), ValueError, r"^norm_eps: expected a positive float"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    args = dict(in_channels=8, num_nodes=4) | kwargs
    with pytest.raises(exc, match=match):
        GlobalReasoning(**args)


def test_input_errors():
    unit = GlobalReasoning(8, 4)
    with pytest.raises(ValueError, match=r"^x: expected a \(B, C, \*S\) map .* got shape \(8,\)"):
        unit(torch.randn(8))
    with pytest.raises(ValueError, match=r"^x: expected .* got shape \(1, 8, 2, 2, 2, 2\)"):
        unit(torch.randn(1, 8, 2, 2, 2, 2))
    with pytest.raises(ValueError, match=r"^x: expected 8 channels \(dim 1\), got 5"):
        unit(torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match=r"^x: expected 8 channels \(dim 1\), got 5"):
        unit(torch.randn(10, 5))
    with pytest.raises(TypeError, match=r"^x: expected a floating-point tensor"):
        unit(torch.ones(2, 8, 4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"^x: expected dtype torch.float32"):
        unit(torch.randn(2, 8, 4, 4, dtype=F64))
    with pytest.raises(ValueError, match=r"^batch: expected None for a \(B, C, \*S\) map"):
        unit(torch.randn(2, 8, 4, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^batch: expected shape \(10,\)"):
        unit(torch.randn(10, 8), torch.zeros(9, dtype=torch.long))
    with pytest.raises(TypeError, match=r"^batch: expected an int64 tensor"):
        unit(torch.randn(10, 8), torch.zeros(10))
    with pytest.raises(ValueError, match=r"^num_graphs: expected a positive int"):
        unit(torch.randn(10, 8), torch.zeros(10, dtype=torch.long), num_graphs=0)
    # Regression: out-of-range graph indices raised a raw RuntimeError from index_add.
    negative = torch.tensor([0] * 5 + [-1] * 5)
    with pytest.raises(ValueError, match=r"^batch: expected graph indices in \[0, 1\).*\[-1, 0\]"):
        unit(torch.randn(10, 8), negative)
    large = torch.tensor([0] * 5 + [3] * 5)
    with pytest.raises(ValueError, match=r"^batch: expected graph indices in \[0, 2\).*\[0, 3\]"):
        unit(torch.randn(10, 8), large, num_graphs=2)


def test_large_map_is_linear_in_positions():
    """N = 65536 positions, M = 16 nodes: no (N, N) tensor (17 GB in float32) is ever formed."""
    torch.manual_seed(8)
    n_side, m, c = 256, 16, 8
    unit = GlobalReasoning(c, m, 16, normalize=True).eval()
    x = torch.randn(1, c, n_side, n_side)
    start = time.perf_counter()
    with torch.no_grad(), torch.profiler.profile(profile_memory=True) as prof:
        out = unit(x)
    elapsed = time.perf_counter() - start
    assert out.shape == x.shape and torch.isfinite(out).all()
    n = n_side * n_side
    # Memory allocated by any one op (summed over its calls) stays within a few (B, N, 16)
    # float32 tensors (4 MiB each), far below one (N, N) matrix.
    largest = max(e.cpu_memory_usage for e in prof.key_averages())
    assert largest <= 16 * (4 * n * 16), largest
    assert 4 * n * n > 1000 * largest
    assert elapsed < 30
