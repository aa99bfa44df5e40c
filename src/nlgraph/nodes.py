r"""Object proposals as graph nodes: region features by bilinear RoI-Align, and box validation.

:func:`roi_features` pools a fixed-size feature grid for every box of a batch of feature maps
(He et al., "Mask R-CNN", ICCV 2017, https://arxiv.org/abs/1703.06870), with the semantics of
``torchvision.ops.roi_align`` for a positive ``sampling_ratio``, written with one
:func:`torch.nn.functional.grid_sample` call (no compiled extension). The pooled features are the
node features of the box graph (:mod:`nlgraph.graphs`) that relation modules reason over.

:func:`check_boxes` and :func:`check_batch` are the shared validators of a box set and of its
image-index vector; every box-taking entry point of nlgraph calls them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._validate import (
    MAX_COUNT,
    check_async,
    check_float_tensor,
    check_has_data,
    check_nonnegative_int,
    check_positive_int,
    describe,
)

__all__ = ["check_batch", "check_boxes", "roi_features"]


def _row(boxes: Tensor, i: int) -> str:
    return "(" + ", ".join(f"{v:g}" for v in boxes[i].tolist()) + ")"


def check_boxes(boxes: Tensor, name: str = "boxes") -> Tensor:
    r"""Check a set of boxes in ``(x1, y1, x2, y2)`` corner format and return it unchanged.

    A valid box set is a floating-point ``(R, 4)`` tensor (``R = 0`` allowed) of finite
    coordinates with :math:`x_1 \le x_2` and :math:`y_1 \le y_2` in every row; zero-width and
    zero-height boxes are allowed. The values are checked without a host read
    (:func:`nlgraph._validate.check_async`): on CPU a bad box raises here with the first bad row
    quoted; on CUDA it is a device-side assertion.

    Args:
        boxes (Tensor): the boxes, one ``(x1, y1, x2, y2)`` row per box.
        name (str, optional): the argument name quoted in errors. (default: ``"boxes"``)

    Shapes:
        - boxes: (R, 4)
        - returns: the same tensor

    Raises:
        TypeError: ``boxes`` is not a tensor or not floating point:
            ``"boxes: expected a floating-point tensor (...), got dtype torch.int64"``.
        ValueError: wrong shape (``"boxes: expected a 2-D (R, 4) tensor of (x1, y1, x2, y2)
            boxes, got shape (3, 5), ..."``), a NaN or infinite coordinate (``"boxes: expected
            finite coordinates, got row 2 (1, nan, 3, 4)"``) or an inverted box (``"boxes:
            expected x1 <= x2 and y1 <= y2 in every row, got row 1 (5, 0, 2, 4) with x2 < x1"``);
            the first offending row is quoted.

    Example:
        >>> check_boxes(torch.tensor([[0.0, 0.0, 4.0, 2.0]])).shape
        torch.Size([1, 4])
    """
    check_float_tensor(name, boxes)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"{name}: expected a 2-D (R, 4) tensor of (x1, y1, x2, y2) boxes, got {describe(boxes)}"
        )
    if boxes.shape[0] == 0:
        return boxes
    with torch.no_grad():
        nonfinite = ~torch.isfinite(boxes).all(dim=1)
        inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
        check_async(
            ~(nonfinite | inverted).any(),
            f"{name}: expected finite (x1, y1, x2, y2) rows with x1 <= x2 and y1 <= y2",
            lambda: _box_error(name, boxes, nonfinite, inverted),
        )
    return boxes


def _box_error(name: str, boxes: Tensor, nonfinite: Tensor, inverted: Tensor) -> ValueError:
    """The error quoting the first bad row (the failure path: it reads the values)."""
    if bool(nonfinite.any()):
        i = int(nonfinite.nonzero()[0, 0])
        return ValueError(f"{name}: expected finite coordinates, got row {i} {_row(boxes, i)}")
    i = int(inverted.nonzero()[0, 0])
    which = " and ".join(
        w
        for w, bad in (
            ("x2 < x1", bool(boxes[i, 2] < boxes[i, 0])),
            ("y2 < y1", bool(boxes[i, 3] < boxes[i, 1])),
        )
        if bad
    )
    return ValueError(
        f"{name}: expected x1 <= x2 and y1 <= y2 in every row, "
        f"got row {i} {_row(boxes, i)} with {which}"
    )


def check_batch(
    batch: Tensor | None,
    num_boxes: int,
    device: torch.device | str | None,
    name: str = "batch",
    *,
    num_images: int | None = None,
) -> Tensor:
    r"""Check a per-box image-index vector and return it as an int64 ``(R,)`` tensor on ``device``.

    ``batch[r]`` is the index of the image box ``r`` belongs to (PyG's ``batch`` convention; it
    need not be sorted). ``None`` means every box is in image 0 and returns zeros. The values
    are checked without a host read (an error is raised at once on CPU, as a device-side
    assertion on CUDA).

    Args:
        batch (Tensor, optional): int64 image index of each box, or ``None``.
        num_boxes (int): R, the number of boxes ``batch`` must describe.
        device (torch.device or str, optional): where the returned vector lives (``batch`` is
            moved there when it is elsewhere).
        name (str, optional): the argument name quoted in errors. (default: ``"batch"``)
        num_images (int, optional): when given, indices must lie in ``[0, num_images)``.
            (default: ``None``, no upper bound)

    Shapes:
        - batch: (R,)
        - returns: (R,), int64, on ``device``

    Raises:
        TypeError: not a tensor, or not int64: ``"batch: expected an int64 tensor, got dtype
            torch.int32"``.
        ValueError: wrong shape (``"batch: expected a 1-D tensor of length 3 (one image index
            per box), got shape (2,), ..."``) or a negative index (``"batch: expected
            non-negative image indices, got -1 at position 0"``).
        IndexError: an index ``>= num_images``: ``"batch: expected image indices in [0, 2),
            got 5 at position 1"``.

    Example:
        >>> check_batch(None, 3, "cpu")
        tensor([0, 0, 0])
    """
    check_nonnegative_int("num_boxes", num_boxes)
    if num_images is not None:
        check_positive_int("num_images", num_images)
    if batch is None:
        return torch.zeros(num_boxes, dtype=torch.long, device=device)
    if not isinstance(batch, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or None, got {type(batch).__name__}")
    if batch.dtype != torch.long:
        raise TypeError(f"{name}: expected an int64 tensor, got dtype {batch.dtype}")
    check_has_data(name, batch)
    if batch.dim() != 1 or batch.shape[0] != num_boxes:
        raise ValueError(
            f"{name}: expected a 1-D tensor of length {num_boxes} (num_boxes: one image index per "
            f"box), got {describe(batch)}"
        )
    batch = batch.to(device)
    if num_boxes == 0:
        return batch
    lo, hi = torch.aminmax(batch)
    ok = lo >= 0 if num_images is None else (lo >= 0) & (hi < num_images)
    check_async(ok, f"{name}: expected image indices in [0, {num_images or 'inf'})",
                lambda: _batch_error(name, batch, num_images))  # fmt: skip
    return batch


def _batch_error(name: str, batch: Tensor, num_images: int | None) -> Exception:
    """The error quoting the first bad index (the failure path: it reads the values)."""
    if bool((batch < 0).any()):
        i = int((batch < 0).nonzero()[0, 0])
        return ValueError(
            f"{name}: expected non-negative image indices, got {int(batch[i])} at position {i}"
        )
    i = int((batch >= (num_images or 0)).nonzero()[0, 0])
    return IndexError(
        f"{name}: expected image indices in [0, {num_images}), got {int(batch[i])} at position {i}"
    )


def _output_size(value: object) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) for v in pair)
    ):
        raise TypeError(
            f"output_size: expected a positive int or a pair of positive ints, got {value!r}"
        )
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(
            f"output_size: expected a positive int or a pair of positive ints, got {value!r}"
        )
    for v in pair:
        check_positive_int("output_size", v)
    return int(pair[0]), int(pair[1])


def _check_options(spatial_scale: object, sampling_ratio: object, aligned: object) -> float:
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, (int, float)):
        raise TypeError(
            f"spatial_scale: expected a positive finite float, got "
            f"{type(spatial_scale).__name__} {spatial_scale!r}"
        )
    if not (math.isfinite(spatial_scale) and spatial_scale > 0):
        raise ValueError(f"spatial_scale: expected a positive finite float, got {spatial_scale}")
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
        raise TypeError(
            f"sampling_ratio: expected a positive int, got "
            f"{type(sampling_ratio).__name__} {sampling_ratio!r}"
        )
    if sampling_ratio > MAX_COUNT:
        raise ValueError(
            f"sampling_ratio: expected a positive int up to 2**31 - 1, got {sampling_ratio}"
        )
    if sampling_ratio < 1:
        raise ValueError(
            f"sampling_ratio: expected a positive int, got {sampling_ratio} (the adaptive "
            "sampling_ratio <= 0 of torchvision, ceil(box size / output size) samples per bin, "
            "depends on each box's size and so gives data-dependent shapes and a host sync; "
            "pass a fixed number, e.g. 2)"
        )
    if not isinstance(aligned, bool):
        raise TypeError(f"aligned: expected a bool, got {type(aligned).__name__} {aligned!r}")
    return float(spatial_scale)


def roi_features(
    feature_map: Tensor,
    boxes: Tensor,
    batch: Tensor | None = None,
    output_size: int | tuple[int, int] = 7,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> Tensor:
    r"""Region features of boxes by bilinear RoI-Align, with ``torchvision.ops.roi_align`` semantics.

    He et al., "Mask R-CNN", ICCV 2017, https://arxiv.org/abs/1703.06870. Box :math:`r` of image
    :math:`b_r` is mapped to the feature map, split into :math:`o_h \times o_w` bins, and each bin
    averages :math:`s \times s` bilinear samples taken at the centres of a regular sub-grid:

    .. math::
        x_1' = \sigma x_1 - \delta,\quad w = x_2' - x_1' \ (\text{aligned=False: } \max(w, 1)),
        \quad \xi_{j,u} = x_1' + \frac{w}{o_w}\Big(j + \frac{u + 1/2}{s}\Big)

    .. math::
        \mathrm{out}_{r,c,i,j} = \frac{1}{s^2} \sum_{t=0}^{s-1} \sum_{u=0}^{s-1}
            \mathrm{bilinear}(F_{b_r,c},\ \eta_{i,t},\ \xi_{j,u})

    (the same for :math:`y` with :math:`h, o_h, i, t`), where :math:`\sigma` is
    ``spatial_scale``, :math:`\delta = 1/2` when ``aligned`` (pixel centres sit at half-integers
    of the image coordinates) and 0 otherwise, and :math:`s` is ``sampling_ratio``. Boundary
    rule (torchvision's ``bilinear_interpolate``): a sample with :math:`\eta < -1`,
    :math:`\eta > H`, :math:`\xi < -1` or :math:`\xi > W` contributes 0 (it still counts in the
    :math:`1/s^2`); otherwise :math:`\eta` is clamped to :math:`[0, H-1]` and :math:`\xi` to
    :math:`[0, W-1]` and interpolated from the four surrounding cells with weights
    :math:`(1-l_y)(1-l_x), (1-l_y)l_x, l_y(1-l_x), l_y l_x`, :math:`l = \eta - \lfloor\eta\rfloor`.

    All boxes are sampled by one ``grid_sample`` call, never by a per-box copy of the map. When
    the boxes are spread evenly enough over the B images (B times the largest per-image count is
    at most twice R), each image is one ``grid_sample`` batch row holding its boxes' grids, padded
    with zero-reading samples; otherwise the images are stacked along the height with a zero row
    between them (one copy of the map, float32 coordinates then lose precision in proportion to
    the stacked height B (H + 1)). Choosing needs the largest per-image count (one host sync when
    B > 1, besides validation, which reads the box and batch values once). Gradients flow to
    ``feature_map``; ``boxes`` are treated as constants (detached), as in torchvision, which has
    no gradient for the boxes either.

    Args:
        feature_map (Tensor): F, a batch of B feature maps (float32 or float64 are tested).
        boxes (Tensor): boxes in ``(x1, y1, x2, y2)`` image coordinates, same dtype and device
            as ``feature_map``; checked by :func:`check_boxes`.
        batch (Tensor, optional): int64 image index of each box in ``[0, B)``, any order. With
            ``None`` every box belongs to image 0, which is only allowed when B = 1 (to avoid
            silently pooling every box from the first image of a batch). (default: ``None``)
        output_size (int or tuple[int, int], optional): :math:`(o_h, o_w)`; an int means a
            square grid. (default: ``7``)
        spatial_scale (float, optional): :math:`\sigma`, feature-map cells per image pixel,
            e.g. ``1/16`` for a stride-16 map. (default: ``1.0``)
        sampling_ratio (int, optional): :math:`s`, samples per bin along each axis. Must be
            positive: torchvision's adaptive ``<= 0`` (``ceil(h / o_h)``) gives data-dependent
            shapes and is not supported. (default: ``2``)
        aligned (bool, optional): shift boxes by half a pixel (Detectron2's ``ROIAlignV2``);
            ``False`` reproduces the original Mask R-CNN op, including the minimum box size
            of one cell. (default: ``True``)

    Shapes:
        - feature_map: (B, C, H, W)
        - boxes: (R, 4); batch: (R,)
        - returns: (R, C, o_h, o_w), dtype and device of ``feature_map``; R = 0 gives an
          empty (0, C, o_h, o_w) tensor.

    Raises:
        TypeError: a non-float ``feature_map`` or ``boxes``, ``boxes`` of another dtype, a
            non-int64 ``batch``, or an argument of the wrong type.
        ValueError: ``feature_map`` not 4-D, bad boxes (see :func:`check_boxes`), ``boxes`` on
            another device, a ``batch`` of the wrong shape or with negative values, ``batch=None``
            with B > 1, a non-positive ``output_size`` or ``sampling_ratio``, or a
            non-positive or non-finite ``spatial_scale``.
        IndexError: an image index ``>= B``:
            ``"batch: expected image indices in [0, 2), got 2 at position 0"``.

    Example:
        >>> fmap = torch.randn(2, 8, 16, 16)
        >>> boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0], [8.0, 4.0, 40.0, 60.0]])
        >>> roi_features(fmap, boxes, torch.tensor([0, 1]), 7, spatial_scale=0.25).shape
        torch.Size([2, 8, 7, 7])
    """
    check_float_tensor("feature_map", feature_map)
    if feature_map.dim() != 4:
        raise ValueError(
            f"feature_map: expected a 4-D tensor (B, C, H, W), got {describe(feature_map)}"
        )
    check_boxes(boxes, "boxes")
    if boxes.dtype != feature_map.dtype:
        raise TypeError(
            f"boxes: expected dtype {feature_map.dtype} (the dtype of feature_map), "
            f"got {boxes.dtype}"
        )
    if boxes.device != feature_map.device:
        raise ValueError(
            f"boxes: expected device {feature_map.device} (the device of feature_map), "
            f"got {boxes.device}"
        )
    oh, ow = _output_size(output_size)
    scale = _check_options(spatial_scale, sampling_ratio, aligned)
    n_img, channels, height, width = feature_map.shape
    num_boxes = boxes.shape[0]
    if batch is None and n_img != 1:
        raise ValueError(
            f"batch: expected an int64 (R,) tensor of image indices when feature_map holds "
            f"B={n_img} images, got None"
        )
    batch = check_batch(batch, num_boxes, feature_map.device, "batch", num_images=n_img)
    s = sampling_ratio
    if num_boxes == 0 or height == 0 or width == 0:
        return feature_map.new_zeros((num_boxes, channels, oh, ow))

    # Sample coordinates in feature-map cells, computed in at least float32.
    cdtype = torch.promote_types(boxes.dtype, torch.float32)
    b = boxes.detach().to(cdtype)
    offset = 0.5 if aligned else 0.0
    x1 = b[:, 0] * scale - offset
    y1 = b[:, 1] * scale - offset
    bw = b[:, 2] * scale - offset - x1
    bh = b[:, 3] * scale - offset - y1
    if not aligned:
        bw = bw.clamp(min=1.0)
        bh = bh.clamp(min=1.0)
    dev = feature_map.device
    # Position of sample u of bin j in units of bins: j + (u + 1/2) / s, for j*s + u in order.
    ty = (torch.arange(oh * s, device=dev, dtype=cdtype) + 0.5) / s
    tx = (torch.arange(ow * s, device=dev, dtype=cdtype) + 0.5) / s
    ys = y1[:, None] + (bh / oh)[:, None] * ty  # (R, oh*s)
    xs = x1[:, None] + (bw / ow)[:, None] * tx  # (R, ow*s)

    # Boundary rule: outside [-1, H] x [-1, W] -> 0; else clamp into [0, H-1] x [0, W-1].
    # grid_sample(align_corners=False) reads pixel p at normalised (2p + 1) / size - 1; the
    # value -3 maps beyond the border for any size, so those samples read zero padding.
    counts = torch.bincount(batch, minlength=n_img) if n_img > 1 else None
    slots = int(counts.max()) if counts is not None else num_boxes  # one host sync when B > 1
    layout = _layout(n_img, slots, num_boxes)
    if layout == "stacked" and n_img > 1:  # images stacked along H, one zero row between them
        total_h = n_img * (height + 1)
        row0 = (batch * (height + 1)).to(cdtype)[:, None]
    else:
        total_h, row0 = height, torch.zeros_like(ys[:, :1])
    far = torch.full((), -3.0, device=dev, dtype=cdtype)
    gy = (2.0 * (ys.clamp(0, height - 1) + row0) + 1.0) / total_h - 1.0
    gy = torch.where((ys >= -1) & (ys <= height), gy, far)
    gx = (2.0 * xs.clamp(0, width - 1) + 1.0) / width - 1.0
    gx = torch.where((xs >= -1) & (xs <= width), gx, far)
    grid = torch.stack(
        (gx[:, None, :].expand(-1, oh * s, -1), gy[:, :, None].expand(-1, -1, ow * s)), dim=-1
    ).to(feature_map.dtype)  # (R, oh*s, ow*s, 2)

    def pool(source: Tensor, grid: Tensor) -> Tensor:  # (N, C, M*oh*s, ow*s) -> (N, C, M*oh, ow)
        samples = F.grid_sample(
            source, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return F.avg_pool2d(samples, kernel_size=s) if s > 1 else samples

    if layout == "stacked" or counts is None:
        source = F.pad(feature_map, (0, 0, 0, 1)) if n_img > 1 else feature_map
        source = source.transpose(0, 1).reshape(1, channels, total_h, width)
        pooled = pool(source, grid.reshape(1, num_boxes * oh * s, ow * s, 2))
        return pooled.reshape(channels, num_boxes, oh, ow).transpose(0, 1).contiguous()
    # grouped: image b's boxes fill slots 0..count_b-1 of row b; unused slots read zeros.
    order = torch.argsort(batch, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.empty_like(batch)
    pos[order] = torch.arange(num_boxes, device=dev) - starts[batch[order]]
    full = grid.new_full((n_img, slots, oh * s, ow * s, 2), -3.0)
    full[batch, pos] = grid
    pooled = pool(feature_map, full.reshape(n_img, slots * oh * s, ow * s, 2))
    return pooled.reshape(n_img, channels, slots, oh, ow)[batch, :, pos]


#: The grouped layout pads every image to the largest box count; it is used while that costs at
#: most this factor more samples than there are boxes, else the stacked layout is used.
_GROUPED_MAX_PADDING = 2


def _layout(n_img: int, slots: int, num_boxes: int) -> str:
    """``"grouped"`` (one grid per image, per-image precision) or ``"stacked"`` (one tall map).

    Grouped samples each image in its own ``grid_sample`` batch row, padded to ``slots`` (the
    largest per-image box count), so coordinates keep the precision of one map. Stacked sends
    every box through one map of height ``B (H + 1)``: no padding, but float32 coordinates lose
    precision in proportion to that height. With one image both are the same (no copy).
    """
    if n_img == 1:
        return "stacked"
    return "grouped" if n_img * slots <= _GROUPED_MAX_PADDING * num_boxes else "stacked"
