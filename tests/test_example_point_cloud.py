"""examples/point_cloud.py: the generated labels are what the clouds show, checked independently
of the generator (paint coherence between neighbouring points, distances between part centres),
and every model runs on a batch."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.helpers import load_example


@pytest.fixture(scope="module")
def pc() -> dict[str, Any]:
    """The example's namespace."""
    return load_example("point_cloud")


def _label_from_cloud(pos: torch.Tensor, paint: torch.Tensor, part: torch.Tensor) -> str:
    """Recover the class name from what the cloud shows: a part is two-tone when a point's paint
    agrees with its nearest neighbours' (k = 4, within the part); two two-tone parts share a
    side when their centres are about as close as the closest two parts (a diagonal is sqrt(2)
    times longer)."""
    tones, centres = [], []
    for p in range(4):
        sel = part == p
        x, f = pos[sel], paint[sel]
        d = torch.cdist(x, x)
        d.fill_diagonal_(float("inf"))
        nn = d.topk(4, largest=False).indices
        agreement = float((f[:, None] * f[nn]).mean())  # ~1 two-tone, ~0 speckled
        tones.append(agreement > 0.5)
        centres.append(x.mean(0))
    count = sum(tones)
    names = {0: "none", 1: "one", 3: "three", 4: "four"}
    if count != 2:
        return names[count]
    a, b = (c for c, t in zip(centres, tones) if t)
    closest = min(float((c - e).norm()) for i, c in enumerate(centres) for e in centres[i + 1 :])
    return "two/side" if float((a - b).norm()) < 1.2 * closest else "two/diagonal"


def test_labels_match_the_clouds(pc: dict) -> None:
    import numpy as np

    rng = np.random.default_rng(123)
    classes = pc["CLASSES"]
    for label in range(len(classes)):
        for _ in range(5):
            pos, paint, part = pc["make_cloud"](label, 256, rng)
            pos, paint, part = map(torch.from_numpy, (pos, paint, part))
            assert _label_from_cloud(pos, paint, part) == classes[label][0]
            # centred, unit RMS radius, balanced paint (no per-point cue to the class)
            assert pos.mean(0).abs().max() < 1e-5
            assert abs(float(pos.square().sum(1).mean()) - 1) < 1e-4
            assert abs(float(paint.mean())) < 0.3


def test_dataset_and_every_model(pc: dict) -> None:
    from torch_geometric.loader import DataLoader

    data = pc["make_dataset"](6, 64, 8, 0)
    assert all(d.edge_index.shape == (2, 64 * 8) for d in data)
    batch = next(iter(DataLoader(data, batch_size=3)))
    full = pc["full_edge_index"](3, 64)
    assert full.shape == (2, 3 * 64 * 64)
    assert bool((batch.batch[full[0]] == batch.batch[full[1]]).all())  # never across clouds
    for kind in pc["MODELS"]:
        model = pc["PointCloudNet"](kind, len(pc["CLASSES"]))
        out = model(*pc["step_inputs"](model, batch, pc["FullGraphs"](64)))
        assert out.shape == (3, len(pc["CLASSES"]))
        out.sum().backward()
