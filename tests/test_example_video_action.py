"""examples/video_action.py: the generated clips carry the labels the docstring promises.

The labels are recomputed from the pixels alone (the flash's colour in frame 0, then which
colour's square moves between the first and the last motion frame, and where to),
independently of the generator's bookkeeping.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.helpers import load_example


@pytest.fixture(scope="module")
def va() -> dict[str, Any]:
    """The example's namespace."""
    return load_example("video_action")


def _centre(frame: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Mean (y, x) of the pixels of ``frame`` (3, H, W) within 0.2 of ``colour`` (3,)."""
    close = (frame - colour[:, None, None]).abs().amax(0) < 0.2
    return close.nonzero().float().mean(0)


def _label_from_pixels(clip: torch.Tensor, va: dict) -> int:
    palette = va["PALETTE"]
    first, last = va["MOTION_FRAMES"][0], va["MOTION_FRAMES"][-1]
    mean = clip[:, va["CUE_FRAMES"][0]].mean((1, 2))
    flash = int((palette - mean / 0.6).abs().sum(1).argmin())
    moves = [_centre(clip[:, last], c) - _centre(clip[:, first], c) for c in palette]
    moving = max(range(len(palette)), key=lambda k: float(moves[k].abs().max()))
    dy, dx = moves[moving].tolist()
    direction = (0 if dy < 0 else 1) if abs(dy) > abs(dx) else (2 if dx < 0 else 3)
    return 4 * int(moving == flash) + direction


def test_labels_follow_the_flash_and_the_motion(va: dict) -> None:
    clips, labels, record = va["make_clips"](64, 24, seed=7)
    assert clips.shape == (64, 3, va["FRAMES"], 24, 24)
    assert torch.equal(va["label_of"](record), labels)
    for clip, label in zip(clips, labels.tolist()):
        assert _label_from_pixels(clip, va) == label


def test_the_flash_and_the_motion_are_frames_apart(va: dict) -> None:
    clips, labels, _ = va["make_clips"](200, 24, seed=8)
    gap = [t for t in range(va["FRAMES"]) if t not in (*va["CUE_FRAMES"], *va["MOTION_FRAMES"])]
    assert gap and max(va["CUE_FRAMES"]) + 2 < min(va["MOTION_FRAMES"])
    assert float(clips[:, :, gap].abs().max()) < 0.5  # noise only between flash and motion
    # Every class occurs; "same colour" is a coin flip.
    assert set(labels.tolist()) == set(range(8))
    assert 70 < int((labels >= 4).sum()) < 130


def test_every_model_runs(va: dict) -> None:
    for name in va["MODELS"]:
        graph = None if name == "c2d" else name.removeprefix("nl_")
        model = va["VideoNet"](graph, width=16)
        x = torch.randn(2, 3, va["FRAMES"], 24, 24)
        assert model(x).shape == (2, 8)
        assert (model.block is None) == (name == "c2d")
