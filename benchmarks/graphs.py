"""Sparse non-local blocks: k-NN and window graphs against the dense block, and NonLocalConv.

Side by side in one process (float32, B=1, C=64, C'=32, embedded Gaussian, ``sub_sample=False``,
2-D square maps with N in {1024, 4096, 16384, 65536}), :class:`nlgraph.NonLocalBlock2d` holding
the same weights with

- ``graph="full"``: the dense block (skipped at a size where its training step, estimated from
  the largest measured size by N² scaling, would exceed :data:`DENSE_BUDGET_S`);
- ``graph=KNN(16)``: the k-NN graph built inside every call (its build is in the time);
- KNN(16) reused: the same graph built once outside the timed call, ``forward(x, graph=g)``;
- ``graph=Window(2)``: a 5×5 window (k = 25, fewer at the borders).

For each: a training step (train mode, forward + backward of a fixed random upstream gradient
of z, back to the input and every parameter, as in ``benchmarks/dense.py``) and inference
(``no_grad``, eval): median time (interleaved) and peak CPU tensor memory
(:func:`nlgraph._measure.memory_stats`), with the ratios to the dense block. The k-NN builder
rows come from ``benchmarks/knn.py``, run in this process (``--skip-knn`` embeds its last
results file instead). NonLocalConv is timed against ``torch_geometric.nn.TransformerConv`` on
one random graph (N=16384 nodes, 16 in-edges each, C=64, C'=32) when
``nlgraph.nn.nonlocal_conv`` is importable. Targets (issue 4): k=16 training step at N=16384
≤ 0.3× the dense block's time, graph build included; k=16 training step at N=65536 under 2 GiB
peak; NonLocalConv ≥ 1.5× faster than TransformerConv forward+backward.

Run ``python benchmarks/graphs.py [--quick] [--repeat R] [--skip-knn] [--out FILE]``; results
go to ``benchmarks/results/graphs.md``. Pin the allocator for stable numbers:
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776``.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import knn as knn_bench  # noqa: E402

from nlgraph import NonLocalBlock2d  # noqa: E402
from nlgraph._measure import memory_stats  # noqa: E402
from nlgraph.graphs import KNN, Window  # noqa: E402

CHANNELS, INTER, K, RADIUS = 64, 32, 16, 2
SIDES = (32, 64, 128, 256)
QUICK_SIDES = (32,)
#: Timed runs are capped at this many at N >= 65536 (each dense step there takes seconds).
LARGE_N, LARGE_REPEAT = 65536, 3
#: The dense block is skipped where its estimated training step exceeds this (seconds).
DENSE_BUDGET_S = 60.0
METHODS = ("dense", f"KNN({K})", f"KNN({K}) reused", f"Window({RADIUS})")
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


def make_blocks(side: int, seed: int = 0) -> tuple[dict[str, NonLocalBlock2d], torch.Tensor]:
    """The four blocks with the dense block's weights, and a (1, C, side, side) input."""
    torch.manual_seed(seed)
    specs: dict[str, Any] = {
        "dense": "full",
        f"KNN({K})": KNN(K),
        f"Window({RADIUS})": Window(RADIUS),
    }
    dense = NonLocalBlock2d(CHANNELS, INTER, sub_sample=False, zero_init=False)
    blocks = {}
    for name, spec in specs.items():
        block = NonLocalBlock2d(CHANNELS, INTER, sub_sample=False, zero_init=False, graph=spec)
        block.load_state_dict(dense.state_dict())
        blocks[name] = block
    blocks[f"KNN({K}) reused"] = blocks[f"KNN({K})"]
    return blocks, torch.randn(1, CHANNELS, side, side)


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


def measure(side: int, pass_: str, warmup: int, repeat: int, skip_dense: bool) -> list[Result]:
    """Interleaved median times and profiled peaks of every method at one size and pass."""
    blocks, x = make_blocks(side)
    names = [m for m in METHODS if not (skip_dense and m == "dense")]
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
        prev = max((r for r in results if r.method == "dense" and r.pass_ == "train"),
                   key=lambda r: r.n, default=None)  # fmt: skip
        estimate = None if prev is None else prev.time * (n / prev.n) ** 2
        skip_dense = estimate is not None and estimate > DENSE_BUDGET_S
        if skip_dense:
            notes.append(f"- N={n}: dense skipped: its training step, estimated from N={prev.n} "
                         f"by N² scaling, would take {estimate:.0f} s")  # fmt: skip
        elif estimate is not None and estimate > 5:
            notes.append(f"- N={n}: dense measured (estimated {estimate:.0f} s per training "
                         f"step from N={prev.n} by N² scaling, under {DENSE_BUDGET_S:.0f} s)")  # fmt: skip
        for pass_ in PASSES:
            for r in measure(side, pass_, args.warmup, reps, skip_dense):
                results.append(r)
                print(f"N={r.n:<6} {r.pass_:<9} {r.method:<16} {_common.fmt_time(r.time):>9} "
                      f"peak {_common.fmt_bytes(r.peak):>9}", flush=True)  # fmt: skip
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
    sections.append(("Targets", "\n".join(targets(results, conv_line))))
    info["load average (1 min) at end"] = _common.load_average()
    header = (
        f"NonLocalBlock2d({CHANNELS}, {INTER}, sub_sample=False, zero_init=False), embedded "
        "Gaussian, float32, B=1, square maps; every graph on the dense block's weights."
    )
    sections.insert(0, ("Setup", header))
    out = _common.write_results(
        args.out, "Sparse non-local blocks: k-NN and window graphs vs dense", sections,
        _common.command_line("graphs", argv), info,
    )  # fmt: skip
    for heading, body in sections:
        print(f"\n## {heading}\n\n{body}")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
