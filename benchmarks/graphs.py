"""Sparse non-local blocks: k-NN and window graphs against the dense block, and NonLocalConv.

Side by side in one process (float32, B=1, C=64, C'=32, embedded Gaussian, ``sub_sample=False``,
2-D square maps with N in {1024, 4096, 16384, 65536, 262144}; the input is the random-net
feature map of a synthetic scene, ``benchmarks/_embeddings.py``), :class:`nlgraph.NonLocalBlock2d`
holding the same weights with

- ``graph="full"``: the dense block (skipped at a size where its training step, estimated from
  the largest measured size by N² scaling, would exceed :data:`DENSE_BUDGET_S`);
- ``graph=KNN(16)``: the exact k-NN graph (``search="exact"``) built inside every call (its
  build is in the time; skipped like the dense block, by the same budget: at N=262144);
- ``graph=KNN(16, search="ivf")``: the clustered (IVF) approximate k-NN graph, rebuilt inside
  every call (clustering included);
- KNN(16) reused: the exact graph built once outside the timed call, ``forward(x, graph=g)``
  (skipped with KNN(16));
- ``graph=Window(2)``: a 5×5 window (k = 25, fewer at the borders).

For each: a training step (train mode, forward + backward of a fixed random upstream gradient
of z, back to the input and every parameter, as in ``benchmarks/dense.py``) and inference
(``no_grad``, eval): median time (interleaved) and peak CPU tensor memory
(:func:`nlgraph._measure.memory_stats`), with the ratios to the dense block. The k-NN builder
rows come from ``benchmarks/knn.py``, run in this process (``--skip-knn`` embeds its last
results file instead). The k-NN build section times ``KNN(16, search="ivf").build`` against the
exact build on θ/φ embeddings of the feature map (C'=32; N=16384, 65536, and 262144 where the
exact build is not run and the recall is measured on a sample of queries) with recall@16
(:func:`nlgraph.graphs.knn_recall`). NonLocalConv is timed against
``torch_geometric.nn.TransformerConv`` on one random graph (N=16384 nodes, 16 in-edges each,
C=64, C'=32) when ``nlgraph.nn.nonlocal_conv`` is importable. Targets (issue 4): k=16 training
step at N=16384 ≤ 0.3× the dense block's time, graph build included; k=16 training step at
N=65536 under 2 GiB peak; NonLocalConv ≥ 1.5× faster than TransformerConv forward+backward.
Targets (issue 11): the IVF build ≥ 10× faster than the exact one at N=65536 (C'=32, k=16,
feature map) with recall@16 ≥ 0.90; the IVF build at N=262144 under 1 GiB peak; the IVF block's
training step ≤ 0.10× the dense one at N=65536 and ≤ 0.25× at N=16384, its inference ≤ 0.5×
at both, and its training step at N=262144 under 2 GiB peak.

Run ``python benchmarks/graphs.py [--quick] [--repeat R] [--skip-knn] [--out FILE]``; results
go to ``benchmarks/results/graphs.md``. Pin the allocator for stable numbers:
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776``.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import _embeddings  # noqa: E402
import knn as knn_bench  # noqa: E402

from nlgraph import NonLocalBlock2d  # noqa: E402
from nlgraph._measure import memory_stats  # noqa: E402
from nlgraph.graphs import KNN, RegularGraph, Window  # noqa: E402

CHANNELS, INTER, K, RADIUS = 64, 32, 16, 2
SIDES = (32, 64, 128, 256, 512)
QUICK_SIDES = (32,)
#: Timed runs are capped at this many at N >= 65536 (each dense step there takes seconds).
LARGE_N, LARGE_REPEAT = 65536, 3
#: The dense block (and the exact k-NN ones) are skipped where the estimated training step
#: exceeds this (seconds).
DENSE_BUDGET_S = 60.0
IVF = f"KNN({K}, ivf)"
METHODS = ("dense", f"KNN({K})", IVF, f"KNN({K}) reused", f"Window({RADIUS})")
#: The methods whose cost grows as N² (skipped above the budget): dense, exact k-NN built inside
#: the call, and the exact graph reused (its one build outside the call costs as much).
QUADRATIC = {"dense": ("dense",), f"KNN({K})": (f"KNN({K})", f"KNN({K}) reused")}
#: The exact k-NN blocks never run above this N (a full scan per call: minutes at 262144).
MAX_EXACT_KNN = 65536
#: The k-NN build section: feature-map sides, the exact build's largest N, the recall sample.
BUILD_SIDES, QUICK_BUILD_SIDES = (128, 256, 512), (32,)
BUILD_MAX_EXACT, BUILD_SAMPLE = 65536, 2048
PASSES = ("train", "inference")
#: NonLocalConv vs TransformerConv: nodes, in-edges per node.
CONV_NODES, CONV_K = 16384, 16


@dataclass
class Result:
    """One (N, method, pass) measurement."""

    n: int
    method: str
    pass_: str
    time: float
    peak: int


def ivf_unavailable() -> str:
    """Why ``KNN(search="ivf")`` and ``knn_recall`` cannot be measured ('' when they can)."""
    try:
        from nlgraph.graphs import knn_recall  # noqa: F401

        KNN(K, search="ivf")
    except Exception as exc:  # not landed yet, or broken: reported, not raised
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return ""


def exact_knn(k: int = K) -> KNN:
    """The exact k-NN spec (``search="exact"``; plain ``KNN(k)`` before the search existed)."""
    try:
        return KNN(k, search="exact")
    except TypeError:
        return KNN(k)


def feature_input(side: int, seed: int = 0) -> torch.Tensor:
    """(1, 64, side, side) random-net features of a synthetic scene (``_embeddings.py``)."""
    gen = torch.Generator().manual_seed(seed)
    return _embeddings.feature_net(_embeddings.scene(side, gen), gen)


def make_blocks(side: int, seed: int = 0) -> tuple[dict[str, NonLocalBlock2d], torch.Tensor]:
    """The blocks with the dense block's weights, and a (1, C, side, side) feature-map input."""
    torch.manual_seed(seed)
    specs: dict[str, Any] = {
        "dense": "full",
        f"KNN({K})": exact_knn(),
        f"Window({RADIUS})": Window(RADIUS),
    }
    if not ivf_unavailable():
        specs[IVF] = KNN(K, search="ivf")
    dense = NonLocalBlock2d(CHANNELS, INTER, sub_sample=False, zero_init=False)
    blocks = {}
    for name, spec in specs.items():
        block = NonLocalBlock2d(CHANNELS, INTER, sub_sample=False, zero_init=False, graph=spec)
        block.load_state_dict(dense.state_dict())
        blocks[name] = block
    blocks[f"KNN({K}) reused"] = blocks[f"KNN({K})"]
    return blocks, feature_input(side, seed)


