"""benchmarks/scale.py --quick: every stage runs and lands in the results file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCALE_BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py"

pytestmark = pytest.mark.skipif(
    not SCALE_BENCH.is_file(), reason="needs the source checkout's benchmarks/"
)


@pytest.mark.slow
def test_scale_quick_writes_every_stage(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("_bench_scale_quick", SCALE_BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "scale.md"
    assert module.main(["--quick", "--out", str(out)]) == 0
    md = out.read_text()
    for stage in ("k-NN graph (grid)", "full-batch epoch", "NeighborLoader epoch", "whole run"):
        assert f"| {stage}" in md, stage
    assert "N = 5,000 nodes, k = 8" in md
    assert "- not checked: N = 5,000" in md
    assert "## Machine" in md and "## Command" in md and "--quick" in md
