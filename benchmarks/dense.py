"""Dense (full-graph) non-local blocks: nlgraph against the naive bmm+softmax formulation.

For every mode and N in {1024, 4096, 16384} (2-D square maps, B=1, C=64, C'=32, float32,
``sub_sample=False``), this measures the forward pass (``torch.no_grad``, eval mode) and a
forward+backward training step (train mode, a fixed random upstream gradient of z, back to
the input and every parameter) of :class:`nlgraph.NonLocalBlock2d` and of
:class:`nlgraph._naive.NaiveNonLocal` holding the same weights: median time, interleaved in
this process, and peak tensor memory plus the largest single allocation (profiler memory
events; on CUDA the peak is :func:`torch.cuda.max_memory_allocated`, and every timed call ends
with :func:`torch.cuda.synchronize`). The naive concatenation builds a 2C'×N×N' tensor, so it
runs only up to N=2304 (48x48, included for its target).

Run ``python benchmarks/dense.py [--quick] [--only MODE] [--repeat R] [--device cuda]
[--out FILE]``; results go to ``benchmarks/results/dense.md`` and record the device. A progress
bar over the cases goes to stderr when it is a terminal (tqdm). Pin the allocator for stable
CPU numbers: ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from nlgraph import NonLocalBlock2d  # noqa: E402
from nlgraph._cli_util import device_error  # noqa: E402
from nlgraph._measure import memory_stats, peak_memory  # noqa: E402
from nlgraph._naive import concat_tensor_bytes, naive_from_block  # noqa: E402
from nlgraph.ops.dispatch import select_kernel  # noqa: E402
from nlgraph.ops.inputs import AggregateInputs  # noqa: E402
from nlgraph.pairwise import MODES  # noqa: E402

CHANNELS, INTER = 64, 32
#: The naive concatenation runs only up to this N (its 2C'×N×N' tensor: 1.3 GiB at 2304).
NAIVE_CONCAT_MAX_N = 2304
#: One dict per case: mode and spatial size (N = H·W, N' = N without sub-sampling).
CASES: list[dict[str, Any]] = [
    {"mode": mode, "size": (side, side)}
    for mode in MODES
    for side in ((32, 48, 64, 128) if mode == "concatenation" else (32, 64, 128))
]
QUICK_SIDES = (32,)
PASSES = ("forward", "fwd+bwd")
T = TypeVar("T")


@dataclass
class Result:
    """One (case, pass) measurement; ``None`` fields were skipped."""

    mode: str
    n: int
    pass_: str
    kernel: str
    t_nl: float
    t_naive: float | None
    mem_nl: int
    mem_naive: int | None
    largest_nl: int
    note: str = ""

    @property
    def speedup(self) -> float | None:
        """naive time / nlgraph time."""
        return None if self.t_naive is None else self.t_naive / self.t_nl

    @property
    def mem_ratio(self) -> float | None:
        """naive peak / nlgraph peak."""
        return None if self.mem_naive is None else self.mem_naive / max(self.mem_nl, 1)


def build(
    mode: str, size: tuple[int, int], seed: int = 0, device: torch.device | str = "cpu"
) -> tuple[NonLocalBlock2d, torch.Tensor]:
    """A randomly initialised block (``zero_init=False``) and a (1, C, H, W) input on ``device``
    (drawn on the CPU, so every device gets the same numbers)."""
    torch.manual_seed(seed)
    block = NonLocalBlock2d(CHANNELS, INTER, mode=mode, sub_sample=False, zero_init=False)
    return block.to(device), torch.randn(1, CHANNELS, *size).to(device)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_label(device: torch.device) -> str:
    """``"cpu"`` or e.g. ``"cuda:0 (NVIDIA H200, CUDA 12.4)"`` for the results file."""
    if device.type != "cuda":
        return "cpu"
    index = torch.cuda.current_device() if device.index is None else device.index
    return f"cuda:{index} ({torch.cuda.get_device_name(index)}, CUDA {torch.version.cuda})"


def kernel_name(block: NonLocalBlock2d, x: torch.Tensor) -> str:
    """NAME of the kernel nlgraph's dispatcher picks for this block and input."""
    with torch.no_grad():
        inp = AggregateInputs(*block.embed(x), block.pairwise())
    return select_kernel(inp, block.backend).NAME


def methods(
    block: NonLocalBlock2d, naive: torch.nn.Module | None, x: torch.Tensor, pass_: str
) -> Iterator[tuple[str, Callable[[], Any], Callable[[], None]]]:
    """Yield (label, step, reset) for nlgraph and the naive block; ``reset`` clears gradients."""
    for label, module in (("nlgraph", block), ("naive", naive)):
        if module is None:
            continue
        if pass_ == "forward":
            module.eval()

            def step(m: torch.nn.Module = module) -> Any:
                with torch.no_grad():
                    return m(x)

            yield label, step, lambda: None
        else:
            module.train()
            xg = x.clone().requires_grad_(True)
            # A fixed random upstream gradient: z.sum() would be degenerate through the
            # train-mode BatchNorm (every gradient before it ~0).
            grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(x.device)

            def step(
                m: torch.nn.Module = module, xg: torch.Tensor = xg, grad: torch.Tensor = grad
            ) -> None:
                m(xg).backward(grad)

            def reset(m: torch.nn.Module = module, xg: torch.Tensor = xg) -> None:
                m.zero_grad(set_to_none=True)
                xg.grad = None

            yield label, step, reset


