"""examples/segmentation.py: the generated scenes are labelled as documented, and the design
holds: the baseline's (and the window model's) receptive field never reaches the marker.

Checked independently of the generator's own bookkeeping: labels are recomputed from the
pixel colours, distances by brute force over pixel pairs, receptive fields from gradients.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tests.helpers import load_example


@pytest.fixture(scope="module")
def seg() -> dict[str, Any]:
    """The example's namespace."""
    return load_example("segmentation")


def _chebyshev(a: np.ndarray, b: np.ndarray) -> int:
    """Smallest Chebyshev distance between two sets of (y, x) pixel coordinates."""
    return int(np.abs(a[:, None, :] - b[None, :, :]).max(-1).min())


@pytest.mark.parametrize("size, gap", [(32, 14), (24, 9)])
def test_scenes_are_labelled_by_the_far_marker(seg: dict, size: int, gap: int) -> None:
    images, labels, regions = seg["make_dataset"](40, size, gap, 7)
    colours = torch.from_numpy(seg["COLOURS"])
    assert images.shape == (40, 3, size, size) and labels.shape == regions.shape == (40, size, size)
    seen = set()
    for img, lab, reg in zip(images, labels, regions):
        # classify every pixel by its nearest reference colour (noise sigma 0.04)
        refs = torch.cat(
            [torch.full((1, 3), seg["BACKGROUND"]), torch.full((1, 3), seg["GREY"]), colours]
        )
        kind = (img.permute(1, 2, 0)[:, :, None, :] - refs).square().sum(-1).argmin(-1)
        marker = kind >= 2
        assert int(marker.sum()) == seg["MARKER"] ** 2
        colour = int(kind[marker][0]) - 2
        assert bool((kind[marker] == colour + 2).all())
        grey = kind == 1
        assert torch.equal(grey, reg)
        expected = torch.zeros_like(lab)
        expected[grey | marker] = colour + 1
        assert torch.equal(lab, expected)
        assert int(grey.sum()) > 0
        dist = _chebyshev(grey.nonzero().numpy(), marker.nonzero().numpy())
        assert dist >= gap
        seen.add(colour)
    assert seen == {0, 1, 2}


def test_scenes_are_deterministic(seg: dict) -> None:
    a = seg["make_dataset"](5, 32, 14, 3)
    b = seg["make_dataset"](5, 32, 14, 3)
    c = seg["make_dataset"](5, 32, 14, 4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def _non_identity(model: torch.nn.Module) -> torch.nn.Module:
    """A freshly built block is the identity (zero BatchNorm): give it a path to its output."""
    if model.context is not None:
        with torch.no_grad():
            model.context.norm.weight.fill_(1.0)
    return model


def test_receptive_fields(seg: dict) -> None:
    """fcn and nl_window see less than the default gap; the dense and k-NN blocks see all."""
    torch.manual_seed(0)
    radius = {
        name: seg["receptive_radius"](_non_identity(seg["SegNet"](name)), 64)
        for name in seg["MODELS"]
    }
    assert radius["fcn"] < radius["nl_window"] < 14
    assert radius["nl_dense"] > 30 and radius["nl_knn"] > 30


def test_no_region_pixel_of_fcn_or_window_depends_on_the_marker(seg: dict) -> None:
    """Gradient of the region pixels' logits w.r.t. the marker pixels: exactly 0 for fcn and
    nl_window, non-zero for nl_dense, on generated default-size scenes."""
    images, _, regions = seg["make_dataset"](4, 32, 14, 11)
    marker = images.std(1) > 0.2  # the coloured pixels
    torch.manual_seed(0)
    for name, expect_zero in (("fcn", True), ("nl_window", True), ("nl_dense", False)):
        model = _non_identity(seg["SegNet"](name)).eval()
        x = images.clone().requires_grad_(True)
        logits = model(x)
        (logits * regions[:, None]).sum().backward()
        reach = x.grad.abs().sum(1)[marker]
        assert bool((reach == 0).all()) is expect_zero, name
