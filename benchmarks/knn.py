"""Exact k-NN graph builders: nlgraph's blocked builder against ``torch.cdist`` + ``topk``.

For N in {4096, 8192, 16384, 32768, 65536} (d=64, k=16, float32, one graph, self-loops left
out) this measures :func:`nlgraph.graphs.knn_graph` (``backend="torch"``, default block
size: about a 16 MiB score buffer; and
``backend="faiss"`` when faiss is importable) and the all-pairs reference
``torch.cdist(x, x).topk(k + 1, largest=False)`` (skipped at N=65536, where its N×N matrix
alone is 16 GiB): median time, interleaved in this process, and peak CPU tensor memory plus the
largest single allocation (profiler memory events). Targets (issue 4): at least as fast as
cdist+topk at N=8192 with at most 1/8 of its peak memory; N=65536 in under 1 GiB.

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
from nlgraph.graphs.point_knn import knn_graph  # noqa: E402

DIM, K = 64, 16
SIZES = (4096, 8192, 16384, 32768, 65536)
#: Largest N at which the all-pairs baseline runs (its N×N float32 matrix: 4 GiB).
MAX_CDIST = 32768
QUICK_SIZES = (1024,)


def cdist_topk(x: torch.Tensor) -> torch.Tensor:
    """The all-pairs reference: an N×N distance matrix, then the k + 1 smallest per row."""
    return torch.cdist(x, x).topk(K + 1, dim=1, largest=False).indices


def methods(x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """Label -> call, for the builders compared on ``x``."""
    fns: dict[str, Callable[[], Any]] = {"nlgraph (torch)": lambda: knn_graph(x, K)}
    if x.shape[0] <= MAX_CDIST:
        fns["cdist + topk"] = lambda: cdist_topk(x)
    if importlib.util.find_spec("faiss") is not None:
        fns["nlgraph (faiss)"] = lambda: knn_graph(x, K, backend="faiss")
    return fns


def main(argv: Sequence[str] | None = None) -> int:
    parser = _common.make_parser("knn", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    repeat = 2 if args.quick else args.repeat
    rows, stats = [], {}
    for n in QUICK_SIZES if args.quick else SIZES:
        torch.manual_seed(0)
        x = torch.randn(n, DIM)
        fns = methods(x)
        times = _common.interleaved_medians(fns, warmup=args.warmup, repeat=repeat)
        base = times.get("cdist + topk")
        for name, fn in fns.items():
            mem = memory_stats(fn)
            stats[n, name] = (times[name], mem.peak_bytes)
            rows.append(
                [
                    n,
                    name,
                    _common.fmt_time(times[name]),
                    _common.fmt_ratio(base / times[name]) if base else "—",
                    _common.fmt_bytes(mem.peak_bytes),
                    _common.fmt_bytes(mem.largest_bytes),
                ]
            )
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
    targets = []
    t, m = stats.get((8192, "nlgraph (torch)"), (None, None)), stats.get((8192, "cdist + topk"))
    if t[0] is not None and m is not None:
        ok = t[0] <= m[0] and t[1] * 8 <= m[1]
        targets.append(
            f"- {'PASS' if ok else 'FAIL'}: N=8192 builder time ≤ cdist+topk and peak ≤ 1/8: "
            f"{_common.fmt_time(t[0])} vs {_common.fmt_time(m[0])}, "
            f"{_common.fmt_bytes(t[1])} vs {_common.fmt_bytes(m[1])} (1/{m[1] / t[1]:.1f})"
        )
    big = stats.get((65536, "nlgraph (torch)"))
    if big is not None:
        targets.append(
            f"- {'PASS' if big[1] < 2**30 else 'FAIL'}: N=65536 under 1 GiB peak: "
            f"{_common.fmt_bytes(big[1])} in {_common.fmt_time(big[0])}"
        )
    headers = ["N", "method", "time", "speed-up vs cdist", "peak memory", "largest alloc"]
    body = (
        f"d={DIM}, k={K}, float32, one graph, `loop=False`, default block size; "
        "speed-up = cdist+topk time / method time (higher is faster).\n\n"
        + _common.markdown_table(headers, rows)
        + ("\n\n## Targets\n\n" + "\n".join(targets) if targets else "")
    )
    out = _common.write_results(
        args.out, "k-NN graph builders", [("Results", body)], _common.command_line("knn", argv)
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