def prebuilt_graph(block: NonLocalBlock2d, x: torch.Tensor) -> Any:
    """The block's graph for ``x``, built once (no gradient), to pass as ``forward(x, graph=g)``."""
    with torch.no_grad():
        query, key, _ = block.embed(x)
        return block.build_graph(x, query, key)


def steps(
    blocks: dict[str, NonLocalBlock2d], x: torch.Tensor, pass_: str, names: Sequence[str]
) -> dict[str, Callable[[], Any]]:
    """Label -> call without arguments (gradients reset inside), for each method in ``names``."""
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    fns: dict[str, Callable[[], Any]] = {}
    for name in names:
        block = blocks[name]
        block.train(pass_ == "train")
        graph = prebuilt_graph(block, x) if name.endswith("reused") else None
        if pass_ == "inference":

            def fn(b: NonLocalBlock2d = block, g: Any = graph) -> Any:
                with torch.no_grad():
                    return b(x, graph=g)

        else:
            xg = x.clone().requires_grad_(True)

            def fn(b: NonLocalBlock2d = block, g: Any = graph, xg: torch.Tensor = xg) -> None:
                b.zero_grad(set_to_none=True)
                xg.grad = None
                b(xg, graph=g).backward(grad)

        fns[name] = fn
    return fns


def measure(side: int, pass_: str, warmup: int, repeat: int, skip: Sequence[str]) -> list[Result]:
    """Interleaved median times and profiled peaks of every method (but ``skip``) at one size
    and pass."""
    blocks, x = make_blocks(side)
    names = [m for m in METHODS if m in blocks and m not in skip]
    fns = steps(blocks, x, pass_, names)
    times = _common.interleaved_medians(fns, warmup=warmup, repeat=repeat)
    return [Result(side * side, m, pass_, times[m], memory_stats(fns[m]).peak_bytes) for m in names]


