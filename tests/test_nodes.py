r"""Tests for :mod:`nlgraph.nodes`: RoI-Align region features and the box validators.

The reference is an independent, deliberately slow float64 RoI-Align written from the Mask R-CNN
definition (He et al., ICCV 2017): per box, per bin, per sample, explicit bilinear weights and
the boundary rule of ``torchvision.ops.roi_align`` (a sample outside [-1, H] x [-1, W] is 0,
otherwise its coordinates are clamped into the map). When torchvision imports, it is compared too.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import nlgraph.nodes
from nlgraph.nodes import check_batch, check_boxes, roi_features

from .helpers import DEVICES, with_device

try:  # torchvision does not import in every environment; compare with it when it does
    from torchvision.ops import roi_align as tv_roi_align
except Exception:  # pragma: no cover - depends on the environment
    tv_roi_align = None


def _bilinear(img: Tensor, y: float, x: float) -> Tensor:
    """Value of ``img`` (C, H, W) at (y, x) with torchvision's boundary rule."""
    _, h, w = img.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return torch.zeros(img.shape[0], dtype=torch.float64)
    y = min(max(y, 0.0), h - 1.0)
    x = min(max(x, 0.0), w - 1.0)
    y0, x0 = math.floor(y), math.floor(x)
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * img[:, y0, x0]
        + (1 - ly) * lx * img[:, y0, x1]
        + ly * (1 - lx) * img[:, y1, x0]
        + ly * lx * img[:, y1, x1]
    )


