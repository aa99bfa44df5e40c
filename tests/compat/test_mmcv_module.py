"""from_reference against live mmcv ``NonLocal1d/2d/3d`` modules (needs mmcv or mmcv-lite)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from nlgraph.compat import from_reference
from nlgraph.nn import NonLocalBlock2d
from tests.helpers import randomise_state_

mmcv_cnn = pytest.importorskip("mmcv.cnn")

MODES = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")
SHAPES = {1: (9,), 2: (5, 7), 3: (3, 4, 5)}
NORMS = {1: "BN1d", 2: "BN", 3: "BN3d"}
ATOL = 1e-10


def _cases() -> list[Any]:
    out = []
    for dims, mode, sub, norm in itertools.product((1, 2, 3), MODES, (False, True), (False, True)):
        for use_scale in (True, False) if mode == "embedded_gaussian" else (True,):
            name = f"{dims}d-{mode}-{'sub' if sub else 'nosub'}-{'bn' if norm else 'nonorm'}"
            name += "" if mode != "embedded_gaussian" else ("-scale" if use_scale else "-noscale")
            out.append(pytest.param(dims, mode, sub, norm, use_scale, id=name))
    return out


@pytest.mark.parametrize(("dims", "mode", "sub_sample", "norm", "use_scale"), _cases())
def test_matches_mmcv(dims: int, mode: str, sub_sample: bool, norm: bool, use_scale: bool) -> None:
    cls = getattr(mmcv_cnn, f"NonLocal{dims}d")
    norm_cfg = {"type": NORMS[dims]} if norm else None
    reference = cls(8, sub_sample=sub_sample, mode=mode, norm_cfg=norm_cfg, use_scale=use_scale)
    reference = reference.double()
    randomise_state_(reference, seed=dims * 100 + len(mode))
    x = torch.randn(2, 8, *SHAPES[dims], dtype=torch.float64)
    kwargs = {} if use_scale else {"scale": None}
    for train in (False, True):
        # A fresh load each time, so that train mode starts from the same running statistics.
        block = from_reference(reference.state_dict(), "mmcv", mode=mode, **kwargs).train(train)
        reference.train(train)
        with torch.no_grad():
            expected = reference(x)
            err = (block(x) - expected).abs().max().item()
        assert err <= ATOL, f"{'train' if train else 'eval'}: max abs error {err:.3e}"


@pytest.mark.parametrize("norm", [False, True])
def test_mmcv_preset_init_matches_mmcv(norm: bool) -> None:
    torch.manual_seed(0)
    c = 64
    reference = mmcv_cnn.NonLocal2d(c, norm_cfg={"type": "BN"} if norm else None)
    block = NonLocalBlock2d.from_preset("mmcv", c, norm="batch" if norm else None)
    x = torch.randn(2, c, 6, 6)
    with torch.no_grad():
        assert torch.equal(reference.eval()(x), x)  # the reference is the identity at init
        assert torch.equal(block.eval()(x), x)  # and so is the preset
    for ours, theirs in ((block.theta, reference.theta.conv), (block.g, reference.g.conv)):
        assert 0.008 < ours.weight.std().item() < 0.012
        assert 0.008 < theirs.weight.std().item() < 0.012
        assert not ours.bias.any() and not theirs.bias.any()
    if norm:  # W_z keeps a Kaiming(fan_out) weight, the norm is zeroed, no W_z bias
        ours_std = block.w_z.weight.std().item()
        theirs_std = reference.conv_out.conv.weight.std().item()
        expected = (2 / c) ** 0.5
        assert abs(ours_std / expected - 1) < 0.15 and abs(theirs_std / expected - 1) < 0.15
        assert block.w_z.bias is None and reference.conv_out.conv.bias is None
        assert not block.norm.weight.any() and not reference.conv_out.bn.weight.any()
    else:
        assert not block.w_z.weight.any() and not reference.conv_out.conv.weight.any()
