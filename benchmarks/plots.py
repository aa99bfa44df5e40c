"""Crossover plots of the committed benchmark results: dense vs k-NN vs window vs IVF graphs.

Nothing is measured here: the script parses the Markdown tables that ``graphs.py``, ``knn.py``
and ``kernels.py`` wrote into ``benchmarks/results/`` and draws, into ``docs/img/``:

- ``crossover_train.png`` / ``crossover_inference.png``: time per call against N (log-log) of
  the non-local block on each graph of ``graphs.md`` (dense, ``KNN(16)``, ``KNN(16, ivf)``,
  ``KNN(16)`` reused, ``Window(2)``), with the time relative to dense below; a ring marks the
  smallest measured N at which each sparse graph is faster than dense;
- ``crossover_memory.png``: peak memory against N for the same graphs, both passes;
- ``knn_build.png``: k-NN graph build time against N, nlgraph's blocked builder vs
  ``cdist + topk`` (``knn.md``) and the clustered (IVF) search vs the exact one (``graphs.md``);
- ``kernel_crossover.png``: the aggregation kernels on a k=16 graph vs the dense kernel on all
  pairs (``kernels.md``), the crossover behind ``backend="auto"``.

It prints the crossover summary (smallest measured N at which each sparse graph beats dense) and
writes it to ``benchmarks/results/crossover.md``. Run
``python benchmarks/plots.py [--out-dir docs/img] [--results-dir benchmarks/results]`` (the tables
are read by ``_tables.py``); it takes
a few seconds and the PNGs are byte-identical from run to run.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.style
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from _common import parse_bytes, parse_time  # noqa: E402
from _tables import (  # noqa: E402
    DENSE,
    DENSE_KERNEL,
    PASSES,
    Crossover,
    Series,
    column_series,
    crossover_summary,
    display_path,
    find_crossovers,
    machine_line,
    read_table,
    table_series,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = _common.RESULTS_DIR
IMG_DIR = ROOT / "docs" / "img"
KNN_BUILD_HEADING = "k-NN graph build: clustered (IVF) vs exact"
KERNEL_PASSES = {"forward": "Forward (no_grad)", "forward + backward": "Forward + backward"}
FIGSIZE, DPI = (8.0, 6.4), 100
FOOTNOTE_WIDTH = 150
LINESTYLES = ("-", "-", "--", "-", "-.", ":")
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
#: Style of the ring drawn at a crossover.
_RING = {"marker": "o", "markersize": 11, "fillstyle": "none", "markeredgewidth": 1.4}


@dataclass
class Plot:
    """A drawn figure, where it went and the data of every line (panel title -> series)."""

    path: Path
    figure: Figure
    series: dict[str, Series]


def _figure(
    title: str, footnotes: Sequence[str], ncols: int = 1, nrows: int = 1
) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=11)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    lines = [line for note in footnotes for line in textwrap.wrap(note, FOOTNOTE_WIDTH)]
    for i, line in enumerate(reversed(lines)):
        fig.text(0.01, 0.01 + 0.021 * i, line, fontsize=6.5, color="0.3")
    fig.subplots_adjust(
        left=0.1, right=0.98, top=0.9, bottom=0.09 + 0.021 * len(lines), hspace=0.12, wspace=0.25
    )
    return fig, axes


def _log_axes(
    ax: Axes,
    ns: Sequence[int],
    ylabel: str,
    *,
    xlabel: str | None = "N (query positions = keys, B=1)",
) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted(set(ns))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(n) for n in ticks] if xlabel else [])
    ax.set_xlim(ticks[0] / 1.25, ticks[-1] * 1.25)
    ax.yaxis.set_minor_formatter(NullFormatter())
    low, high = ax.get_ylim()
    if high / low < 100:  # under two decades: label 1, 2, 5 × 10^k as plain numbers
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", color="0.88", linewidth=0.6)


def _draw(
    ax: Axes, series: Series, reference: str, colors: dict[str, str], labels: dict[str, str]
) -> None:
    for i, (label, (ns, values)) in enumerate(series.items()):
        ref = label == reference
        ax.plot(
            ns,
            values,
            linestyle="-" if ref else LINESTYLES[i % len(LINESTYLES)],
            marker="o",
            markersize=3.5,
            linewidth=2.2 if ref else 1.4,
            color=colors[label],
            label=labels.get(label, label),
            zorder=3 if ref else 2,
        )


def _colors(labels: Sequence[str], reference: str) -> dict[str, str]:
    others = [label for label in labels if label != reference]
    return {
        reference: "black",
        **{label: COLORS[i % len(COLORS)] for i, label in enumerate(others)},
    }


def _save(fig: Figure, path: Path) -> Path:
    """Render with Agg and write a 256-colour PNG (no metadata, so the bytes are reproducible)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.convert("RGB").quantize(256).save(path, format="PNG", optimize=True, dpi=(DPI, DPI))
    return path


