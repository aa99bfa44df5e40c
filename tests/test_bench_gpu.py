"""benchmarks/gpu.py's ``--quick --device cpu`` mode: the same code paths on tiny sizes, with
what needs CUDA skipped and said so, writing a results file with every table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU_BENCH = ROOT / "benchmarks" / "gpu.py"
ENV = {**os.environ, "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "1099511627776"}
HEADINGS = (
    "## Machine", "## Setup", "## Forward (no_grad)", "## Forward + backward",
    "## Memory-bandwidth bound of the gathers", "## Exact k-NN builder",
    "## NonLocalBlock2d training step", "## Targets", "## Run", "## Command",
)  # fmt: skip
METHOD_COLUMNS = ["N", "k", "C′", "dtype", "SDPA flash", "SDPA mem-efficient", "regular", "csr",
                  "triton", "TransformerConv", "GATConv"]  # fmt: skip

pytestmark = pytest.mark.skipif(not GPU_BENCH.is_file(), reason="needs the checkout's benchmarks/")


def _section(text: str, heading: str) -> str:
    return text.split(heading + "\n", 1)[1].split("\n## ", 1)[0]


def _rows(body: str) -> list[list[str]]:
    lines = [line for line in body.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.split("|")[1:-1]] for line in lines if "---" not in line]


@pytest.mark.slow
def test_gpu_benchmark_quick_cpu_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    proc = subprocess.run(
        [sys.executable, str(GPU_BENCH), "--quick", "--device", "cpu", "--out", str(out)],
        cwd=ROOT, env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for heading in HEADINGS:
        assert heading in text, heading
    assert "- device: cpu" in text and "- triton:" in text and "- torch_geometric:" in text
    for heading in ("## Forward (no_grad)", "## Forward + backward"):
        rows = _rows(_section(text, heading))
        assert rows[0] == METHOD_COLUMNS
        by_dtype = {row[3]: dict(zip(METHOD_COLUMNS, row)) for row in rows[1:]}
        assert set(by_dtype) == {"float16", "bfloat16", "float32"}
        for cells in by_dtype.values():
            assert cells["N"] == "256" and cells["regular"].endswith(("B", "KiB", "MiB"))
        assert by_dtype["float16"]["csr"].startswith("n/a: dtype=torch.float16")
        assert by_dtype["float32"]["csr"].endswith(("B", "KiB", "MiB"))
        assert by_dtype["float32"]["triton"].startswith("n/a")  # CUDA only (or unregistered)
    knn = _rows(_section(text, "## Exact k-NN builder"))
    assert knn[0] == ["N", "C′", "method", "time / peak memory", "agreement"]
    methods = {row[2]: row for row in knn[1:]}
    # the same neighbours as the torch path
    assert float(methods["KNN(16, exact), Triton search"][4]) == 1.0
    assert methods["faiss-gpu (flat IP)"][3].startswith("n/a")
    block = _rows(_section(text, "## NonLocalBlock2d training step"))
    assert block[1][0] == "16×16" and block[1][3] in {"csr", "regular", "coo"}
    targets = [line for line in _section(text, "## Targets").splitlines() if line.startswith("- ")]
    assert len(targets) == 5
    assert all(line.startswith(("- PASS", "- FAIL", "- NOT MEASURED")) for line in targets)
    assert "MALLOC_MMAP_MAX_=0" in text and "--quick --device cpu" in text
