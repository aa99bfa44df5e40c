#!/usr/bin/env bash
# The one script a session runs on a lent GPU machine: CUDA tests, then benchmarks/gpu.py.
#
# Invoke from the repository root (the device tool's `run` already starts there):
#     bash benchmarks/gpu_check.sh
# e.g. through the tool: run(command="bash benchmarks/gpu_check.sh", timeout_s=540).
# It uses the machine's own python3 (which holds a CUDA PyTorch, Triton and PyG; nothing can
# be installed there) with src/ on PYTHONPATH: no venv, no pip. PYTHON=... overrides the
# interpreter. Sections: [1] environment, [2] CUDA tests (timeout TEST_TIMEOUT s), [3] the
# benchmark (timeout BENCH_TIMEOUT s; pass QUICK=1 for its ~20 s subset). Total under 8 min.
# When $OUT is set (the device tool sets it), the test log, the benchmark log and
# benchmarks/results/gpu.md are copied there. Exit status: 0 only if tests and benchmark pass.
set -u -o pipefail

PYTHON=${PYTHON:-python3}
TEST_TIMEOUT=${TEST_TIMEOUT:-120}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-330}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776
LOGS=${OUT:-/tmp/nlgraph_gpu_check}
mkdir -p "$LOGS"
status=0

section() { printf '\n==================== %s ====================\n' "$*"; }

section "[1] environment"
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "nvidia-smi: not available"
"$PYTHON" -c "import torch; print(torch.__version__, torch.cuda.is_available())" || exit 2
"$PYTHON" - <<'PY'
import importlib
for name in ("torch", "triton", "torch_geometric", "faiss", "nlgraph"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')} ({module.__file__})")
    except Exception as exc:
        print(f"{name}: not importable ({type(exc).__name__}: {exc})")
import torch
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(), "CUDA", torch.version.cuda)
from nlgraph.ops import KERNELS
print("KERNELS:", ", ".join(KERNELS))
PY
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible to $PYTHON: nothing to check here"
    exit 2
fi

section "[2] CUDA tests (timeout ${TEST_TIMEOUT}s)"
tests=()
for f in tests/test_cuda.py tests/ops/test_triton_kernel.py tests/graphs/test_triton_knn.py; do
    if [ -f "$f" ]; then tests+=("$f"); else echo "skipping $f: not in this checkout"; fi
done
# -p no:cacheprovider: the tree may be read-only; -o addopts=: no doctest collection of src/.
timeout "$TEST_TIMEOUT" "$PYTHON" -m pytest -q -rfEs -p no:cacheprovider -o addopts= \
    "${tests[@]}" 2>&1 | tee "$LOGS/gpu_tests.log"
rc=$?
echo "pytest exit status: $rc"
[ "$rc" -eq 0 ] || status=1

section "[3] benchmarks/gpu.py (timeout ${BENCH_TIMEOUT}s)"
args=()
[ "${QUICK:-0}" = 1 ] && args+=(--quick)
timeout "$BENCH_TIMEOUT" "$PYTHON" benchmarks/gpu.py "${args[@]}" 2>&1 | tee "$LOGS/gpu_bench.log"
rc=$?
echo "benchmark exit status: $rc"
[ "$rc" -eq 0 ] || status=1
if [ -n "${OUT:-}" ] && [ -f benchmarks/results/gpu.md ]; then
    cp benchmarks/results/gpu.md "$OUT/gpu.md"
fi

section "done (status $status)"
[ -f benchmarks/results/gpu.md ] && sed -n '/^## Targets/,/^## Run/p' benchmarks/results/gpu.md
exit "$status"
