"""Smoke test of benchmarks/reliability.py: the quick report has every section and real counts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "reliability.py"

pytestmark = [
    pytest.mark.skipif(not SCRIPT.is_file(), reason="needs the source checkout's benchmarks/"),
    pytest.mark.slow,
]


def test_quick_report_has_every_section(tmp_path: Path) -> None:
    out = tmp_path / "reliability.md"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "1099511627776"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    for heading in (
        "Property cases per kernel",
        "Gradcheck coverage",
        "Mixed precision",
        "Compile speed-ups",
        "DDP equivalence",
        "Fuzz",
    ):
        assert f"## {heading}" in text
    tried = re.search(r"\| inputs tried\s*\|\s*(\d+)", text)
    assert tried is not None and int(tried.group(1)) > 1000
    assert "`tests/test_properties.py`" in text  # gradcheck callers found by the scan
