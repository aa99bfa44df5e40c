"""Caffe2 blobs, inference rules, every error of from_reference/to_reference, and delegation."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch

from nlgraph.compat import LAYOUTS, from_reference, to_reference
from nlgraph.nn import NonLocalBlock1d, NonLocalBlock2d, NonLocalBlock3d
from tests.helpers import randomise_block_

from .test_golden import ATOL, load_golden, reference_kwargs

P = "nonlocal_conv3_1"
_CAFFE2_NAMES = {
    "conv_theta.weight": "theta_w", "conv_theta.bias": "theta_b", "conv_phi.weight": "phi_w",
    "conv_phi.bias": "phi_b", "conv_g.weight": "g_w", "conv_g.bias": "g_b",
    "conv_out.weight": "out_w", "conv_out.bias": "out_b", "bn.weight": "bn_s",
    "bn.bias": "bn_b", "bn.running_mean": "bn_rm", "bn.running_var": "bn_riv",
}  # fmt: skip


def caffe2_blobs(state: dict[str, torch.Tensor], prefix: str = P) -> dict[str, Any]:
    """A SlowFast state_dict renamed to Caffe2 blob names, as numpy arrays."""
    return {
        f"{prefix}_{_CAFFE2_NAMES[k]}": v.numpy() for k, v in state.items() if k in _CAFFE2_NAMES
    }


def ref(layout: str, block: Any) -> dict[str, torch.Tensor]:
    """A state_dict in ``layout`` (from a fresh preset block: only key names and shapes matter)."""
    return to_reference(block, layout)


def mmcv_2d(**kwargs: Any) -> dict[str, torch.Tensor]:
    return ref("mmcv", NonLocalBlock2d.from_preset("mmcv", 8, **kwargs))


# ----------------------------------------------------------------------------------- caffe2
@pytest.mark.parametrize("index", range(6))
def test_caffe2_blobs_reproduce_slowfast(index: int) -> None:
    case = load_golden("slowfast")[index]
    blobs = caffe2_blobs(case["state_dict"])
    noise = {
        "res3_1_branch2a_w": np.ones((3, 3)), "res3_1_branch2a_bn_s": np.ones(3),
        f"{P}_theta_w_momentum": np.zeros((4, 8, 1, 1, 1)), f"{P}_bn_s_momentum": np.zeros(8),
    }  # fmt: skip
    kwargs = reference_kwargs(case["config"])
    for mode_name, out in (("eval", "out_eval"), ("train", "out_train")):
        block = from_reference({**blobs, **noise}, "caffe2", norm_eps=1e-5, **kwargs)
        block.train(mode_name == "train")
        with torch.no_grad():
            err = (block(case["x"]) - case[out]).abs().max().item()
        assert err <= ATOL, f"{mode_name}: {err:.3e}"
    # Caffe2's pool window is fixed at (1, 2, 2): dump a block with the default pooling.
    back = to_reference(from_reference(blobs, "caffe2", mode=kwargs["mode"]), "caffe2", prefix=P)
    assert set(back) == set(blobs)
    for key, value in blobs.items():
        assert back[key].dtype == torch.float64 and np.array_equal(back[key].numpy(), value)


def test_caffe2_defaults_and_variants() -> None:
    state = load_golden("slowfast")[1]["state_dict"]
    blobs = caffe2_blobs(state)
    block = from_reference(blobs, "caffe2")
    assert block.norm.eps == 1.0000001e-5
    assert block.sub_sample and block.pool_size == (1, 2, 2) and block.pool_placement == "before"
    assert block.scale == "inner" and block.g.weight.dtype == torch.float64
    # The release pickles wrap the blobs in {"blobs": ...}; float32 arrays give a float32 block.
    block32 = from_reference(
        {"blobs": {k: v.astype(np.float32) for k, v in blobs.items()}}, "caffe2"
    )
    assert block32.g.weight.dtype == torch.float32
    assert from_reference({k: torch.from_numpy(v) for k, v in blobs.items()}, "caffe2").mode == (
        "embedded_gaussian"
    )
    # No _bn_* blobs (the frozen-BN "affine" recipe): no norm.
    affine = {k: v for k, v in blobs.items() if "_bn_" not in k}
    block = from_reference(affine, "caffe2", mode="dot_product")
    assert block.norm is None and block.scale is None
    assert set(to_reference(block, "caffe2", prefix=P)) == set(affine)
    assert set(to_reference(block, "caffe2")) == {k.replace(P, "nonlocal") for k in affine}


def test_caffe2_prefix_inference() -> None:
    state = load_golden("slowfast")[1]["state_dict"]
    two = {**caffe2_blobs(state), **caffe2_blobs(state, "nonlocal_conv4_1")}
    with pytest.raises(
        ValueError, match=r"^prefix: expected one of \['nonlocal_conv3_1', 'nonlocal_conv4_1'\]"
    ):
        from_reference(two, "caffe2")
    assert from_reference(two, "caffe2", prefix="nonlocal_conv4_1").in_channels == 8
    with pytest.raises(ValueError, match=r"^prefix: expected one of .*, got 'nonlocal_conv5_1'"):
        from_reference(two, "caffe2", prefix="nonlocal_conv5_1")
    with pytest.raises(
        ValueError, match=r"^state_dict: expected Caffe2 .*looks like layout 'slowfast'"
    ):
        from_reference(state, "caffe2")
    bad = {**caffe2_blobs(state), f"{P}_g_b": [0.0] * 4}
    with pytest.raises(TypeError, match=rf"^state_dict\['{P}_g_b'\]: expected a torch.Tensor"):
        from_reference(bad, "caffe2")


# ----------------------------------------------------------------------------------- inference
def test_inferred_structure_and_overrides() -> None:
    block = from_reference(
        ref("alexhex7", NonLocalBlock1d(6, 3, sub_sample=False, norm=None)), "alexhex7"
    )
    assert (block.in_channels, block.inter_channels, block.dims) == (6, 3, 1)
    assert not block.sub_sample and block.norm is None and block.scale is None
    block = from_reference(mmcv_2d(sub_sample=True, norm="batch"), "mmcv")
    assert block.sub_sample and block.norm is not None and block.w_z.bias is None
    assert block.scale == "inner"
    assert from_reference(mmcv_2d(), "mmcv", scale=None).scale is None
    timm = ref("timm", NonLocalBlock2d.from_preset("timm", 64))
    block = from_reference(timm, "timm", dtype=torch.float64)
    assert (
        block.scale == "input"
        and block.inter_channels == 8
        and block.g.weight.dtype == torch.float64
    )
    with pytest.raises(ValueError, match=r"^inter_channels: expected 4"):
        from_reference(mmcv_2d(), "mmcv", inter_channels=3)
    with pytest.raises(ValueError, match=r"^norm: expected 'batch'"):
        from_reference(timm, "timm", norm=None)


def test_num_batches_tracked_and_module_prefix() -> None:
    state = mmcv_2d(norm="batch")
    state["conv_out.bn.num_batches_tracked"] = torch.tensor(7)
    assert from_reference(state, "mmcv").norm.num_batches_tracked.item() == 7
    del state["conv_out.bn.num_batches_tracked"]
    assert from_reference(state, "mmcv").norm.num_batches_tracked.item() == 0
    big = {f"backbone.nl.{k}": v for k, v in state.items()} | {"backbone.fc.weight": torch.ones(2)}
    block = from_reference(big, "mmcv", prefix="backbone.nl")
    assert set(to_reference(block, "mmcv", prefix="backbone.nl.")) == {
        f"backbone.nl.{k}" for k in [*state, "conv_out.bn.num_batches_tracked"]
    }


# ----------------------------------------------------------------------------------- errors
def test_argument_errors() -> None:
    state = mmcv_2d()
    with pytest.raises(
        ValueError,
        match=r"^layout: expected one of 'alexhex7', 'mmcv', 'timm', 'slowfast', 'caffe2', got 'mmdet'",
    ):
        from_reference(state, "mmdet")
    with pytest.raises(ValueError, match=r"^dims: expected one of 1, 2, 3, got 4"):
        from_reference(state, "mmcv", dims=4)
    with pytest.raises(ValueError, match=r"^dims: expected 2 \(the state_dict holds rank-4"):
        from_reference(state, "mmcv", dims=3)
    with pytest.raises(ValueError, match=r"^mode \('timm'\): expected one of 'embedded_gaussian'"):
        from_reference(state, "timm", mode="dot_product")
    with pytest.raises(TypeError, match=r"^state_dict: expected a mapping"):
        from_reference([("g.conv.weight", torch.ones(1))], "mmcv")
    with pytest.raises(
        TypeError, match=r"^state_dict\['g.conv.bias'\]: expected a torch.Tensor, got ndarray"
    ):
        from_reference({**state, "g.conv.bias": np.zeros(4)}, "mmcv")


@pytest.mark.parametrize("layout", ["timm", "slowfast", "caffe2"])
def test_dims_the_layout_lacks(layout: str) -> None:
    good = 2 if layout == "timm" else 3
    state = mmcv_2d() if layout == "timm" else load_golden("slowfast")[0]["state_dict"]
    for dims in {1, 2, 3} - {good}:
        with pytest.raises(
            ValueError, match=rf"^dims: '{layout}' has only {good}-D blocks, got a {dims}-D block"
        ):
            from_reference(state, layout, dims=dims)
    # Inferred from the weights' rank: 3-D timm weights.
    if layout == "timm":
        timm = {
            k: (v[..., None] if v.dim() == 4 else v)
            for k, v in ref("timm", NonLocalBlock2d.from_preset("timm", 16)).items()
        }
        with pytest.raises(ValueError, match=r"^dims: 'timm' has only 2-D blocks, got a 3-D block"):
            from_reference(timm, "timm")


def test_key_mismatch_lists_everything() -> None:
    state = mmcv_2d()
    del state["theta.conv.bias"]
    state["extra.weight"] = torch.ones(1)
    state["g.conv.weight"] = torch.ones(4, 8, 3, 3)
    with pytest.raises(
        ValueError, match=r"^state_dict: expected the keys of layout 'mmcv'"
    ) as info:
        from_reference(state, "mmcv")
    message = str(info.value)
    assert "(mode 'embedded_gaussian', sub_sample=False, norm=None)" in message
    assert "  missing: [theta.conv.bias]" in message
    assert "  unexpected: [extra.weight]" in message
    assert "  wrong shape: [g.conv.weight: expected (4, 8, 1, 1), got (4, 8, 3, 3)]" in message


@pytest.mark.parametrize(
    ("source", "layout", "hint"),
    [
        ("timm", "mmcv", "looks like layout 'timm'"),
        ("mmcv", "alexhex7", "looks like layout 'mmcv'"),
        ("alexhex7", "slowfast", "looks like layout 'alexhex7'"),
        ("slowfast", "timm", "looks like layout 'slowfast'"),
    ],
)
def test_state_dict_of_another_layout(source: str, layout: str, hint: str) -> None:
    block = (NonLocalBlock3d if source == "slowfast" else NonLocalBlock2d).from_preset(source, 16)
    state = ref(source, block)
    dims = 3 if layout == "slowfast" else 2
    with pytest.raises(ValueError, match=r"^state_dict: expected the keys of layout") as info:
        from_reference(state, layout, dims=dims)
    assert hint in str(info.value)


def test_wrong_mode_and_contradicting_sub_sample() -> None:
    gauss = ref("alexhex7", NonLocalBlock2d(8, mode="gaussian"))
    with pytest.raises(
        ValueError, match=r"^state_dict: expected .*the keys match mode 'gaussian'"
    ) as info:
        from_reference(gauss, "alexhex7", mode="embedded_gaussian")
    assert "missing: [theta.weight, theta.bias, phi.0.weight, phi.0.bias]" in str(info.value)
    assert from_reference(gauss, "alexhex7", mode="gaussian").theta is None
    with pytest.raises(ValueError, match=r"^sub_sample: expected True \(the keys 'g.0.\*'"):
        from_reference(gauss, "alexhex7", mode="gaussian", sub_sample=False)
    with pytest.raises(ValueError, match=r"^sub_sample: expected False"):
        from_reference(mmcv_2d(), "mmcv", sub_sample=True)
    with pytest.raises(ValueError, match=r"^sub_sample: expected False \(timm never sub-samples\)"):
        from_reference(
            ref("timm", NonLocalBlock2d.from_preset("timm", 16)), "timm", sub_sample=True
        )


# ----------------------------------------------------------------------------------- to_reference
@pytest.mark.parametrize(
    ("layout", "block", "match"),
    [
        ("timm", lambda: NonLocalBlock3d(16, sub_sample=False), r"^dims: 'timm' has only 2-D"),
        (
            "timm",
            lambda: NonLocalBlock2d(16, sub_sample=True),
            r"^block: expected sub_sample=False",
        ),
        (
            "timm",
            lambda: NonLocalBlock2d(16, mode="dot_product", sub_sample=False),
            r"^mode \('timm'\)",
        ),
        (
            "timm",
            lambda: NonLocalBlock2d(16, sub_sample=False, scale="inner"),
            r"^block: expected scale None or 'input'",
        ),
        (
            "timm",
            lambda: NonLocalBlock2d(16, sub_sample=False, norm=None),
            r"^block: expected norm='batch'",
        ),
        (
            "alexhex7",
            lambda: NonLocalBlock2d(8, scale="inner"),
            r"^block: expected scale None \(it has no temperature\) for layout .alexhex7., got .inner.",
        ),
        (
            "alexhex7",
            lambda: NonLocalBlock2d(8, pool_placement="before"),
            r"^block: expected pool_placement 'after'",
        ),
        ("mmcv", lambda: NonLocalBlock2d(8, pool_size=3), r"^block: expected pool_size \(2, 2\)"),
        ("slowfast", lambda: NonLocalBlock2d(8), r"^dims: 'slowfast' has only 3-D"),
        (
            "slowfast",
            lambda: NonLocalBlock3d(8, pool_placement="after", scale="inner"),
            r"^block: expected pool_placement 'before'",
        ),
        (
            "slowfast",
            lambda: NonLocalBlock3d.from_preset("slowfast", 8, norm=None),
            r"^block: expected norm='batch'",
        ),
        (
            "slowfast",
            lambda: NonLocalBlock3d.from_preset("slowfast", 8, scale=None),
            r"^block: expected scale 'inner'",
        ),
        (
            "caffe2",
            lambda: NonLocalBlock3d.from_preset("caffe2", 8, pool_size=2),
            r"^block: expected pool_size \(1, 2, 2\)",
        ),
        (
            "caffe2",
            lambda: NonLocalBlock3d.from_preset("caffe2", 8, mode="concatenation"),
            r"^mode \('caffe2'\)",
        ),
        ("nope", lambda: NonLocalBlock2d(8), r"^layout: expected one of"),
    ],
)
def test_to_reference_errors(layout: str, block: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        to_reference(block(), layout)


def test_to_reference_biases_and_types() -> None:
    block = NonLocalBlock2d(8, norm="batch")
    with torch.no_grad():
        block.w_z.bias.zero_()
    assert "conv_out.conv.bias" not in to_reference(block, "mmcv")  # a zero bias is dropped
    with torch.no_grad():
        block.w_z.bias.fill_(0.5)
    with pytest.raises(ValueError, match=r"^block: expected out_bias=False \(or a zero W_z bias\)"):
        to_reference(block, "mmcv")
    no_bias = NonLocalBlock2d.from_preset("timm", 16, out_bias=False)
    assert torch.equal(to_reference(no_bias, "timm")["z.bias"], torch.zeros(16))
    with pytest.raises(TypeError, match=r"^block: expected a NonLocalBlock1d/2d/3d, got Conv2d"):
        to_reference(torch.nn.Conv2d(1, 1, 1), "mmcv")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_round_trips_a_preset(layout: str) -> None:
    """Each advertised layout writes its own preset's block and loads it back computing the
    same outputs (random weights and BN statistics, float64, eval and train)."""
    cls = NonLocalBlock3d if layout in ("slowfast", "caffe2") else NonLocalBlock2d
    block = randomise_block_(cls.from_preset(layout, 8, dtype=torch.float64))
    again = from_reference(to_reference(block, layout), layout)
    assert type(again) is cls
    x = torch.randn(2, 8, *((3, 4, 6) if cls is NonLocalBlock3d else (6, 7)), dtype=torch.float64)
    for train in (False, True):
        block.train(train)
        again.train(train)
        with torch.no_grad():
            torch.testing.assert_close(again(x), block(x), atol=1e-12, rtol=1e-12)


def test_class_method_delegation() -> None:
    state = mmcv_2d(mode="concatenation", sub_sample=True)
    block = NonLocalBlock2d.from_reference(state, "mmcv", mode="concatenation")
    assert type(block) is NonLocalBlock2d and block.sub_sample
    direct = from_reference(state, "mmcv", mode="concatenation")
    assert all(
        torch.equal(a, b) for a, b in zip(block.state_dict().values(), direct.state_dict().values())
    )
    out = block.to_reference("mmcv")
    assert out.keys() == state.keys() and all(torch.equal(out[k], state[k]) for k in state)
    assert out["concat_project.conv.weight"].shape == (1, 8, 1, 1)
    with pytest.raises(ValueError, match=r"^sub_sample: expected True"):
        NonLocalBlock2d.from_reference(state, "mmcv", mode="concatenation", sub_sample=False)
    with pytest.raises(ValueError, match=r"^dims: expected 2"):
        NonLocalBlock1d.from_reference(state, "mmcv", mode="concatenation")
    blobs = NonLocalBlock3d.from_preset("caffe2", 8).to_reference("caffe2", prefix=P)
    assert NonLocalBlock3d.from_reference(blobs, "caffe2").norm.eps == 1.0000001e-5


# ------------------------------------------------------------------- what the keys do not say
@pytest.mark.parametrize("layout", ["alexhex7", "mmcv"])
def test_mode_is_read_from_the_keys_where_they_tell_it(layout: str) -> None:
    """No θ/φ keys: the Gaussian; a concatenation projection: concatenation (no warning)."""
    for mode in ("gaussian", "concatenation"):
        state = ref(layout, NonLocalBlock2d.from_preset(layout, 8, mode=mode))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            block = from_reference(state, layout)
        assert block.mode == mode


@pytest.mark.parametrize("layout", ["alexhex7", "mmcv", "slowfast", "caffe2"])
def test_embedded_gaussian_and_dot_product_keys_warn_without_mode(layout: str) -> None:
    """Regression: dot-product weights loaded without ``mode=`` silently became an embedded
    Gaussian block (outputs off by up to 5.6 on mmcv weights). The keys cannot tell the two
    apart: a UserWarning names both and the choice; ``mode=`` silences it."""
    dims = 3 if layout in ("slowfast", "caffe2") else 2
    cls = NonLocalBlock3d if dims == 3 else NonLocalBlock2d
    state = to_reference(cls.from_preset(layout, 8, mode="dot_product"), layout)
    with pytest.warns(UserWarning, match=r"^mode: .*'embedded_gaussian', 'dot_product'.*loaded as"):
        block = from_reference(state, layout, scale="inner" if layout == "mmcv" else None)
    assert block.mode == "embedded_gaussian"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert from_reference(state, layout, mode="dot_product").mode == "dot_product"


@pytest.mark.parametrize(("layout", "scale"), [("mmcv", "inner"), ("timm", "input")])
def test_unrecorded_use_scale_warns(layout: str, scale: str) -> None:
    """mmcv's and timm's ``use_scale`` is not in a state_dict: an embedded-Gaussian load
    without ``scale=`` assumes the reference's default and says so; ``scale=`` silences it."""
    state = mmcv_2d() if layout == "mmcv" else ref("timm", NonLocalBlock2d.from_preset("timm", 16))
    with pytest.warns(UserWarning, match=rf"^scale: a {layout} state_dict does not record"):
        block = from_reference(state, layout, mode="embedded_gaussian")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for given in (scale, None):
            quiet = from_reference(state, layout, mode="embedded_gaussian", scale=given)
            assert quiet.scale == given
    assert block.scale == scale
