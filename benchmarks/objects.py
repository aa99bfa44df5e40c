"""The object relation module over R boxes: full graph per image vs k-nearest boxes.

For R in {100, 300, 1000, 3000} boxes in one 800x800 image (random positions, sides 16-200 px),
:class:`nlgraph.nn.ObjectRelation` with the paper's configuration (C = 1024 features, 16 heads,
d_k = 64, d_g = 64, geometry as in the official code) runs on the full graph (R² edges, as in
Hu et al.) and on each box's k = 16 nearest boxes by centre distance. Each call includes
building the graph and the pair geometry. Forward (no_grad) and forward+backward: median time
(interleaved in this process) and peak tensor memory.

Run ``python benchmarks/objects.py [--quick] [--repeat R] [--device cuda] [--out FILE]``;
results go to ``benchmarks/results/objects.md`` (``objects-cuda.md`` with ``--device cuda``).
Pin the allocator on CPU: ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from nlgraph._measure import memory_stats  # noqa: E402
from nlgraph.nn import ObjectRelation  # noqa: E402

CHANNELS, HEADS, K = 1024, 16, 16
SIZES = (100, 300, 1000, 3000)
QUICK_SIZES = (100,)


def scene(r: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (R, C), boxes (R, 4)) of one image, seeded by R."""
    gen = torch.Generator().manual_seed(r)
    xy = torch.rand(r, 2, generator=gen) * 700
    wh = torch.rand(r, 2, generator=gen) * 184 + 16
    boxes = torch.cat([xy, xy + wh], 1)
    return torch.randn(r, CHANNELS, generator=gen).to(device), boxes.to(device)


def cases(r: int, backward: bool, device: torch.device) -> dict[str, Callable[[], Any]]:
    """label -> one call (forward, or forward+backward) of each graph at R boxes."""
    x, boxes = scene(r, device)
    x.requires_grad_(backward)
    grad = torch.randn_like(x)
    fns = {}
    for label, graph in (("full", None), (f"k-NN (k={K})", K)):
        torch.manual_seed(0)
        module = ObjectRelation(CHANNELS, num_heads=HEADS, graph=graph).to(device)

        def fn(module: ObjectRelation = module) -> None:
            if backward:
                x.grad = None
                module.zero_grad(set_to_none=True)
                module(x, boxes).backward(grad)
            else:
                with torch.no_grad():
                    module(x, boxes)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        fns[label] = fn
    return fns


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the results and write the markdown file. Returns 0."""
    parser = _common.make_parser("objects", __doc__.split("\n", 1)[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and args.out == _common.RESULTS_DIR / "objects.md":
        args.out = _common.RESULTS_DIR / "objects-cuda.md"
    repeat = 2 if args.quick else args.repeat
    info = _common.machine_info()
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
    print("\n".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    sections = []
    for backward in (False, True):
        rows = []
        for r in QUICK_SIZES if args.quick else SIZES:
            fns = cases(r, backward, device)
            times = _common.interleaved_medians(fns, warmup=args.warmup, repeat=repeat)
            full = times["full"]
            for name, fn in fns.items():
                peak = memory_stats(fn, device=device).peak_bytes
                edges = r * r if name == "full" else r * min(K, r)
                rows.append([r, name, f"{edges:,}", _common.fmt_time(times[name]),
                             _common.fmt_ratio(times[name] / full), _common.fmt_bytes(peak)])  # fmt: skip
                print(f"R={r:<5} {'train' if backward else 'forward':<7} {name:<12} "
                      f"{_common.fmt_time(times[name]):>9} peak {_common.fmt_bytes(peak):>9}",
                      flush=True)  # fmt: skip
        heading = "Forward + backward" if backward else "Forward (no_grad)"
        table = _common.markdown_table(
            ["R", "graph", "edges", "time", "time / full", "peak memory"], rows
        )
        sections.append((heading, table))
    setup = (
        f"`ObjectRelation({CHANNELS}, num_heads={HEADS}, key_channels=64, geo_channels=64)`, "
        f"one image, float32 on {device.type}; each call builds the graph (`box_graph`) and the "
        "pair geometry and runs the module; backward reaches x and every weight."
    )
    sections.insert(0, ("Setup", setup))
    out = _common.write_results(
        args.out, "Object relation module: full graph vs k-NN", sections,
        _common.command_line("objects", argv), info,
    )  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
