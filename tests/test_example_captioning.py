"""examples/captioning.py: the generated captions say what the pixels show.

The checks read every object back from the image alone (its pixels, found by colour), never
from the generator's boxes or bookkeeping, and recompute the caption from them: the closest
pair, which of the two is the subject, the relation word and the shapes.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.helpers import load_example


@pytest.fixture(scope="module")
def cap() -> dict[str, Any]:
    """The example's namespace."""
    return load_example("captioning")


def _objects_from_pixels(image: torch.Tensor, rgb: torch.Tensor) -> dict[int, dict]:
    """Colour index -> pixel bounding-box centre (x, y), fill ratio and pixel box."""
    found = {}
    for colour, value in enumerate(rgb):
        mask = (image - value[:, None, None]).abs().amax(0) < 0.2
        if int(mask.sum()) == 0:
            continue
        ys, xs = mask.nonzero(as_tuple=True)
        x1, x2 = int(xs.min()), int(xs.max()) + 1
        y1, y2 = int(ys.min()), int(ys.max()) + 1
        found[colour] = {
            "centre": torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2]),
            "fill": float(mask.sum()) / ((x2 - x1) * (y2 - y1)),
            "box": torch.tensor([x1, y1, x2, y2], dtype=torch.float32),
        }
    return found


def _shape_from_fill(fill: float) -> str:
    # A filled square covers its box, a disc pi/4 of it, the triangle about half.
    if fill > 0.9:
        return "square"
    return "circle" if fill > 0.65 else "triangle"


def test_captions_match_the_pixels(cap: dict[str, Any]) -> None:
    scenes = cap["make_dataset"](60, 48, 123)
    colours, shapes, relations = cap["COLOURS"], cap["SHAPES"], cap["RELATIONS"]
    words_of = cap["words"]
    checked_relations = set()
    for scene in scenes:
        objects = _objects_from_pixels(scene.image, cap["RGB"])
        assert 3 <= len(objects) <= 4
        assert len(objects) == len(scene.boxes)
        # The given boxes are the objects' boxes, within the pixel grid's rounding (2 px for
        # a triangle's apex, whose top pixel rows are narrower than a pixel).
        for obj in objects.values():
            assert (scene.boxes - obj["box"]).abs().amax(1).min() <= 2.0
        # The closest pair, from the pixel centres.
        keys = sorted(objects)
        pairs = sorted(
            (float((objects[a]["centre"] - objects[b]["centre"]).norm()), a, b)
            for i, a in enumerate(keys)
            for b in keys[i + 1 :]
        )
        if len(pairs) > 1:
            assert pairs[1][0] - pairs[0][0] > 1.0  # the generator keeps a 3 px margin
        _, first, second = pairs[0]
        subject, obj = min(first, second), max(first, second)  # priority = COLOURS order
        dx, dy = (objects[obj]["centre"] - objects[subject]["centre"]).tolist()
        if abs(dx) > abs(dy):
            relation = "left of" if dx > 0 else "right of"
        else:
            relation = "above" if dy > 0 else "below"
        expected = " ".join(
            [
                colours[subject],
                _shape_from_fill(objects[subject]["fill"]),
                relation,
                colours[obj],
                _shape_from_fill(objects[obj]["fill"]),
            ]
        )
        assert words_of(scene.caption.tolist()) == expected
        assert scene.caption[-1] == cap["EOS"]
        checked_relations.add(relation)
        assert all(w in shapes or w in colours for w in expected.split()[:2])
    assert checked_relations == set(relations)  # every relation word occurs


def test_datasets_are_deterministic(cap: dict[str, Any]) -> None:
    a, b = cap["make_dataset"](5, 48, 7), cap["make_dataset"](5, 48, 7)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.image, y.image) and torch.equal(x.caption, y.caption)


def test_every_model_captions_a_batch(cap: dict[str, Any]) -> None:
    scenes = cap["make_dataset"](3, 48, 0)
    batch = cap["collate"](scenes)
    for name in cap["MODELS"]:
        torch.manual_seed(0)
        model = cap["Captioner"](name, 48)
        logits = model(batch)
        assert logits.shape == (3, cap["CAPTION_LEN"], len(cap["VOCAB"]))
        tokens, alphas = model.generate(batch)
        assert tokens.shape == (3, cap["CAPTION_LEN"])
        # The decoder's attention covers the real regions of each scene and sums to one.
        assert torch.allclose(alphas.sum(-1), torch.ones(3, cap["CAPTION_LEN"]))
        for i, s in enumerate(scenes):
            assert float(alphas[i, :, len(s.boxes) :].sum()) == 0.0
        _, attn = model.nodes(batch.images, batch.boxes, batch.batch, return_attention=True)
        if name != "regions":
            assert attn is not None
            rows = attn.sum(-1)
            assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)
