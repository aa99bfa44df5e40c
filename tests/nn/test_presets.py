"""from_preset: the defaults of each public implementation, their init and their errors."""

from __future__ import annotations

import pytest
import torch

from nlgraph import NonLocalBlock1d, NonLocalBlock2d, NonLocalBlock3d
from nlgraph.nn import PRESETS, make_divisible
from tests.helpers import MODES, block_reference_args, randomise_block_, reference_block

F64 = torch.float64
BLOCKS = {1: NonLocalBlock1d, 2: NonLocalBlock2d, 3: NonLocalBlock3d}
SPATIAL = {1: (11,), 2: (7, 9), 3: (3, 5, 6)}

# name -> (dims, modes) it supports
SUPPORT = {
    "alexhex7": ((1, 2, 3), MODES),
    "mmcv": ((1, 2, 3), MODES),
    "timm": ((2,), ("embedded_gaussian",)),
    "slowfast": ((3,), ("embedded_gaussian", "dot_product")),
    "caffe2": ((3,), ("embedded_gaussian", "dot_product")),
}
CASES = [(n, d, m) for n, (dims, modes) in SUPPORT.items() for d in dims for m in modes]

# name -> (sub_sample, pool_size, placement, scale option of the embedded Gaussian, norm, out_bias)
EXPECTED = {
    "alexhex7": (True, None, "after", None, True, True),
    "mmcv": (False, None, "after", "inner", False, True),
    "timm": (False, None, "after", "input", True, True),
    "slowfast": (True, (1, 2, 2), "before", "inner", True, True),
    "caffe2": (True, (1, 2, 2), "before", "inner", True, True),
}


def test_registry_names() -> None:
    assert set(PRESETS) == set(SUPPORT)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2.0, 8),
        (8.0, 8),
        (10.0, 16),
        (12.5, 16),
        (32.0, 32),
        (36.0, 40),
        (256.0, 256),
        (375.0, 376),
    ],
)
def test_make_divisible(value, expected) -> None:
    assert make_divisible(value, 8) == expected


@pytest.mark.parametrize(("c", "ci"), [(16, 8), (64, 8), (256, 32), (2048, 256)])
def test_timm_inner_width(c, ci) -> None:
    assert NonLocalBlock2d.from_preset("timm", c).inter_channels == ci


@pytest.mark.parametrize(("name", "dims", "mode"), CASES)
def test_preset_options(name, dims, mode) -> None:
    c = 16
    block = BLOCKS[dims].from_preset(name, c, mode=mode)
    sub_sample, pool, placement, scale, has_norm, out_bias = EXPECTED[name]
    assert block.mode == mode
    assert block.inter_channels == (8 if name != "timm" else make_divisible(c / 8))
    assert block.sub_sample == sub_sample
    assert block.pool_size == (pool or block.default_pool_size)
    if sub_sample:
        assert block.pool_placement == placement
    want_scale = {None: 1.0, "inner": block.inter_channels**-0.5, "input": c**-0.5}[scale]
    expected_factor = want_scale if mode == "embedded_gaussian" else 1.0
    assert block.scale_factor == pytest.approx(expected_factor, rel=1e-15)
    assert (block.norm is not None) == has_norm
    assert (block.w_z.bias is not None) == out_bias


