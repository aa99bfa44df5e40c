"""Tests of the k-NN benchmark inputs (benchmarks/_embeddings.py) and of benchmarks/recall.py."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EMBEDDINGS = ROOT / "benchmarks" / "_embeddings.py"
RECALL_BENCH = ROOT / "benchmarks" / "recall.py"
ENV = {**os.environ, "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "1099511627776"}

pytestmark = pytest.mark.skipif(
    not EMBEDDINGS.is_file(), reason="needs the source checkout's benchmarks/"
)


def _load_embeddings():
    spec = importlib.util.spec_from_file_location("_bench_embeddings", EMBEDDINGS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def emb():
    return _load_embeddings()


def _ivf_unavailable() -> str:
    try:
        from nlgraph.graphs import KNN, knn_recall  # noqa: F401

        KNN(16, search="ivf")
    except Exception as exc:
        return f"KNN(search='ivf') unavailable: {type(exc).__name__}: {exc}"
    return ""


@pytest.mark.parametrize("kind", ["feature_map", "mixture", "noise"])
def test_embeddings_shapes_and_dtype(emb, kind):
    query, key = emb.embeddings(kind, 256, 8, seed=0)
    assert query.shape == key.shape == (1, 256, 8)
    assert query.dtype == key.dtype == torch.float32
    assert torch.isfinite(query).all() and torch.isfinite(key).all()
    assert not torch.equal(query, key)  # θ ≠ φ, or independent draws


@pytest.mark.parametrize("kind", ["feature_map", "mixture", "noise"])
def test_embeddings_are_deterministic_per_seed(emb, kind):
    state = torch.get_rng_state()
    first = emb.embeddings(kind, 256, 8, seed=3)
    again = emb.embeddings(kind, 256, 8, seed=torch.Generator().manual_seed(3))
    other = emb.embeddings(kind, 256, 8, seed=4)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    for a, b, c in zip(first, again, other):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert not torch.equal(a, c)


def test_feature_map_is_spatially_smooth(emb):
    """Neighbouring positions of the feature map embed closer than random pairs (noise: not)."""
    side = 32

    def neighbour_ratio(x):
        x = x[0].reshape(side, side, -1)
        near = (x[:, 1:] - x[:, :-1]).norm(dim=-1).mean()
        far = (x.reshape(side * side, -1) - x.reshape(side * side, -1).flip(0)).norm(dim=-1)
        return float(near / far.mean())

    assert neighbour_ratio(emb.feature_map_embeddings(side * side, 16)[1]) < 0.5
    assert neighbour_ratio(emb.noise_embeddings(side * side, 16)[1]) > 0.9


def test_scene_is_an_image(emb):
    img = emb.scene(48, seed=1)
    assert img.shape == (1, 3, 48, 48)
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert float(img.std()) > 0.05
    assert torch.equal(img, emb.scene(48, seed=1))


def test_embeddings_reject_bad_arguments(emb):
    with pytest.raises(ValueError, match="square"):
        emb.feature_map_embeddings(1000, 8)
    with pytest.raises(ValueError, match="kind"):
        emb.embeddings("uniform", 256, 8)


@pytest.mark.slow
@pytest.mark.skipif(bool(_ivf_unavailable()), reason=_ivf_unavailable() or "available")
def test_recall_benchmark_quick_writes_results(tmp_path):
    out = tmp_path / "recall.md"
    proc = subprocess.run(
        [sys.executable, str(RECALL_BENCH), "--quick", "--out", str(out)],
        cwd=ROOT, env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    for heading in ("## Machine", "## Setup", "## Feature map", "## Gaussian mixture",
                    "## Isotropic Gaussian noise", "## Notes", "## n_probe sweep",
                    "## Targets", "## Command"):  # fmt: skip
        assert heading in text, heading
    rows = [
        [c.strip() for c in line.split("|")[1:-1]]
        for line in text.splitlines()
        if line.startswith("| 1024 ")
    ]
    assert len(rows) == 3 * 2  # three kinds, k in {8, 16}
    for row in rows:
        assert 0.0 <= float(row[4]) <= 1.0 and 0.0 <= float(row[5]) <= 1.0  # recall, filled
    assert "NOT MEASURED: KNN(16, search='ivf') build" in text  # the target needs N=65536
    assert "MALLOC_MMAP_MAX_=0" in text and "--quick" in text
