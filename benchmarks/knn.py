"""Exact k-NN graph builders: nlgraph's blocked builder against ``torch.cdist`` + ``topk``.

For N in {4096, 8192, 16384} (d=64, k=16, float32, one graph, self-loops left out) this
measures :func:`nlgraph.graphs.knn.knn_graph` (``backend="torch"``, block 1024 rows; and
``backend="faiss"`` when faiss is importable) and the all-pairs reference
``torch.cdist(x, x).topk(k + 1, largest=False)``: median time, interleaved in this process,
and peak CPU tensor memory plus the largest single allocation (profiler memory events).

Run ``python benchmarks/knn.py [--quick] [--repeat R] [--out FILE]``; results go to
``benchmarks/results/knn.md``. Pin the allocator for stable numbers:
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from nlgraph._measure import memory_stats  # noqa: E402
from nlgraph.graphs.knn import knn_graph  # noqa: E402

DIM, K, BLOCK = 64, 16, 1024
SIZES = (4096, 8192, 16384)
QUICK_SIZES = (1024,)


def cdist_topk(x: torch.Tensor) -> torch.Tensor:
    """The all-pairs reference: an N×N distance matrix, then the k + 1 smallest per row."""
    return torch.cdist(x, x).topk(K + 1, dim=1, largest=False).indices


def methods(x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """Label -> call, for the builders compared on ``x``."""
    fns: dict[str, Callable[[], Any]] = {
        "nlgraph (torch)": lambda: knn_graph(x, K, block_size=BLOCK),
        "cdist + topk": lambda: cdist_topk(x),
    }
    if importlib.util.find_spec("faiss") is not None:
        fns["nlgraph (faiss)"] = lambda: knn_graph(x, K, block_size=BLOCK, backend="faiss")
    return fns


def main(argv: Sequence[str] | None = None) -> int:
    parser = _common.make_parser("knn", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    repeat = 2 if args.quick else args.repeat
    rows = []
    for n in QUICK_SIZES if args.quick else SIZES:
        torch.manual_seed(0)
        x = torch.randn(n, DIM)
        fns = methods(x)
        times = _common.interleaved_medians(fns, warmup=args.warmup, repeat=repeat)
        base = times["cdist + topk"]
        for name, fn in fns.items():
            mem = memory_stats(fn)
            rows.append(
                [
                    n,
                    name,
                    _common.fmt_time(times[name]),
                    _common.fmt_ratio(base / times[name]),
                    _common.fmt_bytes(mem.peak_bytes),
                    _common.fmt_bytes(mem.largest_bytes),
                ]
            )
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
    headers = ["N", "method", "time", "speed-up vs cdist", "peak memory", "largest alloc"]
    body = (
        f"d={DIM}, k={K}, float32, one graph, `loop=False`, block {BLOCK} query rows; "
        "speed-up = cdist+topk time / method time (higher is faster).\n\n"
        + _common.markdown_table(headers, rows)
    )
    out = _common.write_results(
        args.out, "k-NN graph builders", [("Results", body)], _common.command_line("knn", argv)
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
