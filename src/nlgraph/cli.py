"""Command line: ``python -m nlgraph demo|bench|info|check`` (also installed as ``nlgraph``).

- ``info``: versions, CPU threads, optional packages and the allocator settings.
- ``demo``: the four modes of a 2-D block on a random map, each checked against a float64
  reference and compared with the naive bmm+softmax block (time and peak memory); then the
  same map through the full, k-NN and window graphs (error vs the dense output, time, memory).
- ``bench``: runs ``benchmarks/dense.py`` from a source checkout with its flags (``--quick``,
  ``--only``, ``--repeat``, ``--warmup``, ``--device``); the results file goes to
  ``./nlgraph-bench/dense.md`` unless ``--out-dir`` or ``--out`` says otherwise, never over the
  checkout's ``benchmarks/results/dense.md``.
- ``check``: imports a checkpoint with ``from_reference``, prints the block and compares it,
  on a random float64 input, with the layout's own module where installed (mmcv), the round
  trip ``to_reference`` and the naive block. See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from . import __version__
from ._check import CHECK_ATOL, CheckError, check, load_checkpoint
from ._cli_util import device_error, importable, table, version_of
from ._measure import format_bytes, format_seconds, median_time, peak_memory
from ._naive import concat_tensor_bytes, naive_from_block
from .graphs import KNN, GraphSpec, Window
from .nn import NonLocalBlock2d
from .pairwise import MODES

__all__ = ["CheckError", "bench", "check", "demo", "info", "load_checkpoint", "main"]

#: glibc settings that keep large tensors on the heap (fresh mmaps page-fault at ~7 GB/s).
ALLOCATOR_HINT = "MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776"
#: The demo's float32 tolerance against the float64 reference (max abs error of z).
DEMO_ATOL = 1e-3
#: Where ``demo`` saves its picture, relative to the working directory.
DEMO_OUT_DIR = "nlgraph-demo"
#: The demo skips the naive concatenation when its 2C'×N×N' tensor would exceed this.
NAIVE_CONCAT_BUDGET = 3 * 2**29  # 1.5 GiB: N = 48x48 runs, 64x64 (4 GiB) does not
#: Optional packages ``info`` reports (distribution, module): the backends (torch-scatter
#: segments, faiss k-NN search, triton fused kernels), the ``viz`` extra and the reference module
#: ``check`` compares with.
OPTIONAL_PACKAGES = (
    ("torch-scatter", "torch_scatter"),
    ("faiss", "faiss"),
    ("triton", "triton"),
    ("matplotlib", "matplotlib"),
    ("mmcv", "mmcv"),
)


def info(
    n: int | None = None,
    k: int = 16,
    channels: int = 32,
    device: str = "cpu",
    dtype: str = "float32",
) -> int:
    """Print versions, threads, optional packages and allocator settings; with ``n``, also what
    :func:`explain_choices` says for N = ``n``. Returns 0."""
    choices = None if n is None else explain_choices(n, k, channels, device, dtype)
    rows = [
        ("nlgraph", __version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("torch_geometric", version_of("torch-geometric")),
        ("CPU threads", f"{torch.get_num_threads()} (torch), {os.cpu_count()} logical cores"),
        ("CUDA", torch.version.cuda if torch.cuda.is_available() else "not available"),
    ]
    rows += [(f"{dist} importable", importable(module)) for dist, module in OPTIONAL_PACKAGES]
    alloc = {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")}
    if os.environ.get("LD_PRELOAD"):
        alloc["LD_PRELOAD"] = os.environ["LD_PRELOAD"]
    rows.append(("allocator", " ".join(f"{k}={v}" for k, v in alloc.items()) or "glibc defaults"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)} : {value}")
    if not alloc:
        print(
            "hint: large CPU tensors are mmap'ed and page-faulted by glibc's default malloc; "
            f"for stable speed with large N run with {ALLOCATOR_HINT}"
        )
    if choices is not None:
        print(f"\nchoices for N = {n}, k = {k}, C' = {channels}, {device}, {dtype}:")
        width = max(len(label) for label, _ in choices)
        for label, value in choices:
            print(f"{label.ljust(width)} : {value}")
    return 0


def explain_choices(
    n: int, k: int, channels: int, device: str = "cpu", dtype: str = "float32"
) -> list[tuple[str, str]]:
    """What ``backend="auto"`` and the k-NN builders choose for N positions, k neighbours and
    C' channels on ``device`` in ``dtype``, and why: ``(label, explanation)`` rows.

    Only shapes, dtypes and devices are read (the kernels' ``not_supported_reasons``), so the
    tensors made here are left uninitialised; the k-NN graph's index is a (1, N, k) zero tensor.
    """
    from nlgraph.graphs import RegularGraph
    from nlgraph.graphs.ivf import default_clusters, default_probe
    from nlgraph.graphs.point_knn import GRID_MAX_FEATURES
    from nlgraph.ops import AggregateInputs
    from nlgraph.ops.dispatch import priority_list
    from nlgraph.pairwise import Pairwise

    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
        raise ValueError(f"--dtype: expected a floating dtype such as float32, got {dtype!r}")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(
            f"--device: expected a device such as cpu or cuda:0, got {device!r}"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {device!r} is not available here (no CUDA device)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu or cuda, got {device!r}")
    q = torch.empty(1, n, channels, device=dev, dtype=torch_dtype)
    v = torch.empty(1, n, channels, device=dev, dtype=torch_dtype)
    knn = RegularGraph(torch.zeros(1, n, min(k, n), dtype=torch.long, device=dev), n)
    rows: list[tuple[str, str]] = []
    for label, graph in (("full graph", "full"), (f"k-NN graph (k={min(k, n)})", knn)):
        inp = AggregateInputs(q, q, v, Pairwise("embedded_gaussian"), graph=graph)
        tried = []
        chosen = None
        for kernel in priority_list(inp):
            why = kernel.not_supported_reasons(inp)
            if not why:
                chosen = kernel.NAME
                break
            tried.append(f"{kernel.NAME} declined: {'; '.join(why)}")
        head = f"{chosen} (first of {', '.join(c.NAME for c in priority_list(inp))})"
        rows.append((f"aggregate, {label}", head if chosen else "no kernel"))
        rows += [("", t) for t in tried]
    lists = default_clusters(n)
    probe = default_probe(lists, k=k, num_keys=n)
    rows.append(
        (
            "KNN(k) in a block",
            "exact: blocked θ·φ scores, tie-aware top-k (torch); the fused Triton scan only "
            "inside force_triton_knn()",
        )
    )
    rows.append(
        (
            "KNN(k, search='ivf')",
            f"{lists} lists, n_probe {probe} ({min(100.0, 100 * probe / lists):.0f}% of the "
            "keys scanned"
            + ("; probing every list is the exact search" if probe >= lists else "")
            + ")",
        )
    )
    rows.append(
        (
            "knn_graph(points)",
            f"grid search for <= {GRID_MAX_FEATURES} coordinates with metric 'l2', else the "
            "exact blocked search (faiss with backend='faiss')",
        )
    )
    return rows


def _reference_chunk(mode: str, n: int, n_keys: int, inter: int) -> int | None:
    """Query rows per chunk that keep the fp64 reference's largest temporary near 128 MiB."""
    per_row = n_keys * (2 * inter if mode == "concatenation" else 1)
    chunk = max(1, 2**24 // per_row)
    return None if chunk >= n else chunk


def _measure_forward(
    module: torch.nn.Module, x: torch.Tensor, warmup: int, repeat: int
) -> tuple[float, int]:
    """Median forward time and peak memory of ``module(x)`` (no grad)."""
    with torch.no_grad():
        seconds = median_time(lambda: module(x), warmup=warmup, repeat=repeat)
        return seconds, peak_memory(lambda: module(x))


def _demo_mode(
    mode: str, size: int, channels: int, warmup: int, repeat: int, seed: int
) -> tuple[float, list[str], str]:
    """One demo row: (max abs error vs fp64, table cells, note or "")."""
    inter, n = max(channels // 2, 1), size * size
    torch.manual_seed(seed)
    block = NonLocalBlock2d(channels, inter, mode=mode, sub_sample=False, zero_init=False).eval()
    x = torch.randn(1, channels, size, size)
    with torch.no_grad():
        reference = naive_from_block(block, query_chunk=_reference_chunk(mode, n, n, inter))
        expected = reference.double()(x.double())
        error = (block(x).double() - expected).abs().max().item()
    t_nl, m_nl = _measure_forward(block, x, warmup, repeat)
    t_nv = m_nv = None
    note = ""
    if mode != "concatenation" or concat_tensor_bytes(n, n, inter) <= NAIVE_CONCAT_BUDGET:
        t_nv, m_nv = _measure_forward(naive_from_block(block), x, warmup, repeat)
    else:
        gib = concat_tensor_bytes(n, n, inter) / 2**30
        note = f"naive concatenation skipped: its 2C'xNxN' tensor alone is {gib:.1f} GiB (try --size 48)"
    speedup = "—" if t_nv is None else f"{t_nv / t_nl:.1f}x"
    ratio = "—" if m_nv is None else f"{m_nv / max(m_nl, 1):.1f}x"
    cells = [mode, f"{error:.2e}", format_seconds(t_nl), format_seconds(t_nv), speedup,
             format_bytes(m_nl), format_bytes(m_nv), ratio]  # fmt: skip
    return error, cells, note


def demo(
    size: int = 64,
    channels: int = 64,
    quick: bool = False,
    seed: int = 0,
    out_dir: Path | None = Path(DEMO_OUT_DIR),
) -> int:
    """Run the four modes of a 2-D block and print accuracy, time and memory against naive.

    Each block (``NonLocalBlock2d(channels, channels // 2, sub_sample=False,
    zero_init=False)``, float32, eval mode, forward only) runs on a random
    (1, channels, size, size) map. Its output is compared with the naive block run in float64
    on the same weights (the slow reference) and timed against the naive block in float32.

    Args:
        size (int): the map is size×size, N = size² positions. (default: ``64``)
        channels (int): C; C' = C // 2. (default: ``64``)
        quick (bool): one timed run, no warm-up. (default: ``False``)
        seed (int): seed for weights and input. (default: ``0``)
        out_dir (Path, optional): where :func:`demo_picture` saves ``attention.png``; ``None``
            saves nothing. (default: ``./nlgraph-demo``, under the working directory)

    Returns:
        int: 0 when every error is within :data:`DEMO_ATOL`, else 1.
    """
    inter, n = max(channels // 2, 1), size * size
    warmup, repeat = (0, 1) if quick else (1, 3)
    print(
        f"nlgraph {__version__} demo: NonLocalBlock2d({channels}, {inter}, sub_sample=False), "
        f"float32, input (1, {channels}, {size}, {size}), N = N' = {n}, forward, "
        f"{torch.get_num_threads()} threads; error = max |z - z_fp64 reference|"
    )
    headers = ["mode", "max abs error", "nlgraph time", "naive time", "speed-up",
               "nlgraph peak", "naive peak", "memory ratio"]  # fmt: skip
    rows, notes, failed = [], [], []
    for mode in MODES:
        error, row, note = _demo_mode(mode, size, channels, warmup, repeat, seed)
        rows.append(row)
        if note:
            notes.append(note)
        if not math.isfinite(error) or error > DEMO_ATOL:
            failed.append(mode)
    print(table(headers, rows))
    for note in notes:
        print(f"note: {note}")
    if failed:
        print(f"FAILED: error above {DEMO_ATOL:g} for {', '.join(failed)}")
    else:
        print(f"all four modes within {DEMO_ATOL:g} of the float64 reference")
    print()
    sparse_ok = demo_sparse(size, channels, warmup, repeat, seed)
    if out_dir is not None:
        print()
        demo_picture(out_dir, seed)
    return 0 if not failed and sparse_ok else 1


def demo_picture(out_dir: Path, seed: int = 0, side: int = 32) -> Path | None:
    r"""Save ``<out_dir>/attention.png``: where one pixel of a red square attends.

    A (3, side, side) image of three red and two blue 4x4 squares on black goes through
    ``NonLocalBlock2d(3, mode="gaussian", sub_sample=False)``, whose weights
    :math:`\propto \exp(x_i \cdot x_j)` depend on the colours alone (x = 3·RGB): a red pixel
    attends to every red pixel, wherever it is. :func:`nlgraph.viz.attention_map` draws the
    weights of the first red square's centre over the image.

    Returns:
        Path or None: the file, or ``None`` (a note printed) when matplotlib is missing.
    """
    if importlib.util.find_spec("matplotlib") is None:
        print('note: no picture (matplotlib is missing: pip install "nlgraph[viz]")')
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .viz import attention_map

    gen = torch.Generator().manual_seed(seed)
    image = torch.zeros(3, side, side)
    cells = torch.randperm((side // 6) ** 2, generator=gen)[:5]  # non-overlapping 6x6 slots
    centres = []
    for i, cell in enumerate(cells.tolist()):
        y, x = 6 * (cell // (side // 6)) + 1, 6 * (cell % (side // 6)) + 1
        image[0 if i < 3 else 2, y : y + 4, x : x + 4] = 1.0
        centres.append((y + 2, x + 2))
    torch.manual_seed(seed)
    block = NonLocalBlock2d(3, mode="gaussian", sub_sample=False).eval()
    with torch.no_grad():
        _, attn = block(3 * image[None], return_attention=True)
    fig, ax = plt.subplots(figsize=(4, 4))
    attention_map(attn, centres[0], image=image, ax=ax)
    ax.set_title("attention of one red pixel (+)\nNonLocalBlock2d, mode='gaussian'", fontsize=9)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "attention.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"saved the attention of one query: {path}")
    return path


def demo_sparse(size: int, channels: int, warmup: int, repeat: int, seed: int) -> bool:
    r"""The demo's sparse section: one map through the full, k-NN and window graphs.

    The embedded-Gaussian block (same weights for every graph) runs on the same random map with
    ``graph="full"``, ``KNN(N')`` (k >= N' is the full graph: must match the dense output within
    :data:`DEMO_ATOL`), ``KNN(16)`` and ``Window(2)``. The last two restrict the softmax to 16
    or 25 keys per query, so their error against the dense output is the approximation itself,
    printed as measured and not checked.

    Returns:
        bool: whether the exact graphs (full, KNN(N')) are within :data:`DEMO_ATOL`.
    """
    inter, n = max(channels // 2, 1), size * size
    torch.manual_seed(seed)
    dense = NonLocalBlock2d(channels, inter, sub_sample=False, zero_init=False).eval()
    x = torch.randn(1, channels, size, size)
    graphs: list[tuple[str, str | GraphSpec, bool]] = [
        ("full", "full", True), (f"KNN({n}) (k >= N')", KNN(n), True),
        ("KNN(16)", KNN(16), n <= 16), ("Window(2)", Window(2), size <= 3),
    ]  # fmt: skip
    print(
        "sparse graphs: the same map, embedded Gaussian, same weights, forward; "
        "error = max |z - z_dense| (float32)"
    )
    with torch.no_grad():
        expected = dense(x)
    rows, failed = [], []
    for label, spec, exact in graphs:
        block = NonLocalBlock2d(channels, inter, sub_sample=False, zero_init=False, graph=spec)
        block.load_state_dict(dense.state_dict())
        block.eval()
        with torch.no_grad():
            error = (block(x) - expected).abs().max().item()
        seconds, peak = _measure_forward(block, x, warmup, repeat)
        kind = "exact" if exact else "approximation"
        rows.append([label, kind, f"{error:.2e}", format_seconds(seconds), format_bytes(peak)])
        if exact and not (math.isfinite(error) and error <= DEMO_ATOL):
            failed.append(label)
    print(table(["graph", "kind", "max abs error", "time", "peak memory"], rows))
    if failed:
        print(f"FAILED: sparse graphs that must be exact are off by more than {DEMO_ATOL:g}: "
              f"{', '.join(failed)}")  # fmt: skip
        return False
    print(
        f"exact graphs within {DEMO_ATOL:g} of the dense output; KNN(16) and Window(2) keep 16 "
        "and at most 25 keys per query: their error is the approximation of the full softmax"
    )
    return True


#: The benchmark scripts ``nlgraph bench`` runs (``benchmarks/<area>.py`` of a source checkout;
#: ``plots.py`` measures nothing and is not one). ``all`` runs every CPU area; ``gpu`` runs only
#: when named (or with ``--device cuda``).
BENCH_AREAS = (
    "dense", "graphs", "kernels", "knn", "grid_knn", "recall", "objects", "amp", "compile",
    "reliability", "scale", "gpu",
)  # fmt: skip
#: The areas whose script takes ``--device`` (the others measure the CPU).
BENCH_DEVICE_AREAS = ("dense", "objects", "gpu")
#: Where ``nlgraph bench`` writes its results without ``--out``: a folder under the current
#: working directory, never the checkout's tracked ``benchmarks/results/``.
BENCH_OUT_DIR = "nlgraph-bench"


def _bench_script(area: str = "dense") -> Path:
    return Path(__file__).resolve().parents[2] / "benchmarks" / f"{area}.py"


def bench(args: Sequence[str], area: str = "dense") -> int:
    """Run ``benchmarks/<area>.py``'s ``main(args)`` from a source checkout, if there is one, and
    print the results file it wrote; without ``--out`` in ``args`` the results go to
    ``./nlgraph-bench/<area>.md``.

    Args:
        args (list of str): the script's flags (``nlgraph bench`` builds them).
        area (str): one of :data:`BENCH_AREAS`. (default: ``"dense"``)

    Returns:
        int: the benchmark's exit code; 2 without a source checkout.
    """
    args = list(args)
    outs = [b for a, b in zip(args, args[1:]) if a == "--out"]
    outs += [a.split("=", 1)[1] for a in args if a.startswith("--out=")]
    if not outs:
        outs = [str(Path.cwd() / BENCH_OUT_DIR / f"{area}.md")]
        args += ["--out", outs[0]]
    print(f"bench: writing the results to {outs[-1]}")
    script = _bench_script(area)
    if not script.is_file():
        print(
            f"bench: benchmarks/{area}.py is not next to this installation (it ships with the "
            "source checkout). Clone the repository and run, from its root:\n"
            f"  {ALLOCATOR_HINT} python benchmarks/{area}.py [--quick] [--only MODE]"
        )
        return 2
    spec = importlib.util.spec_from_file_location(f"nlgraph_bench_{area}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    code = int(module.main(args) or 0)
    out = Path(outs[-1])
    if out.is_file():
        print(f"\n{out.read_text()}")
    return code


def _bench_areas(
    names: Sequence[str], device: str | None, usage: argparse.ArgumentParser
) -> list[str]:
    """The areas to run for the ``AREA`` arguments (default dense; ``all``: every CPU area, and
    gpu with a CUDA ``--device``), each once, in :data:`BENCH_AREAS` order."""
    names = list(names) or ["dense"]
    for name in names:
        if name != "all" and name not in BENCH_AREAS:
            usage.error(f"AREA: expected one of {', '.join(BENCH_AREAS)} or all, got {name!r}")
    cuda = device is not None and torch.device(device).type == "cuda"
    chosen = {a for a in BENCH_AREAS if a in names or ("all" in names and (a != "gpu" or cuda))}
    areas = [a for a in BENCH_AREAS if a in chosen]
    if device is not None and torch.device(device).type != "cpu":
        cpu_only = [a for a in areas if a not in BENCH_DEVICE_AREAS]
        if "all" in names:
            areas = [a for a in areas if a in BENCH_DEVICE_AREAS]
        elif cpu_only:
            usage.error(
                f"--device: expected the CPU for {', '.join(cpu_only)} (only "
                f"{', '.join(BENCH_DEVICE_AREAS)} take a device), got {device!r}"
            )
    return areas


def _parser() -> argparse.ArgumentParser:
    from .compat import LAYOUTS

    parser = argparse.ArgumentParser(
        prog="nlgraph", description="nlgraph: graph-based non-local blocks for PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"nlgraph {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,bench,info,check}")
    i = sub.add_parser(
        "info",
        help="versions, threads, optional packages, allocator settings; with --n, the kernel "
        "and k-NN builder that auto chooses for that size, and why",
    )
    i.add_argument("--n", type=int, default=None, help="positions N (queries = keys)")
    i.add_argument("--k", type=int, default=16, help="neighbours of the k-NN graph (default: 16)")
    i.add_argument("--channels", type=int, default=32, help="C' of θ, φ (default: 32)")
    i.add_argument("--device", default="cpu", help="device (default: cpu)")
    i.add_argument("--dtype", default="float32", help="floating dtype (default: float32)")
    d = sub.add_parser("demo", help="the four modes against a float64 reference and naive")
    d.add_argument("--size", type=int, default=64, help="map side; N = size² (default: 64)")
    d.add_argument("--channels", type=int, default=64, help="C; C' = C // 2 (default: 64)")
    d.add_argument("--quick", action="store_true", help="one timed run per measurement")
    d.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    d.add_argument(
        "--out-dir", type=Path, default=Path(DEMO_OUT_DIR),
        help=f"where the attention picture goes (default: ./{DEMO_OUT_DIR})",
    )  # fmt: skip
    b = sub.add_parser(
        "bench",
        help="run the benchmarks (source checkout) and print their tables",
        description="Run benchmarks/<AREA>.py from the source checkout and print the tables "
        "they write: dense (default: every mode of a dense NonLocalBlock2d against the naive "
        "bmm+softmax block), graphs, kernels, knn, ... or all. Results go to "
        f"./{BENCH_OUT_DIR}/<AREA>.md unless --out-dir or --out says otherwise (by default "
        "never the checkout's benchmarks/results/). Full runs take minutes (dense) to an hour "
        "(all); --quick is a smoke test of seconds to minutes.",
    )
    b.add_argument(
        "areas", nargs="*", metavar="AREA",
        help=f"benchmarks to run: {', '.join(BENCH_AREAS)}, or all (every CPU area; gpu too "
        "with --device cuda) (default: dense)",
    )  # fmt: skip
    b.add_argument(
        "--quick", action="store_true",
        help="a small subset of each benchmark, 2 timed runs (dense: N = 1024 only)",
    )  # fmt: skip
    b.add_argument(
        "--only", action="append", metavar="MODE",
        help=f"run only this mode (repeatable): {', '.join(MODES)}",
    )  # fmt: skip
    b.add_argument("--repeat", type=int, default=None, help="timed runs per case (default: 5)")
    b.add_argument("--warmup", type=int, default=None, help="untimed runs per case (default: 1)")
    b.add_argument(
        "--device", default=None,
        help=f"cpu or cuda[:i], for {', '.join(BENCH_DEVICE_AREAS)} (default: cpu)",
    )  # fmt: skip
    b.add_argument(
        "--out-dir", type=Path, default=Path(BENCH_OUT_DIR),
        help=f"folder of the results files <AREA>.md (default: ./{BENCH_OUT_DIR})",
    )  # fmt: skip
    b.add_argument(
        "--out", type=Path, default=None,
        help="the results file of a single AREA (overrides --out-dir)",
    )  # fmt: skip
    c = sub.add_parser(
        "check",
        help="import a checkpoint with from_reference and compare it with the reference module",
        description="Load CHECKPOINT (torch.load(weights_only=True)), import it with "
        "from_reference, print the block, and compare on a random float64 input: the round "
        "trip to_reference == checkpoint, the layout's own module where it is installed (mmcv), "
        f"and the naive block. Exit 0: all pass (tolerance {CHECK_ATOL:g}); 1: a difference "
        "exceeds it; 2: bad arguments.",
    )
    c.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="the checkpoint file")
    c.add_argument(
        "--layout", required=True, metavar="LAYOUT",
        help=f"the checkpoint's key layout: {', '.join(LAYOUTS)}",
    )  # fmt: skip
    c.add_argument("--dims", type=int, default=None, help="1, 2 or 3 (default: from the weights)")
    c.add_argument(
        "--mode", default=None,
        help=f"pairwise mode: {', '.join(MODES)} (default: from the keys; embedded_gaussian and "
        "dot_product have the same keys, then embedded_gaussian with a note)",
    )  # fmt: skip
    c.add_argument(
        "--prefix", default=None,
        help="the block's module path in a larger state_dict, e.g. layer3.1.nl (caffe2: blob "
        "prefix)",
    )  # fmt: skip
    c.add_argument(
        "--key", default=None,
        help="the entry holding the state_dict, e.g. state_dict or model (default: the file's "
        "dict, or its only dict of tensors)",
    )  # fmt: skip
    c.add_argument(
        "--scale", default=None, metavar="{inner,input,none}",
        help="softmax temperature the checkpoint's module used (mmcv/timm use_scale=False: "
        "none; default: the layout's)",
    )  # fmt: skip
    c.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    c.add_argument("--seed", type=int, default=0, help="seed of the random input (default: 0)")
    c.add_argument("--size", type=int, default=8, help="side of the input map (default: 8)")
    parser.set_defaults(_subparsers={"info": i, "demo": d, "bench": b, "check": c})
    return parser


def _bench_argv(args: argparse.Namespace, usage: argparse.ArgumentParser) -> list[str]:
    """The benchmark scripts' flags for the parsed ``bench`` arguments, without ``--out``
    (errors: ``bench``'s usage)."""
    argv = ["--quick"] if args.quick else []
    for mode in args.only or []:
        if mode not in MODES:
            usage.error(f"--only: expected one of {', '.join(MODES)}, got {mode!r}")
        argv += ["--only", mode]
    for name, low in (("repeat", 1), ("warmup", 0)):
        value = getattr(args, name)
        if value is not None:
            if value < low:
                usage.error(f"--{name}: expected an int >= {low}, got {value}")
            argv += [f"--{name}", str(value)]
    if args.device is not None:
        if (why := device_error(args.device)) is not None:
            usage.error(why)
    return argv


def _run_benches(args: argparse.Namespace, usage: argparse.ArgumentParser) -> int:
    """``nlgraph bench``: each area in turn (a progress line per area on stderr); the worst
    exit code."""
    argv = _bench_argv(args, usage)
    areas = _bench_areas(args.areas, args.device, usage)
    if args.out is not None and len(areas) > 1:
        usage.error(f"--out: expected a single AREA (use --out-dir for several), got {areas}")
    code = 0
    for i, area in enumerate(areas, start=1):
        if len(areas) > 1:
            print(f"bench [{i}/{len(areas)}]: {area}", file=sys.stderr, flush=True)
        out = args.out if args.out is not None else args.out_dir / f"{area}.md"
        device = ["--device", args.device] if args.device and area in BENCH_DEVICE_AREAS else []
        code = max(code, bench([*argv, *device, "--out", str(out.resolve())], area))
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m nlgraph`` and the ``nlgraph`` script; returns the exit code."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # Errors of a subcommand print that subcommand's usage.
    usage: argparse.ArgumentParser = args._subparsers.get(args.command, parser)
    if extra:
        usage.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "bench":
        return _run_benches(args, usage)
    if args.command == "check":
        try:
            return check(
                args.checkpoint, args.layout, dims=args.dims, mode=args.mode,
                prefix=args.prefix, key=args.key, scale=args.scale, device=args.device,
                seed=args.seed, size=args.size,
            )  # fmt: skip
        except CheckError as exc:
            usage.error(str(exc))
    if args.command == "info":
        for name in ("n", "k", "channels"):
            value = getattr(args, name)
            if value is not None and value < 1:
                usage.error(f"--{name}: expected a positive int, got {value}")
        try:
            return info(args.n, args.k, args.channels, args.device, args.dtype)
        except (ValueError, RuntimeError) as exc:
            usage.error(str(exc).splitlines()[0])
    for name in ("size", "channels"):
        if getattr(args, name) < 1:
            usage.error(f"--{name}: expected a positive int, got {getattr(args, name)}")
    return demo(args.size, args.channels, args.quick, args.seed, args.out_dir)