def find(results: Sequence[Result], n: int, method: str, pass_: str) -> Result | None:
    """The result for (N, method, pass), or ``None`` when it was not measured."""
    return next((r for r in results if (r.n, r.method, r.pass_) == (n, method, pass_)), None)


def block_tables(results: Sequence[Result], notes: Sequence[str]) -> list[tuple[str, str]]:
    """One markdown table per pass: time, peak and the ratios to the dense block."""
    f = _common
    headers = ["N", "graph", "time", "time / dense", "peak memory", "peak / dense"]
    sections = []
    for pass_ in PASSES:
        rows = []
        for r in (r for r in results if r.pass_ == pass_):
            d = find(results, r.n, "dense", pass_)
            rows.append([r.n, r.method, f.fmt_time(r.time),
                         f.fmt_ratio(None if d is None else r.time / d.time), f.fmt_bytes(r.peak),
                         f.fmt_ratio(None if d is None else r.peak / max(d.peak, 1))])  # fmt: skip
        if rows:
            title = (
                "Training step (forward + backward, train)"
                if pass_ == "train"
                else "Inference (forward, no_grad, eval)"
            )
            body = f.markdown_table(headers, rows) + ("\n\n" + "\n".join(notes) if notes else "")
            sections.append((title, body))
    return sections


def conv_available() -> tuple[Any, str]:
    """(NonLocalConv class or None, reason when None)."""
    try:
        from nlgraph.nn.nonlocal_conv import NonLocalConv
    except Exception as exc:  # not written yet, or broken: reported, not raised
        return None, f"nlgraph.nn.nonlocal_conv does not import ({type(exc).__name__}: {exc})"
    return NonLocalConv, ""


def measure_conv(warmup: int, repeat: int, nodes: int) -> tuple[list[list[Any]], str]:
    """NonLocalConv vs TransformerConv fwd+bwd on one random graph: (table rows, target line)."""
    name = f"NonLocalConv ≥ 1.5× faster than TransformerConv fwd+bwd (N={nodes}, k={CONV_K})"
    conv_cls, why = conv_available()
    if conv_cls is None:
        return [], f"- NOT MEASURED YET: {name}: {why}"
    try:
        return _conv_rows(conv_cls, warmup, repeat, nodes, name)
    except Exception as exc:  # the layer is young: a crash is reported, not fatal to the run
        return [], f"- NOT MEASURED: {name}: {type(exc).__name__}: {exc}".splitlines()[0]


