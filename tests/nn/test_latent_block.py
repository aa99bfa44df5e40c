r"""Non-local blocks with ``latent=Latent(M)`` (GloRe-style latent keys and values) against an fp64
reference written from the equations

.. math::
    \tilde k = B^\top \phi / Z, \quad \tilde v = B^\top g / Z, \quad
    y_i = \frac{1}{C_i} \sum_{m=1}^{M} f(\theta_i, \tilde k_m)\, \tilde v_m, \quad
    z = x + \mathrm{BN}(W_z y + b_z)

with B = W_B x̃ + b_B on the N' (pooled) key positions and Z = N' (``normalize``) or 1.
"""

from __future__ import annotations

import pytest
import torch

from nlgraph import NonLocalBlock1d, NonLocalBlock2d, NonLocalBlock3d
from nlgraph.graphs import KNN, Latent
from tests.helpers import (
    DEFAULT_POOL,
    MODES,
    batch_norm,
    conv1x1,
    expected_scale,
    max_pool,
    randomise_block_,
    reference_aggregate,
)

F64 = torch.float64
BLOCKS = {1: NonLocalBlock1d, 2: NonLocalBlock2d, 3: NonLocalBlock3d}
SHAPES = {1: (9,), 2: (5, 6), 3: (2, 4, 5)}


def _block(dims: int, mode: str = "embedded_gaussian", m: int = 3, normalize: bool = True, **kw):
    block = BLOCKS[dims](6, 4, mode=mode, zero_init=False, dtype=F64,
                         latent=Latent(m, normalize=normalize), **kw)  # fmt: skip
    return randomise_block_(block)