def plot_time_crossover(
    pass_name: str,
    graphs_md: Path | str,
    out: Path,
    *,
    reference: str = DENSE,
    heading: str | None = None,
    title: str | None = None,
) -> Plot:
    """Time vs N per graph (top) and time / dense (bottom), rings at each crossover.

    Args:
        pass_name (str): a key of :data:`PASSES` (``"training step"`` or ``"inference"``), or
            any name when ``heading`` is given.
        graphs_md (Path): the results file.
        out (Path): the PNG to write.
    """
    heading = PASSES[pass_name] if heading is None else heading
    rows = read_table(graphs_md, heading)
    label_col = "graph" if "graph" in rows[0] else "kernel"
    series = table_series(rows, label_col, "time")
    cross = {
        c.graph: c
        for c in find_crossovers(rows, pass_name, reference=reference, label_col=label_col)
    }
    colors = _colors(list(series), reference)
    labels = {
        g: f"{g}: faster from N={c.n}" if c.n is not None else f"{g}: never faster here"
        for g, c in cross.items()
    }
    title = title or f"Non-local block, {pass_name}: sparse graphs vs dense (time per call)"
    all_n = [n for ns, _ in series.values() for n in ns]
    dense = dict(zip(*series[reference]))
    note = (
        f"Source: {display_path(graphs_md)}, table '{heading}'; {machine_line(graphs_md)}. "
        f"Rings: smallest measured N at which the graph is faster than {reference}."
    )
    missing = sorted(set(all_n) - set(dense))
    if missing:
        note += (
            f" No {reference} measurement at N={', '.join(map(str, missing))}"
            " (not run; see the notes under the table)."
        )
    fig, (top, bottom) = _figure(title, [note], nrows=2)
    _draw(top, series, reference, colors, labels)
    ratios: Series = {}
    for label, (ns, times) in series.items():
        pairs = [(n, t / dense[n]) for n, t in zip(ns, times) if n in dense]
        ratios[label] = ([n for n, _ in pairs], [r for _, r in pairs])
    _draw(bottom, ratios, reference, colors, labels)
    bottom.axhspan(1e-9, 1.0, color="#2ca02c", alpha=0.06, zorder=0)
    for label, c in cross.items():
        if c.n is not None:
            t = dict(zip(*series[label]))[c.n]
            for ax, y in ((top, t), (bottom, c.ratio)):
                ax.plot([c.n], [y], **_RING, color=colors[label], zorder=4)
    _log_axes(top, all_n, "time per call (s)", xlabel=None)
    _log_axes(bottom, all_n, f"time / {reference} (below 1: cheaper)")
    bottom.set_ylim(
        min(min(v) for _, v in ratios.values()) / 1.6, max(max(v) for _, v in ratios.values()) * 1.6
    )
    top.legend(fontsize=7.5, loc="upper left")
    return Plot(_save(fig, out), fig, {"time": series, f"time / {reference}": ratios})


def plot_memory(graphs_md: Path | str, out: Path) -> Plot:
    """Peak memory vs N per graph, training step (left) and inference (right)."""
    fig, axes = _figure(
        "Non-local block: peak memory per call, sparse graphs vs dense",
        [
            f"Source: {display_path(graphs_md)}, tables '{PASSES['training step']}' and "
            f"'{PASSES['inference']}'; {machine_line(graphs_md)}. Peak: profiler allocator "
            "events above the inputs; missing points were not run (see the notes there)."
        ],
        ncols=2,
    )
    plotted: dict[str, Series] = {}
    for ax, (name, heading) in zip(axes, PASSES.items()):
        rows = read_table(graphs_md, heading)
        series = table_series(rows, "graph", "peak memory", parse_bytes, scale=2**20)
        _draw(ax, series, DENSE, _colors(list(series), DENSE), {})
        _log_axes(ax, [n for ns, _ in series.values() for n in ns], "peak memory (MiB)")
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=7.5, loc="upper left")
        plotted[name] = series
    return Plot(_save(fig, out), fig, plotted)