def _conv_rows(
    conv_cls: Any, warmup: int, repeat: int, nodes: int, name: str
) -> tuple[list[list[Any]], str]:
    from torch_geometric.nn import TransformerConv

    torch.manual_seed(0)
    x = torch.randn(nodes, CHANNELS)
    dst = torch.arange(nodes).repeat_interleave(CONV_K)
    edge_index = torch.stack([torch.randint(0, nodes, (nodes * CONV_K,)), dst])
    layers = {
        "NonLocalConv": conv_cls(CHANNELS, INTER, mode="embedded_gaussian"),
        "TransformerConv": TransformerConv(CHANNELS, INTER, heads=1),
    }
    fns = {}
    for label, layer in layers.items():
        layer.train()
        xg = x.clone().requires_grad_(True)
        with torch.no_grad():
            shape = layer(x, edge_index).shape
        grad = torch.randn(shape, generator=torch.Generator().manual_seed(1))

        def fn(m: torch.nn.Module = layer, xg: torch.Tensor = xg, g: torch.Tensor = grad) -> None:
            m.zero_grad(set_to_none=True)
            xg.grad = None
            m(xg, edge_index).backward(g)

        fns[label] = fn
    times = _common.interleaved_medians(fns, warmup=warmup, repeat=repeat)
    rows = []
    for label, fn in fns.items():
        peak = memory_stats(fn).peak_bytes
        rows.append([label, _common.fmt_time(times[label]), _common.fmt_bytes(peak)])
    speedup = times["TransformerConv"] / times["NonLocalConv"]
    verdict = "PASS" if speedup >= 1.5 else "FAIL"
    return rows, f"- {verdict}: {name}: speed-up {speedup:.2f}×"


def targets(results: Sequence[Result], conv_line: str) -> list[str]:
    """The PASS/FAIL lines of the block targets, then the NonLocalConv line."""
    lines = []
    knn, dense = find(results, 16384, f"KNN({K})", "train"), find(results, 16384, "dense", "train")
    name = f"KNN({K}) training step at N=16384 ≤ 0.3× the dense block's time, graph build included"
    if knn is None or dense is None:
        lines.append(f"- NOT MEASURED: {name}")
    else:
        ratio = knn.time / dense.time
        lines.append(
            f"- {'PASS' if ratio <= 0.3 else 'FAIL'}: {name}: {_common.fmt_time(knn.time)} vs "
            f"{_common.fmt_time(dense.time)} = {ratio:.2f}× ({dense.time / knn.time:.1f}× faster)"
        )
    big = find(results, 65536, f"KNN({K})", "train")
    name = f"KNN({K}) training step at N=65536 under 2 GiB peak"
    if big is None:
        lines.append(f"- NOT MEASURED: {name}")
    else:
        ok = big.peak < 2 * 2**30
        lines.append(f"- {'PASS' if ok else 'FAIL'}: {name}: {_common.fmt_bytes(big.peak)} "
                     f"in {_common.fmt_time(big.time)}")  # fmt: skip
    return lines + [conv_line]


@dataclass
class Build:
    """One k-NN build measurement on the feature map (C'=32, k=16)."""

    n: int
    ivf_time: float
    ivf_peak: int
    recall: float
    sample: int
    exact_time: float | None


def measure_build(side: int, repeat: int) -> Build:
    """IVF vs exact k-NN build on the feature map's θ/φ embeddings (N = side²), and recall@16.

    Up to :data:`BUILD_MAX_EXACT` the exact graph of every query is built (first untimed run:
    the recall reference), then both builds are timed interleaved; above it the exact build is
    not run and the recall is measured on :data:`BUILD_SAMPLE` random queries against all keys.
    """
    from nlgraph.graphs import knn_recall

    n = side * side
    reps = min(repeat, LARGE_REPEAT) if n >= LARGE_N else repeat
    query, key = _embeddings.feature_map_embeddings(n, INTER, seed=0)
    ivf, exact = KNN(K, search="ivf"), exact_knn()
    graph = ivf.build(query, key)  # untimed: the recall's graph and the IVF warm-up
    fns = {"ivf": lambda: ivf.build(query, key)}
    if n <= BUILD_MAX_EXACT:
        recall, sample = float(knn_recall(graph, exact.build(query, key))), n
        fns["exact"] = lambda: exact.build(query, key)
    else:
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(1))[:BUILD_SAMPLE]
        rows = rows.sort().values
        mask = None if graph.mask is None else graph.mask[:, rows]
        approx = RegularGraph(graph.index[:, rows], graph.num_keys, mask)
        recall = float(knn_recall(approx, exact.build(query[:, rows], key)))
        sample = len(rows)
    del graph
    times = _common.interleaved_medians(fns, warmup=0, repeat=reps)
    peak = memory_stats(fns["ivf"]).peak_bytes
    b = Build(n, times["ivf"], peak, recall, sample, times.get("exact"))
    print(f"build N={n:<6} ivf {_common.fmt_time(b.ivf_time):>9} peak "
          f"{_common.fmt_bytes(b.ivf_peak):>9} recall@{K} {b.recall:.3f} exact "
          f"{_common.fmt_time(b.exact_time)}", flush=True)  # fmt: skip
    return b