@pytest.mark.parametrize(("name", "dims", "mode"), CASES)
def test_preset_matches_reference(name, dims, mode) -> None:
    block = BLOCKS[dims].from_preset(name, 8, mode=mode, dtype=F64)
    randomise_block_(block).eval()
    scale = EXPECTED[name][3] if mode == "embedded_gaussian" else None
    x = torch.randn(2, 8, *SPATIAL[dims], dtype=F64)
    ref, _ = reference_block(x, **block_reference_args(block, scale))
    torch.testing.assert_close(block(x), ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize(("name", "dims", "mode"), CASES)
def test_identity_at_init(name, dims, mode, train) -> None:
    block = BLOCKS[dims].from_preset(name, 8, mode=mode).train(train)
    x = torch.randn(2, 8, *SPATIAL[dims])
    if name == "slowfast":
        assert torch.equal(block.norm.weight, torch.ones(8))
        assert torch.equal(block.norm.bias, torch.zeros(8))
        assert not torch.allclose(block(x), x)
    else:
        assert torch.equal(block(x), x)


def test_mmcv_init_statistics() -> None:
    block = NonLocalBlock2d.from_preset("mmcv", 256)
    for name in ("theta", "phi", "g"):
        assert getattr(block, name).weight.std().item() == pytest.approx(0.01, rel=0.05), name
        assert torch.equal(getattr(block, name).bias, torch.zeros(128))
    # zero_init without a norm zeroes W_z and its bias.
    assert torch.equal(block.w_z.weight, torch.zeros_like(block.w_z.weight))
    assert torch.equal(block.w_z.bias, torch.zeros(256))
    concat = NonLocalBlock2d.from_preset("mmcv", 256, mode="concatenation")
    # Kaiming fan_out of a one-output projection: std sqrt(2).
    assert concat.concat_project.weight.std().item() == pytest.approx(2**0.5, rel=0.15)


def test_mmcv_with_norm_drops_out_bias() -> None:
    block = NonLocalBlock2d.from_preset("mmcv", 64, norm="batch")
    assert block.w_z.bias is None and block.norm is not None
    assert torch.equal(block.norm.weight, torch.zeros(64))
    # Kaiming fan_out W_z kept (the norm is zeroed instead).
    assert block.w_z.weight.std().item() == pytest.approx((2 / 64) ** 0.5, rel=0.1)
    x = torch.randn(2, 64, 5, 5)
    assert torch.equal(block(x), x)
    assert NonLocalBlock2d.from_preset("mmcv", 64, norm="batch", out_bias=True).w_z.bias is not None


def test_timm_kaiming_fan_out() -> None:
    block = NonLocalBlock2d.from_preset("timm", 256)  # C' = 32
    for name in ("theta", "phi", "g"):
        assert getattr(block, name).weight.std().item() == pytest.approx((2 / 32) ** 0.5, rel=0.05)
        assert torch.equal(getattr(block, name).bias, torch.zeros(32))
    assert block.w_z.weight.std().item() == pytest.approx((2 / 256) ** 0.5, rel=0.05)
    assert torch.equal(block.norm.weight, torch.zeros(256))
    assert block.norm.eps == 1e-5


def test_slowfast_init() -> None:
    block = NonLocalBlock3d.from_preset("slowfast", 64)
    assert block.theta.weight.std().item() == pytest.approx((2 / 32) ** 0.5, rel=0.1)
    assert torch.equal(block.theta.bias, torch.zeros(32))
    assert block.norm.eps == 1e-5 and block.norm.momentum == 0.1
    assert not block.zero_init


def test_caffe2_init_and_eps() -> None:
    block = NonLocalBlock3d.from_preset("caffe2", 64)
    assert block.norm.eps == 1.0000001e-5
    for name in ("theta", "phi", "g", "w_z"):
        assert getattr(block, name).weight.std().item() == pytest.approx(0.01, rel=0.1), name
        assert not getattr(block, name).bias.any()
    assert torch.equal(block.norm.weight, torch.zeros(64))
    assert block.inter_channels == 32


def test_unknown_preset_lists_names() -> None:
    with pytest.raises(
        ValueError,
        match=r"^name: expected one of 'alexhex7', 'mmcv', 'timm', 'slowfast', 'caffe2', "
        r"got 'detectron'",
    ):
        NonLocalBlock2d.from_preset("detectron", 64)


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        (NonLocalBlock3d, "timm"),
        (NonLocalBlock1d, "timm"),
        (NonLocalBlock2d, "slowfast"),
        (NonLocalBlock2d, "caffe2"),
        (NonLocalBlock1d, "caffe2"),
    ],  # fmt: skip
)
def test_preset_wrong_dims(cls, name) -> None:
    with pytest.raises(ValueError, match=rf"^dims: '{name}' has only"):
        cls.from_preset(name, 64)


@pytest.mark.parametrize(
    ("cls", "name", "mode"),
    [
        (NonLocalBlock2d, "timm", "dot_product"),
        (NonLocalBlock3d, "slowfast", "gaussian"),
        (NonLocalBlock3d, "caffe2", "concatenation"),
    ],  # fmt: skip
)
def test_preset_unsupported_mode(cls, name, mode) -> None:
    with pytest.raises(ValueError, match=rf"^mode \('{name}'\): expected one of"):
        cls.from_preset(name, 64, mode=mode)


def test_overrides_apply() -> None:
    block = NonLocalBlock2d.from_preset(
        "alexhex7", 64, inter_channels=16, sub_sample=False, norm=None, scale="inner"
    )
    assert block.inter_channels == 16 and not block.sub_sample and block.norm is None
    assert block.scale_factor == pytest.approx(16**-0.5)
    sf = NonLocalBlock3d.from_preset("slowfast", 16, zero_init=True, pool_size=(2, 2, 2))
    x = torch.randn(1, 16, 4, 4, 4)
    assert torch.equal(sf(x), x) and sf.pool_size == (2, 2, 2)
    assert NonLocalBlock3d.from_preset("caffe2", 16, norm_eps=1e-3).norm.eps == 1e-3
    assert NonLocalBlock2d.from_preset("timm", 64, inter_channels=24).inter_channels == 24
    assert NonLocalBlock2d.from_preset("timm", 64, dtype=F64).g.weight.dtype == F64


def test_preset_bad_override_is_rejected() -> None:
    with pytest.raises(TypeError):
        NonLocalBlock2d.from_preset("alexhex7", 64, not_an_option=1)
    with pytest.raises(ValueError, match=r"^norm: expected"):
        NonLocalBlock2d.from_preset("mmcv", 64, norm="layer")