def reference_roi_align(
    fmap: Tensor,
    boxes: Tensor,
    batch: list[int],
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """Slow float64 RoI-Align: one explicit bilinear sample at a time."""
    f = fmap.detach().double().cpu()
    oh, ow = output_size
    s = sampling_ratio
    out = torch.zeros(len(batch), f.shape[1], oh, ow, dtype=torch.float64)
    for r, (x1, y1, x2, y2) in enumerate(boxes.detach().double().cpu().tolist()):
        offset = 0.5 if aligned else 0.0
        start_x, start_y = x1 * spatial_scale - offset, y1 * spatial_scale - offset
        roi_w = x2 * spatial_scale - offset - start_x
        roi_h = y2 * spatial_scale - offset - start_y
        if not aligned:  # the original op never pools from less than one cell
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_w, bin_h = roi_w / ow, roi_h / oh
        img = f[batch[r]]
        for i in range(oh):
            for j in range(ow):
                acc = torch.zeros(f.shape[1], dtype=torch.float64)
                for t in range(s):
                    y = start_y + i * bin_h + (t + 0.5) * bin_h / s
                    for u in range(s):
                        x = start_x + j * bin_w + (u + 0.5) * bin_w / s
                        acc += _bilinear(img, y, x)
                out[r, :, i, j] = acc / (s * s)
    return out


@pytest.fixture(params=["auto", "grouped", "stacked"])
def layout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the automatic sampling layout, then with each layout forced."""
    if request.param != "auto":
        monkeypatch.setattr(nlgraph.nodes, "_layout", lambda *args: request.param)
    return request.param


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else size


# Feature map 2 x 3 x 6 x 7 in cells; image coordinates are cells / spatial_scale.
BOX_SETS = {
    "inside": [[0.5, 0.5, 4.0, 3.0], [1.0, 2.0, 6.0, 5.5], [0.0, 0.0, 7.0, 6.0]],
    "partly_outside": [[-3.0, -2.0, 2.5, 3.0], [4.0, 3.0, 9.5, 8.0], [-1.4, 5.2, 8.3, 7.1]],
    "tiny": [[2.3, 2.3, 2.4, 2.35], [3.0, 1.0, 3.0, 1.0], [0.1, 5.9, 0.1, 5.9]],
    "outside": [[-9.0, -9.0, -4.0, -3.0], [10.0, 1.0, 14.0, 3.0], [-0.8, -0.9, -0.2, 0.3]],
    "edges": [[-1.5, -1.5, 0.5, 0.5], [6.0, 5.0, 8.0, 7.0], [6.4, 5.5, 7.6, 6.5]],
}


def _boxes(name: str, spatial_scale: float, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.tensor(BOX_SETS[name], dtype=dtype) / spatial_scale


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("box_set", list(BOX_SETS))
def test_matches_reference_fp64(
    box_set: str, spatial_scale: float, aligned: bool, layout: str
) -> None:
    fmap = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    boxes = _boxes(box_set, spatial_scale)
    batch = [1, 0, 1]
    out = roi_features(
        fmap, boxes, torch.tensor(batch), (2, 3), spatial_scale=spatial_scale, aligned=aligned
    )
    expected = reference_roi_align(fmap, boxes, batch, (2, 3), spatial_scale, 2, aligned)
    assert out.shape == (3, 3, 2, 3) and out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
@pytest.mark.parametrize("output_size", [1, (1, 4), (3, 2), 5])
def test_output_sizes_and_sampling_ratios(
    output_size: int | tuple[int, int], sampling_ratio: int, layout: str
) -> None:
    fmap = torch.randn(3, 2, 5, 8, dtype=torch.float64)
    boxes = torch.cat([_boxes("inside", 1.0), _boxes("partly_outside", 1.0)])
    batch = [2, 0, 1, 1, 2, 0]  # unsorted, every image used
    out = roi_features(fmap, boxes, torch.tensor(batch), output_size, sampling_ratio=sampling_ratio)
    size = _pair(output_size)
    expected = reference_roi_align(fmap, boxes, batch, size, 1.0, sampling_ratio, True)
    assert out.shape == (6, 2, *size)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("hw", [(1, 1), (1, 5), (4, 1)])
def test_degenerate_maps(hw: tuple[int, int], aligned: bool, layout: str) -> None:
    fmap = torch.randn(2, 2, *hw, dtype=torch.float64)
    boxes = torch.tensor(
        [[-1.0, -1.0, 2.0, 2.0], [0.0, 0.0, 0.5, 0.5], [-0.4, -0.2, 5.3, 4.8]], dtype=torch.float64
    )
    batch = [0, 1, 1]
    out = roi_features(fmap, boxes, torch.tensor(batch), (2, 2), aligned=aligned)
    expected = reference_roi_align(fmap, boxes, batch, (2, 2), 1.0, 2, aligned)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_boundary_rule_at_minus_one_and_h() -> None:
    """One sample per bin placed exactly on, or just past, the limits -1 and H (resp. W)."""
    fmap = torch.randn(1, 2, 4, 5, dtype=torch.float64)
    h, w = 4, 5
    # aligned=False, s=1, 1x1 output: the single sample is the box centre.
    cases = [
        (-1.0, 2.0, True),
        (-1.1, 2.0, False),
        (h, 2.0, True),
        (h + 0.1, 2.0, False),
        (2.0, -1.0, True),
        (2.0, -1.1, False),
        (2.0, w, True),
        (2.0, w + 0.1, False),
    ]
    for cy, cx, inside in cases:
        box = torch.tensor([[cx - 1, cy - 1, cx + 1, cy + 1]], dtype=torch.float64)
        out = roi_features(fmap, box, None, 1, sampling_ratio=1, aligned=False)[0, :, 0, 0]
        if not inside:
            assert torch.equal(out, torch.zeros(2, dtype=torch.float64)), (cy, cx)
        else:  # clamped into the map
            row, col = int(min(max(cy, 0.0), h - 1.0)), int(min(max(cx, 0.0), w - 1.0))
            torch.testing.assert_close(out, fmap[0, :, row, col], rtol=0, atol=1e-14)


def test_float32_agrees_with_reference(layout: str) -> None:
    fmap = torch.randn(3, 4, 12, 10)
    boxes = torch.cat([_boxes(name, 0.5, torch.float32) for name in BOX_SETS])
    batch = torch.arange(boxes.shape[0]) % 3
    out = roi_features(fmap, boxes, batch, (3, 4), spatial_scale=0.5)
    expected = reference_roi_align(fmap, boxes, batch.tolist(), (3, 4), 0.5, 2, True)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_layout_choice() -> None:
    assert nlgraph.nodes._layout(1, 10, 10) == "stacked"  # one image: no padding, no copy
    assert nlgraph.nodes._layout(4, 3, 10) == "grouped"  # 12 slots for 10 boxes
    assert nlgraph.nodes._layout(4, 7, 10) == "stacked"  # 28 slots for 10 boxes


def test_float32_many_images_keeps_per_image_precision() -> None:
    """Balanced boxes over 8 images take the grouped layout: float32 within 1e-5."""
    fmap = torch.randn(8, 2, 40, 36)
    corners = torch.rand(16, 4) * torch.tensor([36.0, 40.0, 36.0, 40.0]) * 4 - 8
    boxes = torch.cat(
        [corners[:, :2].minimum(corners[:, 2:]), corners[:, :2].maximum(corners[:, 2:])], 1
    )
    batch = torch.arange(16) % 8
    out = roi_features(fmap, boxes, batch, 3, spatial_scale=0.25)
    expected = reference_roi_align(fmap, boxes, batch.tolist(), (3, 3), 0.25, 2, True)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_batch_none_means_image_zero() -> None:
    fmap = torch.randn(1, 3, 6, 7, dtype=torch.float64)
    boxes = _boxes("partly_outside", 1.0)
    out = roi_features(fmap, boxes, None, 3)
    torch.testing.assert_close(out, roi_features(fmap, boxes, torch.zeros(3, dtype=torch.long), 3))
    expected = reference_roi_align(fmap, boxes, [0, 0, 0], (3, 3), 1.0, 2, True)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_each_box_sees_only_its_image(layout: str) -> None:
    """A box on image b is unchanged when every other image is replaced (no leakage)."""
    fmap = torch.randn(3, 2, 5, 6, dtype=torch.float64)
    boxes = torch.tensor([[-2.0, -2.0, 8.0, 7.0], [0.0, 3.5, 6.0, 6.0]], dtype=torch.float64)
    batch = torch.tensor([1, 1])
    out = roi_features(fmap, boxes, batch, 4, sampling_ratio=3)
    other = fmap.clone()
    other[0] = 1e6
    other[2] = -1e6
    torch.testing.assert_close(roi_features(other, boxes, batch, 4, sampling_ratio=3), out)


def test_empty_boxes() -> None:
    fmap = torch.randn(2, 5, 6, 7)
    out = roi_features(fmap, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), (2, 3))
    assert out.shape == (0, 5, 2, 3) and out.dtype == torch.float32
    out = roi_features(fmap[:1], torch.zeros(0, 4), None, 4)
    assert out.shape == (0, 5, 4, 4)


def test_gradcheck_feature_map(layout: str) -> None:
    fmap = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor(
        [[-1.0, 0.5, 3.0, 3.5], [0.5, 0.2, 4.7, 2.9], [2.0, 2.0, 2.5, 2.2]], dtype=torch.float64
    )
    batch = torch.tensor([0, 1, 1])
    assert torch.autograd.gradcheck(
        lambda f: roi_features(f, boxes, batch, (2, 3), sampling_ratio=2), (fmap,)
    )
    assert torch.autograd.gradcheck(
        lambda f: roi_features(f[:1], boxes, None, 2, aligned=False), (fmap,)
    )


def test_boxes_are_constants() -> None:
    fmap = torch.randn(1, 2, 4, 5, requires_grad=True)
    boxes = torch.tensor([[0.5, 0.5, 3.0, 3.0]], requires_grad=True)
    roi_features(fmap, boxes, None, 2).sum().backward()
    assert boxes.grad is None and fmap.grad is not None


@pytest.mark.skipif(tv_roi_align is None, reason="needs torchvision.ops.roi_align (not importable)")
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("box_set", list(BOX_SETS))
def test_matches_torchvision(box_set: str, aligned: bool) -> None:  # pragma: no cover
    fmap = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    boxes = _boxes(box_set, 0.5)
    batch = torch.tensor([1, 0, 1])
    rois = torch.cat([batch[:, None].double(), boxes], dim=1)
    expected = tv_roi_align(fmap, rois, (2, 3), 0.5, 2, aligned)
    out = roi_features(fmap, boxes, batch, (2, 3), 0.5, 2, aligned)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@with_device
def test_devices(device: str, layout: str) -> None:
    fmap = torch.randn(2, 3, 6, 7, dtype=torch.float64, device=device)
    boxes = _boxes("partly_outside", 0.25).to(device)
    out = roi_features(fmap, boxes, torch.tensor([1, 0, 1]), 3, spatial_scale=0.25)
    assert out.device == fmap.device
    expected = reference_roi_align(fmap, boxes, [1, 0, 1], (3, 3), 0.25, 2, True)
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Validation


def test_check_boxes_accepts_and_returns() -> None:
    boxes = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 2.0]])
    assert check_boxes(boxes) is boxes
    assert check_boxes(torch.zeros(0, 4)).shape == (0, 4)


@pytest.mark.parametrize(
    ("boxes", "error", "match"),
    [
        ([[0, 0, 1, 1]], TypeError, r"^boxes: expected a torch.Tensor, got list$"),
        (
            torch.tensor([[0, 0, 1, 1]]),
            TypeError,
            r"^boxes: expected a floating-point tensor .*got dtype torch.int64$",
        ),
        (
            torch.zeros(3, 5),
            ValueError,
            r"^boxes: expected a 2-D \(R, 4\) tensor of \(x1, y1, x2, y2\) boxes, got shape \(3, 5\)",
        ),
        (torch.zeros(4), ValueError, r"^boxes: expected a 2-D \(R, 4\) tensor.*shape \(4,\)"),
        (
            torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0], [1.0, math.nan, 3.0, 4.0]]),
            ValueError,
            r"^boxes: expected finite coordinates, got row 2 \(1, nan, 3, 4\)$",
        ),
        (
            torch.tensor([[0.0, 0.0, math.inf, 1.0]]),
            ValueError,
            r"^boxes: expected finite coordinates, got row 0 \(0, 0, inf, 1\)$",
        ),
        (
            torch.tensor([[0.0, 0.0, 1.0, 1.0], [5.0, 0.0, 2.0, 4.0]]),
            ValueError,
            r"^boxes: expected x1 <= x2 and y1 <= y2 in every row, "
            r"got row 1 \(5, 0, 2, 4\) with x2 < x1$",
        ),
        (
            torch.tensor([[0.0, 3.0, 1.0, 1.5]]),
            ValueError,
            r"^boxes: expected x1 <= x2 and y1 <= y2 in every row, "
            r"got row 0 \(0, 3, 1, 1.5\) with y2 < y1$",
        ),
        (
            torch.tensor([[2.0, 3.0, 1.0, 1.5]]),
            ValueError,
            r"with x2 < x1 and y2 < y1$",
        ),
    ],
    ids=["list", "int", "shape", "1d", "nan", "inf", "x-inverted", "y-inverted", "both"],
)
def test_check_boxes_errors(boxes: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        check_boxes(boxes)  # type: ignore[arg-type]


def test_check_boxes_uses_name() -> None:
    with pytest.raises(ValueError, match=r"^proposals: expected x1 <= x2"):
        check_boxes(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), name="proposals")


def test_check_batch() -> None:
    none = check_batch(None, 3, "cpu")
    assert none.dtype == torch.long and torch.equal(none, torch.zeros(3, dtype=torch.long))
    batch = torch.tensor([2, 0, 1])
    assert torch.equal(check_batch(batch, 3, torch.device("cpu"), num_images=3), batch)
    assert check_batch(torch.zeros(0, dtype=torch.long), 0, "cpu", num_images=1).shape == (0,)
    for device in DEVICES:
        assert check_batch(batch, 3, device).device.type == device


@pytest.mark.parametrize(
    ("batch", "kwargs", "error", "match"),
    [
        ([0, 1], {}, TypeError, r"^batch: expected a torch.Tensor or None, got list$"),
        (
            torch.tensor([0, 1, 1], dtype=torch.int32),
            {},
            TypeError,
            r"^batch: expected an int64 tensor, got dtype torch.int32$",
        ),
        (
            torch.tensor([0, 1]),
            {},
            ValueError,
            r"^batch: expected a 1-D tensor of length 3 \(num_boxes: one image index per box\), "
            r"got shape \(2,\)",
        ),
        (torch.zeros(3, 1, dtype=torch.long), {}, ValueError, r"^batch: expected a 1-D tensor"),
        (
            torch.tensor([0, -1, -2]),
            {},
            ValueError,
            r"^batch: expected non-negative image indices, got -1 at position 1$",
        ),
        (
            torch.tensor([0, 1, 2]),
            {"num_images": 2},
            IndexError,
            r"^batch: expected image indices in \[0, 2\), got 2 at position 2$",
        ),
        (
            torch.tensor([0, 5, 0]),
            {"name": "image_index"},
            None,
            None,
        ),
    ],
    ids=["list", "int32", "length", "2d", "negative", "too-large", "no-upper-bound"],
)
def test_check_batch_errors(batch: object, kwargs: dict, error: type | None, match: str) -> None:
    if error is None:
        assert check_batch(batch, 3, "cpu", **kwargs).tolist() == [0, 5, 0]  # type: ignore[arg-type]
        return
    with pytest.raises(error, match=match):
        check_batch(batch, 3, "cpu", **kwargs)  # type: ignore[arg-type]


def _call(**overrides: object) -> Tensor:
    args: dict[str, object] = {
        "feature_map": torch.randn(2, 3, 6, 7),
        "boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 4.0, 5.0]]),
        "batch": torch.tensor([0, 1]),
    }
    args.update(overrides)
    return roi_features(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"feature_map": [[1.0]]}, TypeError, r"^feature_map: expected a torch.Tensor, got list$"),
        (
            {"feature_map": torch.zeros(2, 3, 6, 7, dtype=torch.long)},
            TypeError,
            r"^feature_map: expected a floating-point tensor .*got dtype torch.int64$",
        ),
        (
            {"feature_map": torch.zeros(3, 6, 7)},
            ValueError,
            r"^feature_map: expected a 4-D tensor \(B, C, H, W\), got shape \(3, 6, 7\)",
        ),
        ({"boxes": torch.zeros(2, 3)}, ValueError, r"^boxes: expected a 2-D \(R, 4\) tensor"),
        (
            {"boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0], [4.0, 1.0, 3.0, 5.0]])},
            ValueError,
            r"^boxes: expected x1 <= x2 and y1 <= y2 in every row, got row 1 \(4, 1, 3, 5\)",
        ),
        (
            {"boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0], [math.nan, 1.0, 3.0, 5.0]])},
            ValueError,
            r"^boxes: expected finite coordinates, got row 1 \(nan, 1, 3, 5\)$",
        ),
        (
            {"boxes": torch.zeros(2, 4, dtype=torch.float64)},
            TypeError,
            r"^boxes: expected dtype torch.float32 \(the dtype of feature_map\), "
            r"got torch.float64$",
        ),
        (
            {"batch": None},
            ValueError,
            r"^batch: expected an int64 \(R,\) tensor of image indices when feature_map holds "
            r"B=2 images, got None$",
        ),
        (
            {"batch": torch.tensor([0, 1], dtype=torch.int32)},
            TypeError,
            r"^batch: expected an int64 tensor, got dtype torch.int32$",
        ),
        ({"batch": torch.tensor([0])}, ValueError, r"^batch: expected a 1-D tensor of length 2"),
        (
            {"batch": torch.tensor([-1, 0])},
            ValueError,
            r"^batch: expected non-negative image indices, got -1 at position 0$",
        ),
        (
            {"batch": torch.tensor([0, 2])},
            IndexError,
            r"^batch: expected image indices in \[0, 2\), got 2 at position 1$",
        ),
        (
            {"output_size": 0},
            ValueError,
            r"^output_size: expected a positive int or a pair of positive ints, got 0$",
        ),
        (
            {"output_size": (3, -1)},
            ValueError,
            r"^output_size: expected a positive int or a pair of positive ints, got \(3, -1\)$",
        ),
        (
            {"output_size": (3, 2, 1)},
            TypeError,
            r"^output_size: expected a positive int or a pair of positive ints, got \(3, 2, 1\)$",
        ),
        (
            {"output_size": 2.0},
            TypeError,
            r"^output_size: expected a positive int or a pair of positive ints, got 2.0$",
        ),
        (
            {"spatial_scale": 0.0},
            ValueError,
            r"^spatial_scale: expected a positive finite float, got 0.0$",
        ),
        (
            {"spatial_scale": -0.5},
            ValueError,
            r"^spatial_scale: expected a positive finite float, got -0.5$",
        ),
        (
            {"spatial_scale": math.inf},
            ValueError,
            r"^spatial_scale: expected a positive finite float, got inf$",
        ),
        (
            {"spatial_scale": "1"},
            TypeError,
            r"^spatial_scale: expected a positive finite float, got str '1'$",
        ),
        (
            {"sampling_ratio": 0},
            ValueError,
            r"^sampling_ratio: expected a positive int, got 0 \(the adaptive sampling_ratio <= 0 "
            r"of torchvision.*data-dependent shapes",
        ),
        (
            {"sampling_ratio": -1},
            ValueError,
            r"^sampling_ratio: expected a positive int, got -1 ",
        ),
        (
            {"sampling_ratio": 2.0},
            TypeError,
            r"^sampling_ratio: expected a positive int, got float 2.0$",
        ),
        ({"aligned": 1}, TypeError, r"^aligned: expected a bool, got int 1$"),
    ],
    ids=[
        "fmap-list",
        "fmap-int",
        "fmap-3d",
        "boxes-shape",
        "boxes-inverted",
        "boxes-nan",
        "boxes-dtype",
        "batch-none",
        "batch-int32",
        "batch-length",
        "batch-negative",
        "batch-range",
        "size-zero",
        "size-negative",
        "size-triple",
        "size-float",
        "scale-zero",
        "scale-negative",
        "scale-inf",
        "scale-str",
        "ratio-zero",
        "ratio-negative",
        "ratio-float",
        "aligned-int",
    ],
)
def test_roi_features_errors(overrides: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        _call(**overrides)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_boxes_on_another_device() -> None:  # pragma: no cover - needs CUDA
    with pytest.raises(ValueError, match=r"^boxes: expected device cuda:0"):
        _call(feature_map=torch.randn(2, 3, 6, 7, device="cuda"))