def measure(
    case: dict[str, Any], pass_: str, warmup: int, repeat: int, device: str = "cpu"
) -> Result:
    """Time (interleaved) and profile the memory of nlgraph and naive on one case.

    On CUDA every timed call ends with a synchronisation (so the kernels are timed, not their
    launch), and the peak is :func:`torch.cuda.max_memory_allocated` above the start.
    """
    mode, size = case["mode"], case["size"]
    n = math.prod(size)
    dev = torch.device(device)
    block, x = build(mode, size, device=dev)
    skip_naive = mode == "concatenation" and n > NAIVE_CONCAT_MAX_N
    naive = None if skip_naive else naive_from_block(block)
    runs = list(methods(block, naive, x, pass_))

    def timed(step: Callable[[], Any], reset: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            reset()
            step()
            synchronize(dev)  # CUDA: time the kernels, not their launch

        return run

    times = _common.interleaved_medians(
        {label: timed(step, reset) for label, step, reset in runs}, warmup=warmup, repeat=repeat
    )
    mems = {}
    for label, step, reset in runs:
        reset()
        stats = memory_stats(step, device=dev)
        if dev.type == "cuda":  # the allocator's own peak; the profiler gives the largest block
            reset()
            stats = stats._replace(peak_bytes=peak_memory(step, device=dev))
        mems[label] = stats
        reset()
    note = ""
    if skip_naive:
        gib = concat_tensor_bytes(n, n, INTER) / 2**30
        note = f"naive skipped: its 2C'×N×N' tensor alone is {gib:.1f} GiB"
    return Result(
        mode=mode, n=n, pass_=pass_, kernel=kernel_name(block, x),
        t_nl=times["nlgraph"], t_naive=times.get("naive"),
        mem_nl=mems["nlgraph"].peak_bytes,
        mem_naive=mems["naive"].peak_bytes if "naive" in mems else None,
        largest_nl=mems["nlgraph"].largest_bytes, note=note,
    )  # fmt: skip


def matmul_gflops(size: int = 2048, repeat: int = 5, device: str = "cpu") -> float:
    """The device's fp32 matmul ceiling: GFLOP/s of a size×size @ size×size sgemm (median)."""
    dev = torch.device(device)
    a, b = torch.randn(size, size, device=dev), torch.randn(size, size, device=dev)

    def mm() -> None:
        torch.mm(a, b)
        synchronize(dev)

    t = _common.interleaved_medians({"mm": mm}, warmup=1, repeat=repeat)["mm"]
    return 2 * size**3 / t / 1e9


def attention_flops(n: int, n_keys: int, inter: int, backward: bool) -> float:
    """FLOPs of the two attention matmuls: forward 4·N·N'·C', backward ≈ 2.5× that."""
    fwd = 4 * n * n_keys * inter
    return fwd * (3.5 if backward else 1.0)


def progress(items: Sequence[T], desc: str) -> Iterable[T]:
    """``items`` with a progress bar on stderr (tqdm; none when stderr is not a terminal or
    tqdm is missing: the per-case lines on stdout remain)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit="case", file=sys.stderr, disable=None, leave=False)


def find(results: Sequence[Result], mode: str, n: int, pass_: str) -> Result | None:
    """The result for (mode, N, pass), or ``None`` when it was not measured."""
    return next((r for r in results if (r.mode, r.n, r.pass_) == (mode, n, pass_)), None)


def targets(results: Sequence[Result]) -> list[str]:
    """The PASS/FAIL lines of the stated performance targets."""

    def no_nxn(r: Result) -> tuple[bool, str]:
        bound = r.n * r.n * 4  # N·N' float32 elements (N' = N without sub-sampling)
        text = f"largest allocation {_common.fmt_bytes(r.largest_nl)} vs N·N' fp32 {_common.fmt_bytes(bound)}"
        return r.largest_nl < bound, text

    lines = []

    def add(
        name: str, r: Result | None, checks: Callable[[Result], list[tuple[bool, str]]]
    ) -> None:
        if r is None or r.t_naive is None:
            lines.append(f"- NOT MEASURED: {name}")
            return
        done = checks(r)
        verdict = "PASS" if all(ok for ok, _ in done) else "FAIL"
        lines.append(f"- {verdict}: {name}: " + "; ".join(text for _, text in done))

    add(
        "embedded Gaussian fwd+bwd N=16384: time ratio ≤ 0.8 and peak memory ≤ 1/10 of naive",
        find(results, "embedded_gaussian", 16384, "fwd+bwd"),
        lambda r: [
            (r.t_nl / r.t_naive <= 0.8, f"time ratio {r.t_nl / r.t_naive:.2f}"),
            (r.mem_nl * 10 <= r.mem_naive, f"memory {_common.fmt_bytes(r.mem_nl)} vs "
             f"{_common.fmt_bytes(r.mem_naive)} (naive/nlgraph {r.mem_ratio:.0f}×)"),
        ],
    )  # fmt: skip
    add(
        "dot product fwd+bwd N=16384: ≥ 10× faster than naive and no N×N allocation",
        find(results, "dot_product", 16384, "fwd+bwd"),
        lambda r: [(r.speedup >= 10, f"speed-up {r.speedup:.1f}×"), no_nxn(r)],
    )
    add(
        "concatenation forward N=2304: ≥ 10× faster than naive and no N×N allocation",
        find(results, "concatenation", 2304, "forward"),
        lambda r: [(r.speedup >= 10, f"speed-up {r.speedup:.1f}×"), no_nxn(r)],
    )
    return lines


def report(results: Sequence[Result], ceiling: float | None) -> list[tuple[str, str]]:
    """Markdown sections: one table per pass, the matmul-ceiling fraction, the targets."""
    f = _common
    headers = ["mode", "N", "kernel", "nlgraph time", "naive time", "nlgraph/naive time",
               "nlgraph peak", "naive peak", "naive/nlgraph memory", "largest nlgraph alloc"]  # fmt: skip
    sections = []
    for pass_ in PASSES:
        rows, notes = [], []
        for r in (r for r in results if r.pass_ == pass_):
            ratio = None if r.t_naive is None else r.t_nl / r.t_naive
            rows.append([r.mode, r.n, r.kernel, f.fmt_time(r.t_nl), f.fmt_time(r.t_naive),
                         f.fmt_ratio(ratio), f.fmt_bytes(r.mem_nl), f.fmt_bytes(r.mem_naive),
                         f.fmt_ratio(r.mem_ratio), f.fmt_bytes(r.largest_nl)])  # fmt: skip
            if r.note:
                notes.append(f"- {r.mode}, N={r.n}: {r.note}")
        if rows:
            title = "Forward (no_grad, eval)" if pass_ == "forward" else "Forward+backward (train)"
            body = f.markdown_table(headers, rows) + ("\n\n" + "\n".join(notes) if notes else "")
            sections.append((title, body))
    eg = find(results, "embedded_gaussian", 16384, "fwd+bwd")
    if ceiling is not None and eg is not None:
        flops = attention_flops(eg.n, eg.n, INTER, backward=True)
        rate = flops / eg.t_nl / 1e9
        sections.append((
            "Matmul ceiling",
            f"- fp32 sgemm 2048×2048 @ 2048×2048: {ceiling:.0f} GFLOP/s (median)\n"
            f"- embedded Gaussian fwd+bwd N=16384: attention FLOPs 3.5·4·N·N'·C' = "
            f"{flops / 1e9:.0f} GFLOP in {f.fmt_time(eg.t_nl)} (whole block) = {rate:.0f} GFLOP/s, "
            f"{100 * rate / ceiling:.0f} % of the ceiling",
        ))  # fmt: skip
    sections.append(("Targets", "\n".join(targets(results))))
    return sections


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the results and write the markdown file. Returns 0."""
    parser = _common.make_parser("dense", __doc__.split("\n", 1)[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    args = parser.parse_args(argv)
    if (why := device_error(args.device)) is not None:
        parser.error(why)
    device = torch.device(args.device)
    repeat = 2 if args.quick else args.repeat
    cases = [
        c for c in CASES
        if (not args.only or c["mode"] in args.only)
        and (not args.quick or c["size"][0] in QUICK_SIDES)
    ]  # fmt: skip
    info = _common.machine_info()
    info["device"] = device_label(device)
    print("\n".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    results = []
    runs = [(case, pass_) for case in cases for pass_ in PASSES]
    bar = progress(runs, desc="dense")

    def say(line: str) -> None:
        write = getattr(bar, "write", None)  # tqdm.write keeps the bar below the lines
        if write is None:
            print(line, flush=True)
        else:
            write(line, file=sys.stdout)
            sys.stdout.flush()

    for case, pass_ in bar:
        r = measure(case, pass_, warmup=args.warmup, repeat=repeat, device=args.device)
        results.append(r)
        say(
            f"{r.mode:>17} N={r.n:<6} {pass_:<8} nlgraph {_common.fmt_time(r.t_nl):>9} "
            f"naive {_common.fmt_time(r.t_naive):>9} | peak {_common.fmt_bytes(r.mem_nl):>9} "
            f"vs {_common.fmt_bytes(r.mem_naive):>9}"
        )
    needs_ceiling = find(results, "embedded_gaussian", 16384, "fwd+bwd") is not None
    ceiling = matmul_gflops(device=args.device) if needs_ceiling else None
    sections = report(results, ceiling)
    info["load average (1 min) at end"] = _common.load_average()
    out = _common.write_results(
        args.out, "Dense non-local blocks: nlgraph vs naive", sections,
        _common.command_line("dense", argv), info,
    )  # fmt: skip
    for heading, body in sections:
        print(f"\n## {heading}\n\n{body}")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
