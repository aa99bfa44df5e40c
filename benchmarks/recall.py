"""Recall and build time of the clustered (IVF) k-NN search against the exact one.

For N in {4096, 16384, 65536, 262144} queries = keys (square maps 64² … 512²), C′ in {32, 64},
k in {8, 16, 32} and three kinds of embeddings (``benchmarks/_embeddings.py``: a random-net
feature map through θ/φ, a Gaussian mixture, isotropic noise), float32, B=1, this builds
``KNN(k, metric="logit", search="ivf")`` (default ``n_clusters``/``n_probe``) and reports

- recall@k (:func:`nlgraph.graphs.knn_recall`): the mean over queries of the fraction of the
  exact k nearest keys the IVF graph finds, on a random sample of queries (2048 by default,
  every query when N is smaller) scored exactly against ALL N keys with ``search="exact"``;
- the fraction of the k slots the IVF graph filled (its mask; 1 without one);
- the IVF build time (median; the untimed build whose recall is measured comes first, except
  at N=262144 where that one build is the timing) and its peak CPU tensor memory
  (:func:`nlgraph._measure.memory_stats`; for k=16 only at N=262144);
- the exact build time of the whole graph, interleaved with the IVF runs, up to N=65536; at
  N=262144 it is estimated from N=65536 (same kind, C′, k) by N² scaling (a full scan) and
  marked "est.";

and a sweep of ``n_probe`` at N=65536, C′=32, k=16 on the feature map (recall against time).
Targets (issue 11; the noise kind has none): at N=65536, C′=32, k=16 on the feature map, the
IVF build ≥ 10× faster than the exact one with recall@16 ≥ 0.90.

Run ``python benchmarks/recall.py [--quick] [--repeat R] [--sample S] [--out FILE]``; results
go to ``benchmarks/results/recall.md``. Pin the allocator for stable numbers:
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import _embeddings  # noqa: E402

from nlgraph._measure import memory_stats  # noqa: E402
from nlgraph.graphs import KNN, RegularGraph  # noqa: E402

SIZES = (4096, 16384, 65536, 262144)
CHANNELS = (32, 64)
KS = (8, 16, 32)
QUICK_SIZES, QUICK_CHANNELS, QUICK_KS = (1024,), (32,), (8, 16)
METRIC = "logit"
#: Queries whose exact neighbours (against all keys) the recall is measured on.
SAMPLE, QUICK_SAMPLE = 2048, 256
#: Largest N at which the exact whole-graph build is timed (above: estimated by N² scaling).
MAX_EXACT = 65536
#: (IVF, exact) timed runs at large N: exact once at 65536; at 262144 (0, 0): the IVF time is
#: that of its first build (the one whose recall is measured; a warm-up is noise at seconds).
LARGE_CAPS = {65536: (2, 1), 262144: (0, 0)}
#: From this N on the exact build is timed on the first kind only (the feature map) and its
#: time reused for the others: a full scan's cost does not depend on the data.
SHARED_EXACT = 65536
#: Above MAX_EXACT the IVF peak memory is profiled for this k only (one more build each).
PEAK_K_LARGE = 16
#: The n_probe sweep: (N, C′, k, kind) and the n_probe values (``None``: the default).
SWEEP = (65536, 32, 16, "feature_map")
QUICK_SWEEP = (1024, 32, 16, "feature_map")
SWEEP_PROBES: tuple[int | None, ...] = (None, 1, 2, 4, 8, 16, 32, 64)
QUICK_SWEEP_PROBES: tuple[int | None, ...] = (None, 1, 2, 4)
#: The issue-11 target case and thresholds.
TARGET = (65536, 32, 16, "feature_map")
TARGET_SPEEDUP, TARGET_RECALL = 10.0, 0.90
KIND_TITLES = {
    "feature_map": "Feature map (random conv net, θ/φ)",
    "mixture": "Gaussian mixture (64 components)",
    "noise": "Isotropic Gaussian noise (worst case, no target)",
}


@dataclass
class Case:
    """One (kind, N, C′, k, n_probe) measurement."""

    kind: str
    n: int
    channels: int
    k: int
    n_probe: int | None
    recall: float
    filled: float
    sample: int
    ivf_time: float
    ivf_peak: int | None
    exact_time: float | None
    exact_estimated: bool = False
    exact_shared: bool = False

    @property
    def probes(self) -> str:
        """``n_probe / n_clusters`` as the search resolves them (``?`` if unknown)."""
        try:
            from nlgraph.graphs.ivf import default_clusters, default_probe
        except ImportError:
            return "?"
        lists = default_clusters(self.n)
        return f"{self.n_probe or default_probe(lists, k=self.k, num_keys=self.n)}/{lists}"

    @property
    def speedup(self) -> float | None:
        return None if self.exact_time is None else self.exact_time / self.ivf_time


def ivf_available() -> str:
    """Why the IVF search cannot be benchmarked here ('' when it can)."""
    try:
        from nlgraph.graphs import knn_recall  # noqa: F401

        KNN(16, search="ivf")
    except Exception as exc:  # not landed yet, or broken
        return f"{type(exc).__name__}: {exc}"
    return ""


def ivf_spec(k: int, n_probe: int | None = None) -> KNN:
    """``KNN(k, metric="logit", search="ivf")``, with ``n_probe`` when given."""
    extra = {} if n_probe is None else {"n_probe": n_probe}
    return KNN(k, metric=METRIC, search="ivf", **extra)


def exact_spec(k: int) -> KNN:
    return KNN(k, metric=METRIC, search="exact")


def sample_rows(n: int, sample: int, seed: int = 1) -> torch.Tensor:
    """Sorted indices of ``sample`` random queries (all of them when N ≤ sample)."""
    if n <= sample:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:sample].sort().values


def rows_of(graph: RegularGraph, rows: torch.Tensor) -> RegularGraph:
    """The sub-graph of the queries ``rows`` (same keys)."""
    mask = None if graph.mask is None else graph.mask[:, rows]
    return RegularGraph(graph.index[:, rows], graph.num_keys, mask)


def recall_of(
    graph: Any, query: torch.Tensor, key: torch.Tensor, k: int, rows: torch.Tensor
) -> tuple[float, float]:
    """(recall@k on the queries ``rows`` against all keys, fraction of slots filled)."""
    from nlgraph.graphs import knn_recall

    exact = exact_spec(k).build(query[:, rows], key)
    approx = rows_of(graph, rows)
    filled = 1.0 if approx.mask is None else float(approx.mask.float().mean())
    return float(knn_recall(approx, exact)), filled


def timed_runs(fns: dict[str, tuple[Callable[[], Any], int]]) -> dict[str, float]:
    """Median seconds of each function, run in turn while it has runs left (no warm-up here)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(max(runs for _, runs in fns.values())):
        for name, (fn, runs) in fns.items():
            if i < runs:
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items() if t}


