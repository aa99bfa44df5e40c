"""NonLocalBlock1d/2d/3d against the independent fp64 reference, plus init, repr and errors."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from nlgraph import Attention, NonLocalBlock1d, NonLocalBlock2d, NonLocalBlock3d
from tests.helpers import (
    DEFAULT_POOL,
    MODES,
    block_reference_args,
    expected_scale,
    randomise_block_,
    reference_block,
)

F64 = torch.float64
BLOCKS = {1: NonLocalBlock1d, 2: NonLocalBlock2d, 3: NonLocalBlock3d}
SPATIAL = {1: (9,), 2: (7, 9), 3: (3, 5, 6)}
C, CI = 6, 4


def build(dims: int, mode: str, *, std: float = 0.4, **kw) -> nn.Module:
    """A float64 block with random weights and BN statistics (not the identity)."""
    kw.setdefault("dtype", F64)
    block = BLOCKS[dims](C, CI, mode=mode, zero_init=False, **kw)
    return randomise_block_(block, std=std)


def check_against_reference(block, x, scale=None, tol=1e-10) -> None:
    """Assert the block output equals the fp64 reference built from its own weights."""
    ref, _ = reference_block(x, **block_reference_args(block, scale))
    z = block(x)
    assert z.shape == x.shape and z.dtype == x.dtype
    torch.testing.assert_close(z.double(), ref, atol=tol, rtol=tol)


# --------------------------------------------------------------------------- values
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("out_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("norm", ["batch", None], ids=["bn", "nonorm"])
# Pool placement only acts when sub-sampling: without it, one placement is enough.
@pytest.mark.parametrize(
    ("sub_sample", "placement"),
    [(True, "after"), (True, "before"), (False, "after")],
    ids=["pool-after", "pool-before", "nopool"],
)
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("mode", MODES)
def test_matches_reference(mode, dims, sub_sample, placement, norm, out_bias, train) -> None:
    block = build(
        dims, mode, sub_sample=sub_sample, pool_placement=placement, norm=norm, out_bias=out_bias
    )
    block.train(train)
    x = torch.randn(2, C, *SPATIAL[dims], dtype=F64)
    check_against_reference(block, x)


@pytest.mark.parametrize("scale", [None, "inner", "input", 0.37])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_embedded_gaussian_scale(scale, dims) -> None:
    block = build(dims, "embedded_gaussian", scale=scale).eval()
    assert block.scale_factor == pytest.approx(expected_scale(scale, C, CI), rel=1e-15)
    check_against_reference(block, torch.randn(2, C, *SPATIAL[dims], dtype=F64), scale)


@pytest.mark.parametrize(
    ("dims", "pool_size", "normalised"),
    [
        (1, 3, (3,)),
        (2, (2, 3), (2, 3)),
        (2, 3, (3, 3)),
        (2, [1, 4], (1, 4)),
        (3, (2, 2, 2), (2, 2, 2)),
    ],
)
@pytest.mark.parametrize("placement", ["after", "before"])
@pytest.mark.parametrize("mode", MODES)
def test_custom_pool_size(mode, placement, dims, pool_size, normalised) -> None:
    block = build(dims, mode, pool_size=pool_size, pool_placement=placement).train()
    assert block.pool_size == normalised
    x = torch.randn(2, C, *SPATIAL[dims], dtype=F64)
    n_keys = math.prod(s // p for s, p in zip(SPATIAL[dims], normalised))
    _, attn = block(x, return_attention=True)
    assert attn.to_dense().shape == (2, math.prod(SPATIAL[dims]), n_keys)
    check_against_reference(block, x)


def test_default_pool_sizes() -> None:
    for dims, cls in BLOCKS.items():
        assert cls(4).pool_size == DEFAULT_POOL[dims]


@pytest.mark.parametrize("mode", MODES)
def test_float32_block_vs_fp64_reference(mode) -> None:
    block = build(2, mode, std=0.15, dtype=torch.float32).eval()
    x = torch.randn(2, C, 16, 16) * 0.5
    check_against_reference(block, x, tol=1e-4)
    big = randomise_block_(NonLocalBlock2d(32, mode=mode, zero_init=False), std=0.15).eval()
    check_against_reference(big, torch.randn(2, 32, 16, 16) * 0.5, tol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_channels_last_and_strided_input(mode) -> None:
    block = build(2, mode).eval()
    x = torch.randn(2, C, 7, 18, dtype=F64)
    expected = block(x[..., ::2].contiguous())
    torch.testing.assert_close(block(x[..., ::2]), expected, atol=1e-12, rtol=1e-12)
    cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(block(cl), block(x), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_cpu_autocast(mode) -> None:
    # The block accepts float32 input under autocast (its dtype check allows it): every mode
    # must run and stay close to the float32 result.
    block = randomise_block_(NonLocalBlock2d(8, mode=mode, zero_init=False), std=0.2).eval()
    x = torch.randn(2, 8, 6, 6) * 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = block(x)
    assert z.shape == x.shape
    torch.testing.assert_close(z.float(), block(x), atol=5e-2, rtol=5e-2)


# --------------------------------------------------------------------------- identity at init
@pytest.mark.parametrize("weight_init", ["pytorch", "normal", "kaiming", "mmcv"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("norm", ["batch", None], ids=["bn", "nonorm"])
@pytest.mark.parametrize("mode", MODES)
def test_identity_at_init(mode, norm, train, weight_init) -> None:
    block = NonLocalBlock2d(C, mode=mode, norm=norm, weight_init=weight_init).train(train)
    x = torch.randn(2, C, 7, 9)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("dims", [1, 3])
def test_identity_at_init_other_dims(dims) -> None:
    for mode in MODES:
        x = torch.randn(2, C, *SPATIAL[dims])
        assert torch.equal(BLOCKS[dims](C, mode=mode)(x), x)


def test_reset_parameters_reapplies_zero_init() -> None:
    block = randomise_block_(NonLocalBlock2d(C))
    block.reset_parameters()
    assert torch.equal(block.norm.weight, torch.zeros(C))
    assert torch.equal(block.norm.bias, torch.zeros(C))
    x = torch.randn(1, C, 4, 4)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize(
    ("weight_init", "std_theta", "std_wz"),
    [
        ("normal", 0.01, 0.01),
        ("kaiming", (2 / 32) ** 0.5, (2 / 64) ** 0.5),
        ("mmcv", 0.01, (2 / 64) ** 0.5),
    ],
)
def test_weight_init_statistics(weight_init, std_theta, std_wz) -> None:
    block = NonLocalBlock2d(64, mode="concatenation", weight_init=weight_init)
    for name in ("theta", "phi", "g"):
        w = getattr(block, name).weight
        assert w.std().item() == pytest.approx(std_theta, rel=0.1), name
        assert torch.equal(getattr(block, name).bias, torch.zeros(32))
    assert block.w_z.weight.std().item() == pytest.approx(std_wz, rel=0.1)
    assert torch.equal(block.w_z.bias, torch.zeros(64))


def test_pytorch_weight_init_bounds() -> None:
    block = NonLocalBlock2d(64)
    assert block.theta.weight.abs().max() <= 1 / math.sqrt(64)
    assert block.w_z.weight.abs().max() <= 1 / math.sqrt(32)
    assert block.theta.weight.std() > 0.5 / math.sqrt(3 * 64)


# --------------------------------------------------------------------------- attention
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("mode", MODES)
def test_return_attention(mode, dims) -> None:
    block = build(dims, mode).eval()
    x = torch.randn(2, C, *SPATIAL[dims], dtype=F64)
    z, attn = block(x, return_attention=True)
    ref_z, ref_w = reference_block(x, **block_reference_args(block))
    assert isinstance(attn, Attention)
    n = math.prod(SPATIAL[dims])
    n_keys = math.prod(s // p for s, p in zip(SPATIAL[dims], DEFAULT_POOL[dims]))
    assert attn.to_dense().shape == (2, n, n_keys)
    torch.testing.assert_close(attn.to_dense(), ref_w, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(z, ref_z, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(z, block(x), atol=1e-12, rtol=1e-12)
    assert isinstance(block(x, return_attention=False), torch.Tensor)


# --------------------------------------------------------------------------- state and grads
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("norm", "out_bias"), [("batch", True), (None, False)])
def test_state_dict_round_trip(mode, norm, out_bias) -> None:
    kw = dict(mode=mode, norm=norm, out_bias=out_bias, zero_init=False)
    block = randomise_block_(NonLocalBlock2d(C, CI, **kw)).eval()
    buf = io.BytesIO()
    torch.save(block.state_dict(), buf)
    buf.seek(0)
    fresh = NonLocalBlock2d(C, CI, **kw)
    fresh.load_state_dict(torch.load(buf))
    fresh.eval()
    x = torch.randn(2, C, 5, 7)
    assert torch.equal(fresh(x), block(x))
    assert torch.equal(copy.deepcopy(block)(x), block(x))
    keys = set(block.state_dict())
    assert {"g.weight", "g.bias", "w_z.weight"} <= keys
    assert ("theta.weight" in keys) == ("phi.bias" in keys) == (mode != "gaussian")
    assert ("concat_project.weight" in keys) == (mode == "concatenation")
    assert ("w_z.bias" in keys) == out_bias
    assert ("norm.running_var" in keys) == (norm is not None)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("mode", MODES)
def test_gradients_match_reference(mode, train) -> None:
    block = build(2, mode, pool_placement="before").train(train)
    x = torch.randn(2, C, 5, 6, dtype=F64, requires_grad=True)
    upstream = torch.randn_like(x)
    leaves = [x, *block.parameters()]
    got = torch.autograd.grad(block(x), leaves, upstream)
    ref_z, _ = reference_block(x, **block_reference_args(block))
    want = torch.autograd.grad(ref_z, leaves, upstream)
    names = ["x"] + [n for n, _ in block.named_parameters()]
    for name, g, w in zip(names, got, want):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, w, atol=1e-9, rtol=1e-9, msg=f"grad of {name}")


@pytest.mark.parametrize("mode", MODES)
def test_backward_from_identity_init(mode) -> None:
    block = NonLocalBlock2d(C, mode=mode)
    x = torch.randn(2, C, 6, 6, requires_grad=True)
    block(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert block.norm.weight.grad.abs().sum() > 0  # zero-initialised gamma still learns


# --------------------------------------------------------------------------- repr, kwargs
@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (lambda: NonLocalBlock2d(64), "64, 32"),
        (lambda: NonLocalBlock2d(64, mode="dot_product"), "64, 32, mode=dot_product"),
        (
            lambda: NonLocalBlock1d(16, 4, mode="gaussian", sub_sample=False, norm=None),
            "16, 4, mode=gaussian, sub_sample=False, norm=None",
        ),
        (lambda: NonLocalBlock3d(8, pool_size=(1, 2, 2)), "8, 4"),
        (
            lambda: NonLocalBlock3d(8, pool_size=2, pool_placement="before", scale="inner"),
            "8, 4, pool_size=(2, 2, 2), pool_placement=before, scale=inner",
        ),
        (
            lambda: NonLocalBlock2d(
                64,
                scale=0.37,
                zero_init=False,
                out_bias=False,
                weight_init="kaiming",
                norm_eps=1e-3,
                norm_momentum=0.3,
                backend="dense",
            ),  # fmt: skip
            "64, 32, scale=0.37, zero_init=False, out_bias=False, weight_init=kaiming, "
            "norm_eps=0.001, norm_momentum=0.3, backend=dense",
        ),
    ],
)
def test_extra_repr(block, expected) -> None:
    assert block().extra_repr() == expected


def test_full_str() -> None:
    block = NonLocalBlock2d(4, mode="dot_product")
    conv = "Conv2d(4, 2, kernel_size=(1, 1), stride=(1, 1))"
    lines = [
        "NonLocalBlock2d(",
        "  4, 2, mode=dot_product",
        f"  (g): {conv}",
        f"  (theta): {conv}",
        f"  (phi): {conv}",
        f"  (w_z): {nn.Conv2d(2, 4, 1)}",
        f"  (norm): {nn.BatchNorm2d(4)}",
        ")",
    ]
    assert str(block) == "\n".join(lines)


def test_dtype_and_device_kwargs() -> None:
    block = NonLocalBlock3d(4, mode="concatenation", dtype=F64, device="cpu")
    for name, t in [*block.named_parameters(), *block.named_buffers()]:
        if name != "norm.num_batches_tracked":
            assert t.dtype == F64, name
    assert all(p.device.type == "meta" for p in NonLocalBlock2d(4, device="meta").parameters())
    assert NonLocalBlock2d(4).g.weight.dtype == torch.float32


def test_norm_options_reach_batchnorm() -> None:
    block = NonLocalBlock2d(4, norm_eps=1e-3, norm_momentum=0.25)
    assert block.norm.eps == 1e-3 and block.norm.momentum == 0.25
    assert isinstance(NonLocalBlock3d(4).norm, nn.BatchNorm3d)
    assert NonLocalBlock1d(4, norm=None).norm is None


@pytest.mark.parametrize(("c", "ci"), [(1, 1), (2, 1), (3, 1), (7, 3), (64, 32)])
def test_default_inter_channels(c, ci) -> None:
    block = NonLocalBlock2d(c)
    assert block.inter_channels == ci and block.g.out_channels == ci


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(in_channels=0), ValueError, r"^in_channels: expected a positive int"),
        (dict(in_channels=4.0), TypeError, r"^in_channels: expected a positive int"),
        (dict(in_channels=True), TypeError, r"^in_channels:"),
        (dict(inter_channels=0), ValueError, r"^inter_channels: expected a positive int"),
        (dict(inter_channels=2.5), TypeError, r"^inter_channels:"),
        (dict(mode="embeded_gaussian"), ValueError, r"^mode: expected one of 'gaussian'"),
        (dict(scale="outer"), ValueError, r"^scale: expected"),
        (dict(scale=-1.0), ValueError, r"^scale: expected a positive finite float"),
        (dict(scale=True), TypeError, r"^scale: expected"),
        (dict(mode="dot_product", scale=0.5), ValueError, r"^scale: expected None for mode"),
        (dict(mode="gaussian", scale="inner"), ValueError, r"^scale: expected None for mode"),
        (dict(mode="concatenation", scale="input"), ValueError, r"^scale: expected None"),
        (dict(pool_placement="middle"), ValueError, r"^pool_placement: expected one of"),
        (dict(norm="layer"), ValueError, r"^norm: expected one of 'batch', None"),
        (dict(norm="none"), ValueError, r"^norm: expected"),
        (dict(weight_init="xavier"), ValueError, r"^weight_init: expected one of"),
        (dict(backend="nope"), ValueError, r"^backend: expected one of 'auto', 'dense'"),
        (dict(graph="knn"), ValueError, r"^graph: expected 'full', a KNN"),
        (dict(pool_size=0), ValueError, r"^pool_size: expected"),
        (dict(pool_size=(2,)), ValueError, r"^pool_size: expected .* tuple of 2 positive ints"),
        (dict(pool_size=(2, 2, 2)), ValueError, r"^pool_size:"),
        (dict(pool_size=(0, 2)), ValueError, r"^pool_size:"),
        (dict(pool_size=(2.0, 2)), ValueError, r"^pool_size:"),
        (dict(pool_size="2"), ValueError, r"^pool_size:"),
        (dict(pool_size=True), ValueError, r"^pool_size:"),
    ],
    ids=lambda x: "" if not isinstance(x, dict) else ",".join(f"{k}={v}" for k, v in x.items()),
)
def test_bad_constructor_argument(kwargs, error, match) -> None:
    kwargs = {"in_channels": 8, **kwargs}
    with pytest.raises(error, match=match):
        NonLocalBlock2d(**kwargs)


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (torch.randn(6, 7, 9), ValueError, r"^x: expected a 4-D tensor \(B, C, H, W\), got shape"),
        (torch.randn(2, 6, 1, 7, 9), ValueError, r"^x: expected a 4-D tensor"),
        (torch.randn(2, 5, 7, 9), ValueError, r"^x: expected 6 channels \(dim 1\), got 5"),
        (torch.ones(2, 6, 7, 9, dtype=torch.long), TypeError, r"^x: expected a floating-point"),
        (torch.randn(2, 6, 7, 9, dtype=F64), TypeError, r"^x: expected dtype torch.float32"),
        (torch.randn(2, 6, 1, 5), ValueError, r"^x: spatial size \(1, 5\) leaves no keys"),
        ([[1.0]], TypeError, r"^x: expected a torch.Tensor"),
        (torch.randn(2, 6, 7, 9, device="meta"), ValueError, r"^x: expected a tensor with values"),
    ],
    ids=["rank3", "rank5", "channels", "int", "float64", "too_small", "list", "device"],
)
def test_bad_forward_input(x, error, match) -> None:
    with pytest.raises(error, match=match):
        NonLocalBlock2d(C)(x)


def test_small_map_without_sub_sampling_is_fine() -> None:
    x = torch.randn(2, C, 1, 5)
    assert NonLocalBlock2d(C, sub_sample=False)(x).shape == x.shape
    assert NonLocalBlock1d(C)(torch.randn(1, C, 2)).shape == (1, C, 2)
    with pytest.raises(ValueError, match=r"^x: spatial size \(1,\) leaves no keys"):
        NonLocalBlock1d(C)(torch.randn(1, C, 1))
