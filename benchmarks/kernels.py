"""Aggregation kernels on one sparse graph: where ``backend="auto"``'s choices come from.

For N in {256, 1024, 4096, 16384, 65536} queries = keys, a random RegularGraph with k=16 keys
per query (uniform, shared by the batch), B=1, C'=32, embedded Gaussian, float32, this runs
:func:`nlgraph.nonlocal_aggregate` through every kernel that supports the graph: ``regular``
(ELL gather, chunked recomputing backward), ``coo`` (per-edge gather, segment softmax,
``index_add``), ``csr`` (SDDMM, row softmax, SpMM with sparse-matrix backward), and ``dense``
on the full graph as the all-pairs reference; forward (no_grad) and forward+backward: median time
(interleaved in this process) and peak CPU tensor memory.

Run ``python benchmarks/kernels.py [--quick] [--repeat R] [--out FILE]``; results go to
``benchmarks/results/kernels.md``. Pin the allocator for stable numbers:
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from nlgraph import nonlocal_aggregate  # noqa: E402
from nlgraph._measure import memory_stats  # noqa: E402
from nlgraph.graphs import RegularGraph  # noqa: E402

K, CHANNELS = 16, 32
SIZES = (256, 1024, 4096, 16384, 65536)
QUICK_SIZES = (256,)
SPARSE = ("regular", "coo", "csr")
#: Largest N for the dense all-pairs reference (its training step is O(N²)).
MAX_DENSE = 16384


def cases(n: int, backward: bool) -> dict[str, Callable[[], Any]]:
    """label -> one call (forward, or forward+backward) for every kernel at size ``n``."""
    gen = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(1, n, CHANNELS, generator=gen) for _ in range(3))
    for t in (q, k, v):
        t.requires_grad_(backward)
    graph = RegularGraph(torch.randint(0, n, (1, n, K), generator=gen), n)
    grad = torch.randn(1, n, CHANNELS, generator=gen)
    runs: list[tuple[str, Any, str]] = [(name, graph, name) for name in SPARSE]
    if n <= MAX_DENSE:
        runs.append(("dense (all pairs)", "full", "dense"))
    fns = {}
    for label, g, backend in runs:

        def fn(g: Any = g, backend: str = backend) -> None:
            if backward:
                q.grad = k.grad = v.grad = None
                nonlocal_aggregate(q, k, v, "embedded_gaussian", graph=g, backend=backend).backward(
                    grad
                )
            else:
                with torch.no_grad():
                    nonlocal_aggregate(q, k, v, "embedded_gaussian", graph=g, backend=backend)

        fns[label] = fn
    return fns


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the results and write the markdown file. Returns 0."""
    parser = _common.make_parser("kernels", __doc__.split("\n", 1)[0])
    args = parser.parse_args(argv)
    repeat = 2 if args.quick else args.repeat
    info = _common.machine_info()
    print("\n".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    sections = []
    best: dict[tuple[str, int], str] = {}
    for backward in (False, True):
        rows = []
        for n in QUICK_SIZES if args.quick else SIZES:
            fns = cases(n, backward)
            times = _common.interleaved_medians(fns, warmup=args.warmup, repeat=repeat)
            sparse_best = min((t, name) for name, t in times.items() if name in SPARSE)
            best[("train" if backward else "forward", n)] = sparse_best[1]
            for name, fn in fns.items():
                peak = memory_stats(fn).peak_bytes
                ratio = times[name] / sparse_best[0]
                rows.append([n, name, _common.fmt_time(times[name]), _common.fmt_ratio(ratio),
                             _common.fmt_bytes(peak)])  # fmt: skip
                print(f"N={n:<6} {'train' if backward else 'forward':<7} {name:<18} "
                      f"{_common.fmt_time(times[name]):>9} peak {_common.fmt_bytes(peak):>9}",
                      flush=True)  # fmt: skip
        heading = "Forward + backward" if backward else "Forward (no_grad)"
        table = _common.markdown_table(
            ["N", "kernel", "time", "time / fastest sparse", "peak memory"], rows
        )
        sections.append((heading, table))
    summary = [
        f"- {pass_} at N={n}: fastest sparse kernel `{name}`" for (pass_, n), name in best.items()
    ]
    setup = (
        f"One random RegularGraph, k={K} uniform keys per query, B=1, N'=N, C'={CHANNELS}, "
        "embedded Gaussian, float32; `dense (all pairs)` is the full graph on the dense kernel "
        f"(not the same graph: the cost of attending to everything; up to N={MAX_DENSE})."
    )
    sections.insert(0, ("Setup", setup))
    sections.append(("Fastest sparse kernel", "\n".join(summary)))
    out = _common.write_results(
        args.out, "Aggregation kernels on a k=16 graph", sections,
        _common.command_line("kernels", argv), info,
    )  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