def build_section(builds: Sequence[Build], why: str) -> str:
    """The IVF vs exact build table (or why it was not measured)."""
    if why:
        return f"not measured: KNN(search='ivf') unavailable ({why})"
    headers = ["N", "ivf build", "ivf peak", "exact build", "exact / ivf", f"recall@{K}",
               "recall on"]  # fmt: skip
    rows = [[b.n, _common.fmt_time(b.ivf_time), _common.fmt_bytes(b.ivf_peak),
             _common.fmt_time(b.exact_time),
             _common.fmt_ratio(None if b.exact_time is None else b.exact_time / b.ivf_time),
             f"{b.recall:.3f}", "all queries" if b.sample == b.n else f"{b.sample} random queries"]
            for b in builds]  # fmt: skip
    return (
        f"`KNN({K}, search='ivf').build(query, key)` (default n_clusters, n_probe; clustering "
        f"included) vs `KNN({K}, search='exact')`, metric `logit`, on the θ/φ embeddings "
        f"(C'={INTER}) of the feature map (`benchmarks/_embeddings.py`, seed 0); median of the "
        f"interleaved runs after one untimed build of each (at most {LARGE_REPEAT} at "
        f"N ≥ {LARGE_N}); peak: one IVF build (profiler allocator events). recall@{K}: mean "
        f"over queries of |ivf ∩ exact| / {K}; above N={BUILD_MAX_EXACT} the exact build is "
        f"not run (a full scan, about 16× the N={BUILD_MAX_EXACT} time at 4× N) and the "
        f"recall is measured on {BUILD_SAMPLE} random queries against all N keys. More kinds, "
        "sizes, C′ and k: [recall.md](recall.md).\n\n" + _common.markdown_table(headers, rows)
    )


def ivf_targets(results: Sequence[Result], builds: Sequence[Build]) -> list[str]:
    """The issue-11 PASS/FAIL lines (``NOT MEASURED`` where the run did not reach them)."""
    f, lines = _common, []
    b = next((b for b in builds if b.n == 65536), None)
    name = (f"KNN({K}, search='ivf') build ≥ 10× faster than the exact build at N=65536 "
            f"(C'={INTER}, k={K}, feature map) with recall@{K} ≥ 0.90")  # fmt: skip
    if b is None or b.exact_time is None:
        lines.append(f"- NOT MEASURED: {name}")
    else:
        speedup = b.exact_time / b.ivf_time
        ok = speedup >= 10 and b.recall >= 0.90
        lines.append(f"- {'PASS' if ok else 'FAIL'}: {name}: {f.fmt_time(b.ivf_time)} vs "
                     f"{f.fmt_time(b.exact_time)} = {speedup:.1f}× faster, recall@{K} "
                     f"{b.recall:.3f}")  # fmt: skip
    b = next((b for b in builds if b.n == 262144), None)
    name = f"KNN({K}, search='ivf') build at N=262144 under 1 GiB peak"
    if b is None:
        lines.append(f"- NOT MEASURED: {name}")
    else:
        lines.append(f"- {'PASS' if b.ivf_peak < 2**30 else 'FAIL'}: {name}: "
                     f"{f.fmt_bytes(b.ivf_peak)} in {f.fmt_time(b.ivf_time)} (recall@{K} "
                     f"{b.recall:.3f} on {b.sample} queries)")  # fmt: skip
    for pass_, n, limit in (("train", 65536, 0.10), ("train", 16384, 0.25),
                            ("inference", 16384, 0.5), ("inference", 65536, 0.5)):  # fmt: skip
        what = "training step" if pass_ == "train" else "inference"
        name = f"{IVF} {what} at N={n} ≤ {limit:.2f}× the dense block's time, graph rebuilt"
        r, d = find(results, n, IVF, pass_), find(results, n, "dense", pass_)
        if r is None or d is None:
            lines.append(f"- NOT MEASURED: {name}")
        else:
            ratio = r.time / d.time
            lines.append(f"- {'PASS' if ratio <= limit else 'FAIL'}: {name}: "
                         f"{f.fmt_time(r.time)} vs {f.fmt_time(d.time)} = {ratio:.3f}× "
                         f"({d.time / r.time:.1f}× faster)")  # fmt: skip
    r = find(results, 262144, IVF, "train")
    name = f"{IVF} training step at N=262144 under 2 GiB peak"
    if r is None:
        lines.append(f"- NOT MEASURED: {name}")
    else:
        lines.append(f"- {'PASS' if r.peak < 2 * 2**30 else 'FAIL'}: {name}: "
                     f"{f.fmt_bytes(r.peak)} in {f.fmt_time(r.time)}")  # fmt: skip
    return lines