def reference_latent_block(x: torch.Tensor, block) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z, weights (B, N, M))`` from the block's weights, in float64."""
    p = {k: v.detach() for k, v in block.state_dict().items()}
    dims, pool, mode = block.dims, block.pool_size, block.mode
    sub, before = block.sub_sample, block.sub_sample and block.pool_placement == "before"
    x = x.double()
    b = x.shape[0]
    x_kv = max_pool(x, pool) if before else x

    def proj(name: str, t: torch.Tensor) -> torch.Tensor:
        return conv1x1(t, p[f"{name}.weight"], p.get(f"{name}.bias"))

    def keys_side(t: torch.Tensor) -> torch.Tensor:
        return max_pool(t, pool) if sub and not before else t

    def flat(t: torch.Tensor) -> torch.Tensor:  # (B, C, *S) -> (B, N, C)
        return t.reshape(b, t.shape[1], -1).transpose(1, 2)

    value = flat(keys_side(proj("g", x_kv)))
    if mode == "gaussian":
        query, key = flat(x), flat(max_pool(x, pool) if sub else x)
    else:
        query, key = flat(proj("theta", x)), flat(keys_side(proj("phi", x_kv)))
    weights_b = flat(keys_side(proj("latent_proj", x_kv)))  # (B, N', M)
    n_keys, m = weights_b.shape[1], weights_b.shape[2]
    scale = n_keys if block.latent.normalize else 1
    # Latent node m = sum over key positions j of B_jm * (key_j, value_j): explicit loop over m.
    key_l = torch.stack([(weights_b[:, :, i, None] * key).sum(1) for i in range(m)], 1) / scale
    val_l = torch.stack([(weights_b[:, :, i, None] * value).sum(1) for i in range(m)], 1) / scale
    u = w = None
    if mode == "concatenation":
        cw = p["concat_project.weight"].double().reshape(-1)
        u, w = cw[: cw.numel() // 2], cw[cw.numel() // 2 :]
    s = expected_scale(block.scale, block.in_channels, block.inter_channels)
    y, attn = reference_aggregate(query, key_l, val_l, mode, s, u, w)
    y = y.transpose(1, 2).reshape(b, y.shape[-1], *x.shape[2:])
    out = proj("w_z", y)
    if block.norm is not None:
        norm = {k[5:]: v for k, v in p.items() if k.startswith("norm.")}
        out = batch_norm(out, norm | {"eps": block.norm.eps}, block.training)
    assert dims == x.dim() - 2
    return x + out, attn


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sub_sample", [False, True])
def test_latent_block_matches_reference(dims, mode, sub_sample):
    torch.manual_seed(0)
    block = _block(dims, mode, sub_sample=sub_sample)
    x = torch.randn(2, 6, *SHAPES[dims], dtype=F64)
    for training in (False, True):
        block.train(training)
        z, attn = block(x, return_attention=True)
        z_ref, attn_ref = reference_latent_block(x, block)
        torch.testing.assert_close(z, z_ref, atol=1e-10, rtol=1e-10)
        n = x[0, 0].numel()
        assert attn.to_dense().shape == (2, n, 3)
        torch.testing.assert_close(attn.to_dense(), attn_ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("placement", ["after", "before"])
@pytest.mark.parametrize("normalize", [False, True])
def test_pool_placement_normalize_and_scale(placement, normalize):
    torch.manual_seed(1)
    block = _block(2, pool_placement=placement, normalize=normalize, scale="inner").eval()
    x = torch.randn(2, 6, 6, 6, dtype=F64)
    z_ref, _ = reference_latent_block(x, block)
    torch.testing.assert_close(block(x), z_ref, atol=1e-10, rtol=1e-10)


def test_softmax_rows_over_latent_nodes():
    torch.manual_seed(2)
    block = _block(2, m=5).eval()
    _, attn = block(torch.randn(2, 6, 5, 6, dtype=F64), return_attention=True)
    dense = attn.to_dense()
    assert dense.shape == (2, 30, 5)
    torch.testing.assert_close(dense.sum(-1), torch.ones(2, 30, dtype=F64))


def test_gradcheck():
    torch.manual_seed(3)
    block = BLOCKS[2](3, 2, latent=Latent(2), zero_init=False, dtype=F64)
    randomise_block_(block).train()
    x = torch.randn(2, 3, 4, 4, dtype=F64, requires_grad=True)
    names = [n for n, _ in block.named_parameters()]

    def f(x, *ps):
        return torch.func.functional_call(block, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *block.parameters()), fast_mode=True)


def test_latent_proj_only_with_latent_graph():
    plain = BLOCKS[2](8)
    knn = BLOCKS[2](8, graph=KNN(4))
    latent = BLOCKS[2](8, latent=Latent(16))
    assert plain.latent_proj is None and knn.latent_proj is None
    assert set(plain.state_dict()) == set(knn.state_dict())
    extra = set(latent.state_dict()) - set(plain.state_dict())
    assert extra == {"latent_proj.weight", "latent_proj.bias"}
    assert latent.latent_proj.weight.shape == (16, 8, 1, 1)
    assert BLOCKS[3](8, latent=Latent(4)).latent_proj.weight.shape == (4, 8, 1, 1, 1)
    assert latent.extra_repr() == "8, 4, latent=Latent(num_nodes=16)"
    assert "normalize=False" in BLOCKS[1](8, latent=Latent(2, normalize=False)).extra_repr()
    assert latent.build_graph(torch.randn(1, 8, 4, 4), torch.randn(1, 16, 4),
                              torch.randn(1, 16, 4)) == "full"  # fmt: skip


def test_zero_init_is_identity():
    block = BLOCKS[2](8, latent=Latent(4))
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("weight_init", ["normal", "kaiming", "mmcv"])
def test_weight_init_reaches_latent_proj(weight_init):
    torch.manual_seed(4)
    block = BLOCKS[2](8, latent=Latent(4), weight_init=weight_init)
    assert torch.count_nonzero(block.latent_proj.bias) == 0


@pytest.mark.parametrize(
    ("value", "exc", "match"),
    [
        (0, ValueError, r"^num_nodes: expected a positive int, got 0"),
        (-3, ValueError, r"^num_nodes: expected a positive int, got -3"),
        (2.5, TypeError, r"^num_nodes: expected a positive int, got float 2.5"),
    ],
)
def test_latent_spec_errors(value, exc, match):
    with pytest.raises(exc, match=match):
        Latent(value)
    with pytest.raises(TypeError, match=r"^normalize: expected a bool"):
        Latent(2, normalize=1)


def test_project_shape_errors():
    with pytest.raises(ValueError, match=r"^weights: expected shape \(B, N', 3\)"):
        Latent(3).project(torch.randn(2, 5, 4), torch.randn(2, 5, 2), torch.randn(2, 5, 2))
    with pytest.raises(ValueError, match=r"^weights, key, value: expected the same"):
        Latent(3).project(torch.randn(2, 5, 3), torch.randn(2, 4, 2), torch.randn(2, 5, 2))


def test_block_input_errors():
    block = BLOCKS[2](8, latent=Latent(4))
    with pytest.raises(ValueError, match=r"^x: expected 8 channels"):
        block(torch.randn(2, 5, 6, 6))
    with pytest.raises(ValueError, match=r"^x: expected a 4-D tensor"):
        block(torch.randn(2, 8, 6))
    with pytest.raises(ValueError, match=r"^graph: expected 'full', a KNN, Window, TemporalGroups"):
        BLOCKS[2](8, graph="latent")


def test_large_map_is_linear_in_positions():
    """N = 65536 queries, M = 16 latent keys: the (B, N, M) weights, never an (N, N') matrix."""
    torch.manual_seed(5)
    n_side, m = 256, 16
    block = BLOCKS[2](8, latent=Latent(m), sub_sample=False).eval()
    x = torch.randn(1, 8, n_side, n_side)
    with torch.no_grad(), torch.profiler.profile(profile_memory=True) as prof:
        z, attn = block(x, return_attention=True)
    n = n_side * n_side
    assert z.shape == x.shape and attn.to_dense().shape == (1, n, m)
    largest = max(e.cpu_memory_usage for e in prof.key_averages())
    assert largest <= 16 * (4 * n * m), largest  # a few (B, N, M) float32 tensors
    assert 4 * n * n > 1000 * largest  # one (N, N) float32 matrix: 17 GB
    assert DEFAULT_POOL[2] == block.pool_size


def test_to_reference_refuses_a_latent_block() -> None:
    from nlgraph import to_reference
    from nlgraph.graphs import Latent
    from nlgraph.nn import NonLocalBlock2d

    block = NonLocalBlock2d(16, latent=Latent(4))
    with pytest.raises(ValueError, match=r"cannot express latent=Latent"):
        to_reference(block, "mmcv")


def test_graph_latent_is_deprecated_and_means_latent():
    """``graph=Latent(M)`` still builds the same block (same parameters, same output), with a
    DeprecationWarning; a latent block takes no other graph."""
    torch.manual_seed(3)
    new = BLOCKS[2](8, latent=Latent(4), zero_init=False)
    with pytest.warns(DeprecationWarning, match=r"graph=Latent\(M\) is deprecated.*latent=Latent"):
        old = BLOCKS[2](8, graph=Latent(4), zero_init=False)
    old.load_state_dict(new.state_dict())
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(old.eval()(x), new.eval()(x))
    assert (
        old.extra_repr() == new.extra_repr() == "8, 4, zero_init=False, latent=Latent(num_nodes=4)"
    )
    with pytest.raises(ValueError, match=r"^graph: expected 'full' with latent=Latent"):
        BLOCKS[2](8, graph=KNN(4), latent=Latent(4))
    with pytest.raises(TypeError, match=r"^latent: expected None or a Latent, got int"):
        BLOCKS[2](8, latent=4)
