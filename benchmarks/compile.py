"""``torch.compile`` of the non-local block: eager against compiled (inductor).

For N in {1024, 4096} (32x32 and 64x64 maps, B=1, C=64, C'=32, float32, ``sub_sample=False``)
and the graphs ``"full"`` (dense), ``KNN(16)`` (rebuilt in every forward), ``Window(7)``
(radius 7: up to 15x15 = 225 keys per query) and a prebuilt RegularGraph (a ``KNN(16)`` graph
built once and passed as ``block(x, graph=g)``), this measures :class:`nlgraph.NonLocalBlock2d`
eager and ``torch.compile(block, fullgraph=True, dynamic=False)``: the forward pass
(``torch.no_grad``, eval mode) and a forward+backward training step (train mode, a fixed random
upstream gradient): median time after warm-up, interleaved in this process, and the time of the
first compiled call (tracing and inductor's C++ compilation). Eager runs sparse graphs on the
``csr`` kernel (sparse-matrix products); compiled, where sparse tensors do not trace, on
``regular`` (gather + softmax, fused by inductor): the table names both.

Run ``python benchmarks/compile.py [--quick] [--repeat R] [--out FILE]``; results go to
``benchmarks/results/compile.md``. ``--quick`` runs the dense block at N=256 only (a few
seconds). Pin the allocator for stable numbers:
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776``.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from nlgraph import NonLocalBlock2d  # noqa: E402
from nlgraph.graphs import KNN, Window  # noqa: E402
from nlgraph.ops.dispatch import select_kernel  # noqa: E402
from nlgraph.ops.inputs import AggregateInputs  # noqa: E402

CHANNELS, INTER = 64, 32
GRAPHS = ("full", "KNN(16)", "Window(7)", "prebuilt KNN(16)")
#: One dict per case: graph label and spatial size (N = H·W, N' = N without sub-sampling).
CASES: list[dict[str, Any]] = [
    {"graph": graph, "size": (side, side)} for side in (32, 64) for graph in GRAPHS
]
QUICK_CASES: list[dict[str, Any]] = [{"graph": "full", "size": (16, 16)}]
PASSES = ("forward", "fwd+bwd")


def build(graph: str, size: tuple[int, int]) -> tuple[NonLocalBlock2d, torch.Tensor, Any]:
    """A block (``zero_init=False``), a (1, C, H, W) input and the graph to pass to forward
    (``None``: the block's own spec builds it)."""
    torch.manual_seed(0)
    spec: Any = {"full": "full", "Window(7)": Window(7)}.get(graph, KNN(16))
    block = NonLocalBlock2d(CHANNELS, INTER, sub_sample=False, zero_init=False, graph=spec)
    x = torch.randn(1, CHANNELS, *size)
    given = block.build_graph(x) if graph.startswith("prebuilt") else None
    return block, x, given


def kernel_name(block: NonLocalBlock2d, x: torch.Tensor, given: Any) -> str:
    """NAME of the kernel the dispatcher picks in eager."""
    with torch.no_grad():
        q, k, v = block.embed(x)
        graph = given if given is not None else block.build_graph(x, q, k)
        inp = AggregateInputs(q, k, v, block.pairwise(), graph)
    return select_kernel(inp, block.backend).NAME


def step_fn(
    fn: Callable[..., Any], block: torch.nn.Module, x: torch.Tensor, given: Any, pass_: str
) -> Callable[[], None]:
    """One call of ``fn`` (the block or its compiled form) for ``pass_``, gradients cleared."""
    kwargs = {} if given is None else {"graph": given}
    if pass_ == "forward":
        block.eval()

        def forward() -> None:
            with torch.no_grad():
                fn(x, **kwargs)

        return forward
    block.train()
    xg = x.clone().requires_grad_(True)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))

    def train_step() -> None:
        block.zero_grad(set_to_none=True)
        xg.grad = None
        fn(xg, **kwargs).backward(grad)

    return train_step


def measure(case: dict[str, Any], pass_: str, warmup: int, repeat: int) -> list[Any]:
    """One table row: eager and compiled medians, the first compiled call, the kernels."""
    block, x, given = build(case["graph"], case["size"])
    kernel = kernel_name(block, x, given)
    twin = copy.deepcopy(block)
    torch._dynamo.reset()
    compiled = torch.compile(twin, fullgraph=True, dynamic=False)
    eager_step = step_fn(block, block, x, given, pass_)
    compiled_step = step_fn(compiled, twin, x, given, pass_)
    start = time.perf_counter()
    compiled_step()
    first = time.perf_counter() - start
    times = _common.interleaved_medians(
        {"eager": eager_step, "compiled": compiled_step}, warmup=warmup, repeat=repeat
    )
    n = case["size"][0] * case["size"][1]
    return [
        case["graph"], n, pass_, f"{kernel} / regular" if kernel == "csr" else kernel,
        _common.fmt_time(times["eager"]), _common.fmt_time(times["compiled"]),
        _common.fmt_ratio(times["eager"] / times["compiled"]), _common.fmt_time(first),
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = _common.make_parser("compile", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    repeat = 2 if args.quick else args.repeat
    info = _common.machine_info()
    rows = []
    for case in QUICK_CASES if args.quick else CASES:
        for pass_ in PASSES:
            rows.append(measure(case, pass_, args.warmup, repeat))
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
    info["load average (1 min) at end"] = _common.load_average()
    headers = [
        "graph", "N", "pass", "kernel (eager / compiled)", "eager", "compiled",
        "speed-up", "first compiled call",
    ]  # fmt: skip
    body = (
        f"B=1, C={CHANNELS}, C'={INTER}, float32, `sub_sample=False`, embedded Gaussian; "
        "`torch.compile(fullgraph=True, dynamic=False)` (inductor, default mode); median of "
        f"{repeat} interleaved runs after {args.warmup} warm-up; speed-up = eager time / "
        "compiled time (higher: compiled is faster); the first compiled call includes tracing "
        "and compilation (inductor's on-disk cache may shorten it).\n\n"
        + _common.markdown_table(headers, rows)
    )
    out = _common.write_results(
        args.out,
        "torch.compile: eager vs compiled non-local block",
        [("Results", body)],
        _common.command_line("compile", argv),
        info,
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