def knn_section(args: Any) -> str:
    """The k-NN builder rows: run ``benchmarks/knn.py`` here, or embed its last results file."""
    knn_out = Path(args.out).parent / "knn.md"
    if not args.skip_knn:
        flags = ["--quick"] if args.quick else ["--repeat", str(args.repeat)]
        flags += ["--warmup", str(args.warmup), "--out", str(knn_out)]
        with contextlib.redirect_stdout(io.StringIO()):
            knn_bench.main(flags)
        origin = f"`benchmarks/knn.py {' '.join(flags)}`, run in this process"
    else:
        knn_out = _common.RESULTS_DIR / "knn.md"
        origin = "the last `benchmarks/knn.py` run (`--skip-knn`)"
    if not knn_out.is_file():
        return f"not measured: {knn_out} does not exist (run benchmarks/knn.py)"
    text = knn_out.read_text()
    body = text.split("## Results", 1)[-1].split("## Command", 1)[0].strip()
    body = body.replace("## Targets", "Targets:")
    return f"From {origin}; full file: [knn.md](knn.md).\n\n{body}"


def command_line(area: str, argv: Sequence[str] | None) -> str:
    """:func:`_common.command_line`, with ``OMP_NUM_THREADS`` in front when it is set (a run
    pinned to fewer threads than cores, e.g. while other work shares the machine)."""
    cmd = _common.command_line(area, argv)
    threads = os.environ.get("OMP_NUM_THREADS")
    return f"OMP_NUM_THREADS={threads} {cmd}" if threads else cmd


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the results and write the markdown file. Returns 0."""
    parser = _common.make_parser("graphs", __doc__.split("\n", 1)[0])
    parser.add_argument("--skip-knn", action="store_true",
                        help="embed benchmarks/results/knn.md instead of running knn.py")  # fmt: skip
    args = parser.parse_args(argv)
    repeat = 2 if args.quick else args.repeat
    info = _common.machine_info()
    print("\n".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    results: list[Result] = []
    notes: list[str] = []
    for side in QUICK_SIDES if args.quick else SIDES:
        n = side * side
        reps = min(repeat, LARGE_REPEAT) if n >= LARGE_N else repeat
        if reps != repeat:
            notes.append(f"- N={n}: median of {reps} timed runs (each dense step takes seconds)")
        skip: list[str] = []
        for method, skipped in QUADRATIC.items():
            prev = max((r for r in results if r.method == method and r.pass_ == "train"),
                       key=lambda r: r.n, default=None)  # fmt: skip
            estimate = None if prev is None else prev.time * (n / prev.n) ** 2
            what = " and ".join(skipped)
            if method != "dense" and n > MAX_EXACT_KNN:
                skip += skipped
                notes.append(f"- N={n}: {what} skipped: the exact search runs up to "
                             f"N={MAX_EXACT_KNN}" + ("" if estimate is None else
                             f" (estimated {estimate:.0f} s per training step from N={prev.n} "
                             "by N² scaling)"))  # fmt: skip
            elif estimate is not None and estimate > DENSE_BUDGET_S:
                skip += skipped
                notes.append(f"- N={n}: {what} skipped: the {method} training step, estimated "
                             f"from N={prev.n} by N² scaling, would take {estimate:.0f} s")  # fmt: skip
            elif estimate is not None and estimate > 5:
                notes.append(f"- N={n}: {what} measured (estimated {estimate:.0f} s per training "
                             f"step from N={prev.n} by N² scaling, under {DENSE_BUDGET_S:.0f} s)")  # fmt: skip
        for pass_ in PASSES:
            for r in measure(side, pass_, args.warmup, reps, skip):
                results.append(r)
                print(f"N={r.n:<6} {r.pass_:<9} {r.method:<16} {_common.fmt_time(r.time):>9} "
                      f"peak {_common.fmt_bytes(r.peak):>9}", flush=True)  # fmt: skip
    why = ivf_unavailable()
    if why:
        notes.append(f"- {IVF} not measured: KNN(search='ivf') unavailable ({why})")
    else:
        notes.append(f"- {IVF} is `KNN({K}, search='ivf')` (default n_clusters and n_probe), "
                     "rebuilt inside every call (its k-means warm-started from the block's "
                     "previous call: 2 Lloyd iterations instead of 8 from a random start; a "
                     f"direct build starts cold); KNN({K}) is the exact search.")  # fmt: skip
    build_sides = QUICK_BUILD_SIDES if args.quick else BUILD_SIDES
    builds = [] if why else [measure_build(side, repeat) for side in build_sides]
    conv_rows, conv_line = measure_conv(args.warmup, repeat, 1024 if args.quick else CONV_NODES)
    sections = block_tables(results, notes)
    conv_body = (
        f"One random graph, {CONV_K} in-edges per node (sources uniform), C={CHANNELS}, "
        f"C'={INTER}, float32, forward + backward of a fixed random upstream gradient. "
        f"`NonLocalConv({CHANNELS}, {INTER})` (θ, φ, g, softmax over the in-edges, W_z back "
        f"to {CHANNELS} channels, residual) vs `TransformerConv({CHANNELS}, {INTER}, heads=1)` "
        "(query, key, value, 1/√d softmax, root weight).\n\n"
        + (_common.markdown_table(["layer", "fwd+bwd time", "peak memory"], conv_rows)
           if conv_rows else conv_line.lstrip("- "))
    )  # fmt: skip
    sections.append(("NonLocalConv vs TransformerConv", conv_body))
    sections.append(("k-NN graph builder vs cdist + topk", knn_section(args)))
    sections.append(("k-NN graph build: clustered (IVF) vs exact", build_section(builds, why)))
    sections.append(
        ("Targets", "\n".join(targets(results, conv_line) + ivf_targets(results, builds)))
    )
    sections.append(("GPU", "No GPU was available for this run: the CUDA table is pending."))
    info["load average (1 min) at end"] = _common.load_average()
    header = (
        f"NonLocalBlock2d({CHANNELS}, {INTER}, sub_sample=False, zero_init=False), embedded "
        "Gaussian, float32, B=1, square maps; every graph on the dense block's weights. The "
        "input is a realistic feature map: a synthetic scene (gradients, coloured shapes, "
        "texture) through a fixed random conv net to 64 channels "
        "(`benchmarks/_embeddings.py`, seed 0), so the k-NN graphs see clustered embeddings."
    )
    sections.insert(0, ("Setup", header))
    out = _common.write_results(
        args.out, "Sparse non-local blocks: k-NN and window graphs vs dense", sections,
        command_line("graphs", argv), info,
    )  # fmt: skip
    for heading, body in sections:
        print(f"\n## {heading}\n\n{body}")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