def plot_knn_build(knn_md: Path | str, graphs_md: Path | str, out: Path) -> Plot:
    """k-NN build time vs N: blocked builder vs cdist+topk (left), IVF vs exact (right)."""
    fig, (left, right) = _figure(
        "k-NN graph build time (k=16)",
        [
            f"Left: {display_path(knn_md)}, table 'Results' (d=64 Gaussian points, one graph); "
            f"{machine_line(knn_md)}.",
            f"Right: {display_path(graphs_md)}, table '{KNN_BUILD_HEADING}' (θ/φ embeddings of "
            f"the feature map, C′=32, metric logit); {machine_line(graphs_md)}.",
        ],
        ncols=2,
    )
    builders = table_series(read_table(knn_md, "Results"), "method", "time")
    _draw(left, builders, "cdist + topk", _colors(list(builders), "cdist + topk"), {})
    left.set_title("exact: nlgraph blocked builder vs cdist + topk", fontsize=9)
    rows = read_table(graphs_md, KNN_BUILD_HEADING)
    search: Series = {
        "IVF (clustered)": column_series(rows, "ivf build"),
        "exact": column_series(rows, "exact build"),
    }
    _draw(right, search, "exact", _colors(list(search), "exact"), {})
    for row in rows:
        seconds = parse_time(row["ivf build"])
        if seconds is not None and "recall@16" in row:
            right.annotate(
                f"recall@16 {row['recall@16']}",
                (int(row["N"]), seconds),
                textcoords="offset points",
                xytext=(-6, 6),
                ha="right",
                fontsize=7,
                color=COLORS[0],
            )
    right.set_title("IVF (clustered) search vs exact", fontsize=9)
    for ax, series in ((left, builders), (right, search)):
        _log_axes(
            ax, [n for ns, _ in series.values() for n in ns], "build time (s)", xlabel="N (points)"
        )
        ax.legend(fontsize=7.5, loc="upper left")
    return Plot(_save(fig, out), fig, {"exact builders": builders, "ivf vs exact": search})


def plot_kernels(kernels_md: Path | str, out: Path) -> Plot:
    """Aggregation kernels on a k=16 graph vs the dense kernel on all pairs, both passes."""
    fig, axes = _figure(
        "Aggregation kernels: k=16 graph vs all pairs (time per call)",
        [
            f"Source: {display_path(kernels_md)}, tables '{KERNEL_PASSES['forward']}' and "
            f"'{KERNEL_PASSES['forward + backward']}'; {machine_line(kernels_md)}. "
            f"Rings: smallest measured N at which the kernel is faster than {DENSE_KERNEL}."
        ],
        ncols=2,
    )
    plotted: dict[str, Series] = {}
    for ax, (name, heading) in zip(axes, KERNEL_PASSES.items()):
        rows = read_table(kernels_md, heading)
        series = table_series(rows, "kernel", "time")
        colors = _colors(list(series), DENSE_KERNEL)
        cross = find_crossovers(rows, name, reference=DENSE_KERNEL, label_col="kernel")
        labels = {c.graph: f"{c.graph}: faster from N={c.n}" for c in cross if c.n is not None}
        _draw(ax, series, DENSE_KERNEL, colors, labels)
        for c in cross:
            if c.n is not None:
                y = dict(zip(*series[c.graph]))[c.n]
                ax.plot([c.n], [y], **_RING, color=colors[c.graph], zorder=4)
        ns = [n for ns, _ in series.values() for n in ns]
        _log_axes(ax, ns, "time per call (s)", xlabel="N (queries = keys, k=16 per query)")
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
        plotted[name] = series
    return Plot(_save(fig, out), fig, plotted)