def measure(
    kind: str,
    query: torch.Tensor,
    key: torch.Tensor,
    k: int,
    repeat: int,
    sample: int,
    n_probe: int | None = None,
    exact: bool = True,
    peak: bool = True,
) -> Case:
    """Recall, IVF build time and peak, and (when ``exact``) the exact build time, of one case."""
    n = query.shape[1]
    ivf, ref = ivf_spec(k, n_probe), exact_spec(k)
    rows = sample_rows(n, sample)
    start = time.perf_counter()
    graph = ivf.build(query, key)  # also the IVF warm-up
    first = time.perf_counter() - start
    recall, filled = recall_of(graph, query, key, k, rows)
    del graph
    ivf_runs, exact_runs = LARGE_CAPS.get(n, (repeat, repeat))
    ivf_runs, exact_runs = min(ivf_runs, repeat), min(exact_runs, repeat)
    fns: dict[str, tuple[Callable[[], Any], int]] = {
        "ivf": (lambda: ivf.build(query, key), ivf_runs)
    }
    if exact and n <= MAX_EXACT and exact_runs > 0:
        fns["exact"] = (lambda: ref.build(query, key), exact_runs)
    times = timed_runs(fns)
    times.setdefault("ivf", first)
    peak = peak and (n <= MAX_EXACT or k == PEAK_K_LARGE)
    ivf_peak = memory_stats(fns["ivf"][0]).peak_bytes if peak else None
    return Case(kind, n, query.shape[2], k, n_probe, recall, filled, len(rows), times["ivf"],
                ivf_peak, times.get("exact"))  # fmt: skip


def estimate_exact(cases: Sequence[Case]) -> None:
    """Fill the exact time above :data:`MAX_EXACT` from the same (kind, C′, k) at MAX_EXACT."""
    for c in cases:
        if c.exact_time is None and c.n > MAX_EXACT and c.n_probe is None:
            base = next((b for b in cases if (b.kind, b.n, b.channels, b.k, b.n_probe)
                         == (c.kind, MAX_EXACT, c.channels, c.k, None)), None)  # fmt: skip
            if base is not None and base.exact_time is not None:
                c.exact_time = base.exact_time * (c.n / MAX_EXACT) ** 2
                c.exact_estimated = True


def fmt_exact(c: Case) -> str:
    if c.exact_time is None:
        return "—"
    return ("≈ " if c.exact_estimated else "") + _common.fmt_time(c.exact_time)


def fmt_speedup(c: Case) -> str:
    s = c.speedup
    return "—" if s is None else ("≈ " if c.exact_estimated else "") + _common.fmt_ratio(s)


def kind_table(cases: Sequence[Case]) -> str:
    headers = ["N", "C′", "k", "probes", "recall@k", "filled", "ivf build", "ivf peak",
               "exact build", "exact / ivf"]  # fmt: skip
    rows = [[c.n, c.channels, c.k, c.probes, f"{c.recall:.3f}", f"{c.filled:.3f}",
             _common.fmt_time(c.ivf_time),
             "—" if c.ivf_peak is None else _common.fmt_bytes(c.ivf_peak),
             fmt_exact(c), fmt_speedup(c)] for c in cases]  # fmt: skip
    return _common.markdown_table(headers, rows)


def sweep_table(cases: Sequence[Case]) -> str:
    headers = ["n_probe", "probes", "recall@k", "filled", "ivf build", "exact / ivf"]
    rows = [["default" if c.n_probe is None else c.n_probe, c.probes, f"{c.recall:.3f}", f"{c.filled:.3f}",
             _common.fmt_time(c.ivf_time), fmt_speedup(c)] for c in cases]  # fmt: skip
    return _common.markdown_table(headers, rows)


def target_lines(cases: Sequence[Case]) -> list[str]:
    """The issue-11 recall/speed target at :data:`TARGET`, PASS/FAIL or NOT MEASURED."""
    n, channels, k, kind = TARGET
    name = (f"KNN({k}, search='ivf') build ≥ {TARGET_SPEEDUP:.0f}× faster than the exact build "
            f"with recall@{k} ≥ {TARGET_RECALL} (N={n}, C′={channels}, {kind})")  # fmt: skip
    c = next((c for c in cases if (c.n, c.channels, c.k, c.kind, c.n_probe)
              == (n, channels, k, kind, None)), None)  # fmt: skip
    if c is None or c.speedup is None:
        return [f"- NOT MEASURED: {name}"]
    ok = c.speedup >= TARGET_SPEEDUP and c.recall >= TARGET_RECALL
    return [f"- {'PASS' if ok else 'FAIL'}: {name}: {_common.fmt_time(c.ivf_time)} vs "
            f"{_common.fmt_time(c.exact_time)} = {c.speedup:.1f}× faster, recall@{k} "
            f"{c.recall:.3f} on {c.sample} queries"]  # fmt: skip


def print_case(c: Case) -> None:
    probe = "default" if c.n_probe is None else c.n_probe
    print(f"{c.kind:<11} N={c.n:<6} C'={c.channels:<2} k={c.k:<2} n_probe={probe:<7} "
          f"recall {c.recall:.3f} filled {c.filled:.3f} ivf {_common.fmt_time(c.ivf_time):>9} "
          f"exact {fmt_exact(c):>11}", flush=True)  # fmt: skip