def summary_markdown(
    graphs_md: Path | str, kernels_md: Path | str | None = None, command: str = ""
) -> str:
    """The generated ``crossover.md``: where each sparse graph (and kernel) beats dense."""
    sources = [display_path(graphs_md)] + ([display_path(kernels_md)] if kernels_md else [])
    parts = [
        "# Crossovers: sparse graphs vs dense",
        "",
        f"Generated by benchmarks/plots.py from {' and '.join(sources)}; do not edit by hand.",
        "",
        "Smallest measured N at which each graph is faster than the dense reference (time / dense"
        " < 1 at that N); `crossing ≈` interpolates the time/dense ratio in log-log between the"
        " last slower and the first faster measured N (an estimate, not a measurement).",
        "",
    ]

    def table(cross: Sequence[Crossover], what: str) -> str:
        rows = []
        for c in cross:
            top = max(c.measured, default=0)
            first = "never in the measured range" if c.n is None else str(c.n)
            ratio = "—" if c.ratio is None else f"{c.ratio:.3g}"
            estimate = "—" if c.estimate is None else f"≈ {c.estimate:.0f}"
            note = f"measured up to N={top}"
            if c.slower_again:
                note += f"; slower again at N={', '.join(map(str, c.slower_again))}"
            rows.append([c.pass_name, c.graph, first, ratio, estimate, note])
        headers = [
            "pass",
            what,
            "faster than dense from N",
            "time / dense there",
            "crossing",
            "note",
        ]
        return _common.markdown_table(headers, rows)

    parts += [
        f"## Non-local block ({display_path(graphs_md)})",
        "",
        f"Machine: {machine_line(graphs_md)}.",
        "",
        table(crossover_summary(graphs_md), "graph"),
        "",
    ]
    if kernels_md is not None:
        cross = [
            c
            for name, heading in KERNEL_PASSES.items()
            for c in find_crossovers(
                read_table(kernels_md, heading), name, reference=DENSE_KERNEL, label_col="kernel"
            )
        ]
        parts += [
            f"## Aggregation kernels vs {DENSE_KERNEL} ({display_path(kernels_md)})",
            "",
            f"Machine: {machine_line(kernels_md)}.",
            "",
            table(cross, "kernel"),
            "",
        ]
    parts += ["## Command", "", "```sh", command or "python benchmarks/plots.py", "```", ""]
    return "\n".join(parts)


def make_plots(out_dir: Path = IMG_DIR, results_dir: Path = RESULTS_DIR) -> dict[str, Plot]:
    """Draw every PNG from the results files in ``results_dir`` into ``out_dir``.

    Returns:
        dict: file stem -> :class:`Plot`; figures whose source file is missing are left out.
    """
    out_dir, results_dir = Path(out_dir), Path(results_dir)
    graphs_md, knn_md = results_dir / "graphs.md", results_dir / "knn.md"
    kernels_md = results_dir / "kernels.md"
    plots: dict[str, Plot] = {}
    with matplotlib.style.context("default"):
        if graphs_md.is_file():
            plots["crossover_train"] = plot_time_crossover(
                "training step", graphs_md, out_dir / "crossover_train.png"
            )
            plots["crossover_inference"] = plot_time_crossover(
                "inference", graphs_md, out_dir / "crossover_inference.png"
            )
            plots["crossover_memory"] = plot_memory(graphs_md, out_dir / "crossover_memory.png")
            if knn_md.is_file():
                plots["knn_build"] = plot_knn_build(knn_md, graphs_md, out_dir / "knn_build.png")
        if kernels_md.is_file():
            plots["kernel_crossover"] = plot_kernels(kernels_md, out_dir / "kernel_crossover.png")
    return plots


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/plots.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out-dir", type=Path, default=IMG_DIR, help="folder of the PNGs (default: docs/img)"
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help="folder of the results files read (default: benchmarks/results)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="crossover summary file (default: crossover.md in --results-dir)",
    )
    args = parser.parse_args(argv)
    graphs_md = args.results_dir / "graphs.md"
    if not graphs_md.is_file():
        parser.error(f"--results-dir: expected a folder holding graphs.md, got {args.results_dir}")
    kernels_md = args.results_dir / "kernels.md"
    plots = make_plots(args.out_dir, args.results_dir)
    for plot in plots.values():
        print(f"wrote {display_path(plot.path)}")
    for c in crossover_summary(graphs_md):
        print(c.describe())
    out = args.out if args.out is not None else args.results_dir / "crossover.md"
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = f"python benchmarks/plots.py {' '.join(argv_list)}".rstrip()
    out.write_text(
        summary_markdown(graphs_md, kernels_md if kernels_md.is_file() else None, command),
        encoding="utf-8",
    )
    print(f"wrote {display_path(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