def command_line(area: str, argv: Sequence[str] | None) -> str:
    """:func:`_common.command_line`, with ``OMP_NUM_THREADS`` in front when it is set (a run
    pinned to fewer threads than cores, e.g. while other work shares the machine)."""
    cmd = _common.command_line(area, argv)
    threads = os.environ.get("OMP_NUM_THREADS")
    return f"OMP_NUM_THREADS={threads} {cmd}" if threads else cmd


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the results and write the markdown file. Returns 0 (2 when the
    IVF search is not available)."""
    parser = _common.make_parser("recall", __doc__.split("\n", 1)[0])
    parser.add_argument("--sample", type=int, default=None,
                        help=f"queries the recall is measured on (default {SAMPLE}; "
                             f"{QUICK_SAMPLE} with --quick)")  # fmt: skip
    args = parser.parse_args(argv)
    why = ivf_available()
    if why:
        print(f"KNN(search='ivf') / knn_recall unavailable: {why}", file=sys.stderr)
        return 2
    repeat = 2 if args.quick else args.repeat
    sample = args.sample or (QUICK_SAMPLE if args.quick else SAMPLE)
    sizes, channels_list, ks = (
        (QUICK_SIZES, QUICK_CHANNELS, QUICK_KS) if args.quick else (SIZES, CHANNELS, KS)
    )
    sweep, probes = (QUICK_SWEEP, QUICK_SWEEP_PROBES) if args.quick else (SWEEP, SWEEP_PROBES)
    info = _common.machine_info()
    print("\n".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    cases: list[Case] = []
    sweep_cases: list[Case] = []
    gen_times: list[str] = []
    for kind in _embeddings.KINDS:
        for n in sizes:
            for channels in channels_list:
                start = time.perf_counter()
                query, key = _embeddings.embeddings(kind, n, channels, seed=0)
                gen_times.append(f"{kind} N={n} C′={channels}: {time.perf_counter() - start:.2f} s")
                for k in ks:
                    same = [c for c in cases if (c.n, c.channels, c.k, c.n_probe)
                            == (n, channels, k, None)]  # fmt: skip
                    shared = same[0] if same and n >= SHARED_EXACT else None
                    cases.append(measure(kind, query, key, k, repeat, sample,
                                         exact=shared is None))  # fmt: skip
                    if shared is not None:
                        cases[-1].exact_time = shared.exact_time
                        cases[-1].exact_shared = True
                    print_case(cases[-1])
                if (n, channels, kind) == (sweep[0], sweep[1], sweep[3]):
                    for n_probe in probes:
                        base = next(c for c in cases if (c.kind, c.n, c.channels, c.k) ==
                                    (kind, n, channels, sweep[2]))  # fmt: skip
                        if n_probe is None:
                            c = base
                        else:
                            try:
                                c = measure(kind, query, key, sweep[2], repeat, sample, n_probe,
                                            exact=False, peak=False)  # fmt: skip
                            except ValueError as exc:  # e.g. n_probe above n_clusters
                                print(f"n_probe={n_probe}: {exc}", flush=True)
                                continue
                            c.exact_time = base.exact_time
                        sweep_cases.append(c)
                        print_case(c)
                del query, key
    estimate_exact(cases)
    n_sample = max(c.sample for c in cases)
    notes = [
        f"- recall@k: mean over a random sample of {n_sample} queries (every query where N ≤ "
        f"{n_sample}) of |ivf ∩ exact| / k, the exact neighbours found by a full scan of all N "
        "keys (`search='exact'`); `filled`: the fraction of the k slots the IVF graph filled.",
        f"- metric `{METRIC}` (largest q·k, the embedded-Gaussian logit), default `n_clusters` "
        "and `n_probe` (`probes`: lists scanned per query / k-means lists L); the IVF build "
        "includes its clustering, from a cold start every call (a direct `build`, no module "
        "to warm-start from: 8 Lloyd iterations on a sample of 64·L keys).",
        f"- timings: median of {repeat} runs after one untimed IVF build (the one whose recall "
        f"is measured), IVF and exact interleaved; at N=65536 the exact build runs once and "
        f"the IVF {min(repeat, LARGE_CAPS[65536][0])} times; at N=262144 the IVF time is "
        "that of one build, the first (whose recall is measured).",
        f"- exact build at N={SHARED_EXACT}: timed on the feature map only, the same time "
        "used for the other kinds (a full scan: its cost does not depend on the data).",
        f"- exact build at N > {MAX_EXACT}: not run; ≈ estimated from N={MAX_EXACT} (same kind, "
        "C′, k) by N² scaling (a full scan: N·N′·C′ multiply-adds and an N′-wide top-k per "
        "query).",
        "- ivf peak: peak CPU tensor memory of one IVF build (profiler allocator events), "
        f"embeddings excluded; above N={MAX_EXACT} profiled for k={PEAK_K_LARGE} only.",
    ]
    sections = [
        ("Setup",
         "Queries = keys positions, B=1, float32; embeddings from `benchmarks/_embeddings.py` "
         "(seed 0): the feature map is a synthetic scene through a fixed random conv net "
         "(64 channels) and the θ/φ projections of `NonLocalBlock2d(64, C′)`; the mixture has "
         "64 components; the noise is isotropic. Generation times: "
         + "; ".join(gen_times) + "."),
    ]  # fmt: skip
    for kind in _embeddings.KINDS:
        rows = [c for c in cases if c.kind == kind]
        if rows:
            sections.append((KIND_TITLES[kind], kind_table(rows)))
    sections.append(("Notes", "\n".join(notes)))
    if sweep_cases:
        n, channels, k, kind = sweep
        sections.append((
            f"n_probe sweep (N={n}, C′={channels}, k={k}, {kind})",
            f"Recall@{k} against IVF build time for explicit `n_probe` (`default`: the spec's "
            f"own choice); exact / ivf uses the exact build time of the table above. Same "
            f"query sample and timing rules.\n\n" + sweep_table(sweep_cases),
        ))  # fmt: skip
    sections.append(("Targets", "\n".join(target_lines(cases)
                     + ["- the noise kind is reported with no target (nothing to cluster)."])))  # fmt: skip
    info["load average (1 min) at end"] = _common.load_average()
    out = _common.write_results(args.out, "k-NN graphs: clustered (IVF) search vs exact",
                                sections, command_line("recall", argv), info)  # fmt: skip
    for heading, body in sections[1:]:
        print(f"\n## {heading}\n\n{body}")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
