"""Video classification in miniature: an early flash decides what a later motion means.

The setting of the non-local paper's Kinetics experiments (Wang et al., "Non-local Neural
Networks", CVPR 2018: a C2D video network with and without non-local blocks), shrunk to
generated clips of 8 frames of 24x24 RGB pixels:

- frames 0-1: a *flash*, the whole frame dimly red or blue (the cue);
- frames 2-3: nothing (noise only);
- frames 4-7: a red or a blue 3x3 square moves 2 px per frame up, down, left or right, and a
  static square of the other colour stands elsewhere (so these frames always show both colours).

The class (8) is the square's direction and whether its colour is the flash's. The direction
is local (3 frames show it); the colour relation links frames 0-1 to frames 4-7, which no short
window of frames shows. Half of the squares have the flash's colour, independently of
everything else, so a network that sees the direction but cannot relate the two events scores
at most 50% (chance: 12.5%).

Models (the same network, ``--models`` picks a subset):

- ``c2d``: stem (3x3x3 conv, stride 2 in space: the only temporal kernel, as the inflated
  kernels of I3D) -> stage 1 (two 1x3x3 convs, the first with stride 2 in space) -> stage 2
  (two 1x3x3 convs) -> spatial max, temporal mean -> linear. Every unit sees 3 consecutive
  frames; pooling the max over space and the *mean* over time keeps the frames additive, so
  nothing after the convolutions relates frames either (a max over time would: it can count
  the colours seen over the whole clip);
- ``nl_dense``: ``nlgraph.NonLocalBlock3d`` (embedded Gaussian, C' = 16, BatchNorm zeroed so it
  starts as the identity) after stage 1, on the 8x6x6 = 288 positions with keys max-pooled to
  8x3x3 = 72, over the full graph, as in the paper;
- ``nl_window``: the same block on ``nlgraph.graphs.Window(1)``: the keys within one pooled
  cell and one frame of the query (a 3x3x3 neighbourhood, at most 27 keys);
- ``nl_temporal``: the same block on ``nlgraph.graphs.TemporalGroups(4)``: every place, but
  only within frames 0-3 or 4-7 (36 keys; the Caffe2/SlowFast temporal groups).

Run: ``python examples/video_action.py --threads 1`` (3 seeds of the 4 models).
Runtime: about 8 minutes with --threads 1 on a 2-core CPU. It prints a table and writes
``<out-dir>/video_action.md`` and ``.png`` (default ``./nlgraph-results``; the repository's copy
is in ``examples/results/``, the experiment's page is ``docs/video_action.md``). ``--quick`` is
a run of seconds. Everything is generated from fixed seeds; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import _example_utils as eu
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlgraph import NonLocalBlock3d
from nlgraph._measure import format_bytes, memory_stats
from nlgraph.graphs import TemporalGroups, Window

OUT_DIR = eu.OUT_DIR
SMOKE_ARGS = ["--quick", "--quiet"]
MODELS = ["c2d", "nl_dense", "nl_window", "nl_temporal"]
NAME = "video_action"

PALETTE = torch.tensor([[0.95, 0.2, 0.15], [0.25, 0.4, 1.0]])  # red, blue
DIRECTIONS = torch.tensor([[-1, 0], [1, 0], [0, -1], [0, 1]])  # (dy, dx): up, down, left, right
MOVES = ["up", "down", "left", "right"]
CLASSES = [f"{m}, {c}" for c in ("other colour", "flash's colour") for m in MOVES]
CUE_FRAMES = (0, 1)
MOTION_FRAMES = (4, 5, 6, 7)
FRAMES = 8
#: Columns of the record that :func:`make_clips` returns with the clips.
RECORD = ["cue_colour", "colour", "dir", "same", "y", "x"]
N_COLOURS = len(PALETTE)
SPEED = 2  # pixels per frame
OBJ = 3  # side of the squares in pixels


# ----------------------------------------------------------------------------- data
def make_clips(n: int, size: int, seed: int, speed: int = SPEED) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` clips (n, 3, 8, size, size), their labels (n,) and a record (n, 8) of each clip.

    The record's columns are :data:`RECORD`: the cue's colour and top-left corner, the moving
    square's colour, direction and start corner, and whether its colour is the cue's;
    :func:`label_of` recomputes the label from it. The moving square starts where every
    direction keeps it inside the frame (its start says nothing about its direction); its
    colour is the cue's in half of the clips. Static squares of the other colours stand in the
    motion frames, away from the moving square's path, so that those frames always show every
    colour once.
    """
    rng = torch.Generator().manual_seed(seed)
    clips = 0.05 + 0.04 * torch.randn(n, 3, FRAMES, size, size, generator=rng)
    labels = torch.empty(n, dtype=torch.long)
    record = torch.empty(n, len(RECORD), dtype=torch.long)
    steps = torch.arange(len(MOTION_FRAMES))[:, None]
    lo, hi = speed * (len(MOTION_FRAMES) - 1), size - speed * (len(MOTION_FRAMES) - 1) - OBJ
    for i in range(n):
        cue_colour = int(torch.randint(N_COLOURS, (1,), generator=rng))
        same = int(torch.randint(2, (1,), generator=rng))
        shift = int(torch.randint(1, N_COLOURS, (1,), generator=rng))
        colour = cue_colour if same else (cue_colour + shift) % N_COLOURS
        direction = int(torch.randint(4, (1,), generator=rng))
        start = torch.randint(lo, hi + 1, (2,), generator=rng)
        path = start + speed * steps * DIRECTIONS[direction]  # (frames, 2) top-left corners
        taken = [path]
        for other in range(N_COLOURS):
            if other == colour:
                continue
            while True:  # a static square clear of the path and of the other static squares
                corner = torch.randint(0, size - OBJ + 1, (2,), generator=rng)
                if all(bool(((p - corner).abs().amax(-1) > OBJ).all()) for p in taken):
                    break
            taken.append(corner[None])
            for t in MOTION_FRAMES:
                y, x = corner.tolist()
                clips[i, :, t, y : y + OBJ, x : x + OBJ] = PALETTE[other][:, None, None]
        for t, (y, x) in zip(MOTION_FRAMES, path.tolist()):
            clips[i, :, t, y : y + OBJ, x : x + OBJ] = PALETTE[colour][:, None, None]
        for t in CUE_FRAMES:  # the flash: the whole frame in the cue's colour, dimmed
            clips[i, :, t] = 0.6 * PALETTE[cue_colour][:, None, None] + 0.04 * torch.randn(
                size, size, generator=rng
            )
        record[i] = torch.tensor([cue_colour, colour, direction, same, *start.tolist()])
        labels[i] = 4 * same + direction
    return clips, labels, record


def label_of(record: Tensor) -> Tensor:
    """The label from a clip's record: 4 x (the square has the cue's colour) + direction."""
    c = {k: record[:, i] for i, k in enumerate(RECORD)}
    return 4 * (c["colour"] == c["cue_colour"]).long() + c["dir"]


# ----------------------------------------------------------------------------- models
def _conv(c_in: int, c_out: int, kernel: tuple[int, int, int], stride: int = 1) -> nn.Sequential:
    """Conv3d (stride in space only, same padding) -> BatchNorm3d -> ReLU."""
    pad = tuple(k // 2 for k in kernel)
    s = (1, stride, stride)
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, kernel, stride=s, padding=pad, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    )


class VideoNet(nn.Module):
    """A small C2D/I3D-style 3-D CNN, optionally with one non-local block after stage 1.

    Args:
        graph (str or None): ``None`` (no block, ``c2d``), ``"dense"``, ``"window"`` or
            ``"temporal"``: the block's edge set.
        width (int): channels of stage 1 and 2 (the stem has half).
    """

    def __init__(self, graph: str | None, width: int = 32) -> None:
        super().__init__()
        self.stem = _conv(3, width // 2, (3, 3, 3), stride=2)  # the only temporal kernel
        self.stage1 = nn.Sequential(
            _conv(width // 2, width, (1, 3, 3), stride=2), _conv(width, width, (1, 3, 3))
        )
        self.block: NonLocalBlock3d | None = None
        if graph is not None:
            spec = {"dense": "full", "window": Window(1), "temporal": TemporalGroups(4)}[graph]
            self.block = NonLocalBlock3d(width, width // 2, graph=spec)
        self.stage2 = nn.Sequential(_conv(width, width, (1, 3, 3)), _conv(width, width, (1, 3, 3)))
        self.head = nn.Linear(width, len(CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (B, 8) of clips (B, 3, T, H, W)."""
        h = self.stage1(self.stem(x))
        if self.block is not None:
            h = self.block(h)  # the figure calls the block itself, with return_attention
        return self.head(self.stage2(h).amax((3, 4)).mean(2))  # max over space, mean over time


# ----------------------------------------------------------------------------- training
def evaluate(model: nn.Module, clips: Tensor, labels: Tensor, batch_size: int) -> float:
    """Top-1 accuracy (a fraction) of ``model`` in evaluation mode."""
    model.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(clips), batch_size):
            right += int(
                (model(clips[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum()
            )
    model.train()
    return right / len(clips)


def train(name: str, seed: int, data: dict, args: argparse.Namespace) -> dict:
    """Train one model on one seed; the test accuracy after every epoch is its curve."""
    torch.manual_seed(seed)
    graph = None if name == "c2d" else name.removeprefix("nl_")
    model = VideoNet(graph, width=args.width)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = -(-len(data["train_x"]) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.15
    )
    order_rng = torch.Generator().manual_seed(seed)
    curve = []
    start = time.perf_counter()
    bar = eu.progress(range(args.epochs), quiet=args.quiet, desc=f"{name} seed {seed}")
    for _ in bar:
        order = torch.randperm(len(data["train_x"]), generator=order_rng)
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            loss = F.cross_entropy(model(data["train_x"][idx]), data["train_y"][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        curve.append(evaluate(model, data["test_x"], data["test_y"], args.batch_size))
    seconds = time.perf_counter() - start
    return dict(
        model=model, curve=curve, seconds=seconds, acc=curve[-1],
        params=sum(p.numel() for p in model.parameters()),
    )  # fmt: skip


def step_memory(name: str, data: dict, batch_size: int, width: int) -> int:
    """Peak bytes of tensors allocated during one training step (forward, backward, Adam)."""
    torch.manual_seed(0)
    graph = None if name == "c2d" else name.removeprefix("nl_")
    model = VideoNet(graph, width=width)
    opt = torch.optim.Adam(model.parameters())
    x, y = data["train_x"][:batch_size], data["train_y"][:batch_size]

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # Adam's state exists before the measured step
    return memory_stats(step).peak_bytes


def main(argv: list[str] | None = None) -> None:
    """Train every model on every seed, print the table, write the .md and the .png."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000, help="training clips")
    parser.add_argument("--test", type=int, default=500, help="test clips")
    parser.add_argument("--size", type=int, default=24, help="frame side in pixels")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=6e-3, help="peak of the one-cycle schedule")
    parser.add_argument("--width", type=int, default=32, help="channels of stages 1-2")
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    eu.add_common_args(parser)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.quick:
        args.train, args.test, args.epochs, args.seeds = 48, 32, 2, min(args.seeds, 2)
    eu.setup(args)
    wall = time.perf_counter()
    train_x, train_y, _ = make_clips(args.train, args.size, seed=1000)
    test_x, test_y, test_rec = make_clips(args.test, args.size, seed=2000)
    data = dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, test_rec=test_rec)
    results: dict[str, list[dict]] = {}
    for name in args.models:
        results[name] = [train(name, s, data, args) for s in range(args.seeds)]
        mem = step_memory(name, data, args.batch_size, args.width)
        for r in results[name]:
            r["memory"] = mem
        accs = [100 * r["acc"] for r in results[name]]
        print(f"{name}: test accuracy {eu.mean_std(accs)}%", flush=True)
    wall_s = time.perf_counter() - wall
    write_report(results, args, argv, data, wall_s)


# ----------------------------------------------------------------------------- report
def _edges_per_query(name: str, size: int) -> str:
    """How many keys a query of the block sees (max over queries), at this frame size."""
    if name == "c2d":
        return "-"
    side = -(-size // 4)  # two stride-2 convs
    shape, pooled = (FRAMES, side, side), (FRAMES, side // 2, side // 2)
    if name == "nl_dense":
        return f"{FRAMES * (side // 2) ** 2} (all)"
    spec = Window(1) if name == "nl_window" else TemporalGroups(4)
    graph = spec.build(shape, pooled, (1, 2, 2))
    return str(graph.index.shape[-1])


def _verdicts(results: dict) -> list[str]:
    """One line per non-local model: its gain over ``c2d`` in points, and whether it wins."""
    if "c2d" not in results:
        return []
    base = [100 * r["acc"] for r in results["c2d"]]
    lines = []
    for name, runs in results.items():
        if name == "c2d":
            continue
        accs = [100 * r["acc"] for r in runs]
        gain = statistics.mean(accs) - statistics.mean(base)
        spread = max(accs) - min(accs) + max(base) - min(base)
        won = gain > 5 and min(accs) > max(base)
        verdict = "**wins** (every seed above every `c2d` seed)" if won else "**does not win**"
        lines.append(
            f"- `{name}` vs `c2d`: {gain:+.1f} points (mean over {len(runs)} seeds; the two "
            f"models' seed ranges add up to {spread:.1f} points): {verdict}."
        )
    return lines


def write_report(
    results: dict, args: argparse.Namespace, argv: list[str], data: dict, wall_s: float
) -> None:
    rows = [
        "| model | keys per query | parameters | top-1 accuracy (%) | train time / seed | memory of a training step |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():
        accs = [100 * r["acc"] for r in runs]
        secs = [r["seconds"] for r in runs]
        rows.append(
            f"| `{name}` | {_edges_per_query(name, args.size)} | {runs[0]['params']:,} | "
            f"{eu.mean_std(accs)} | {eu.mean_std(secs, 0)} s | {format_bytes(runs[0]['memory'])} |"
        )
    table = "\n".join(rows)
    print(table)
    md = [
        f"# Video action in miniature (examples/{NAME}.py)",
        "",
        "Generated clips of 8 frames of "
        f"{args.size}x{args.size} px: frames 0-1 flash red or blue, frames 2-3 are empty, and in "
        "frames 4-7 a red or blue square moves up, down, left or right while a square of the "
        "other colour stands still. The class (8) is the direction and whether the moving "
        "square has the flash's colour. A network that cannot relate frames 0-1 to frames 4-7 "
        "can get the direction but only guess the colour relation: at most 50%; chance is 12.5%.",
        "",
        "Top-1 accuracy on the test clips after the last epoch; train time per seed includes "
        "the per-epoch test; memory is the peak of the tensors allocated during one training "
        f"step of a batch of {args.batch_size} (forward, backward, Adam), "
        "`nlgraph._measure.memory_stats`.",
        "",
        table,
        "",
        *_verdicts(results),
        "",
        f"- data: {args.train} training / {args.test} test clips (fixed generator seeds 1000 "
        f"and 2000), {args.epochs} epochs, batch {args.batch_size}, Adam with a one-cycle lr "
        f"peaking at {args.lr}, width {args.width}",
        *eu.run_lines(f"{NAME}.py", argv, args.seeds, wall_s),
        "",
        f"![training curves and attention]({NAME}.png)",
    ]
    out = Path(args.out_dir)
    (out / f"{NAME}.md").write_text("\n".join(md) + "\n")
    _plot(results, data, out / f"{NAME}.png")


def _queries(record: Tensor, size: int) -> list[tuple[str, int, int, int]]:
    """Three query positions (label, t, y, x in input pixels) of a clip for the figure."""
    c = dict(zip(RECORD, record.tolist()))
    dy, dx = DIRECTIONS[c["dir"]].tolist()
    out = [("the flash", CUE_FRAMES[-1], size // 2, size // 2)]
    for step in (1, len(MOTION_FRAMES) - 1):
        y = c["y"] + SPEED * step * dy + OBJ // 2
        x = c["x"] + SPEED * step * dx + OBJ // 2
        out.append(("the moving square", MOTION_FRAMES[step], y, x))
    return out


def _plot(results: dict, data: dict, path: Path) -> None:
    """Training curves (left) and :func:`_plot_attention` (right) into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(16, 7.5))
    grid = fig.add_gridspec(4, 1 + FRAMES, width_ratios=[3.2] + [1] * FRAMES)
    ax = fig.add_subplot(grid[:, 0])
    for name, runs in results.items():
        curves = torch.tensor([r["curve"] for r in runs]) * 100
        epochs = range(1, curves.shape[1] + 1)
        line = ax.plot(epochs, curves.mean(0), marker="o", ms=3, label=name)[0]
        if len(runs) > 1:
            ax.fill_between(
                epochs, curves.min(0).values, curves.max(0).values,
                color=line.get_color(), alpha=0.2,
            )  # fmt: skip
    ax.axhline(50, color="grey", ls=":", lw=1)
    ax.set(xlabel="epoch", ylabel="test top-1 accuracy (%)", ylim=(0, 102))
    ax.set_title("test accuracy (mean, min-max over seeds)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _plot_attention(fig, grid, results, data)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_attention(fig: object, grid: object, results: dict, data: dict) -> None:
    """Row 0: a test clip; rows 1-3: the dense block's attention of three query positions."""
    clips, record = data["test_x"], data["test_rec"]
    index = 0
    clip = clips[index : index + 1]
    model = results["nl_dense"][0]["model"].eval() if "nl_dense" in results else None
    size = clip.shape[-1]
    frames = clip[0].permute(1, 2, 3, 0).clamp(0, 1)  # (T, H, W, 3)
    queries = _queries(record[index], size)
    attn = None
    if model is not None:
        with torch.no_grad():
            h = model.stage1(model.stem(clip))
            _, att = model.block(h, return_attention=True)
        qshape = tuple(h.shape[2:])
        kshape = (qshape[0], qshape[1] // 2, qshape[2] // 2)  # pool (1, 2, 2)
        attn = att.to_dense()[0].reshape(-1, *kshape)  # (N, T, H', W')
        stride = size // qshape[1]
    label = CLASSES[int(data["test_y"][index])]
    for t in range(FRAMES):
        ax = fig.add_subplot(grid[0, 1 + t])
        ax.imshow(frames[t].numpy())
        ax.set_title(f"frame {t}" + (f"\nclass: {label}" if t == 0 else ""), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        for row, (qname, qt, qy, qx) in enumerate(queries, start=1):
            ax = fig.add_subplot(grid[row, 1 + t])
            ax.imshow(frames[t].numpy() * 0.5)
            if attn is not None:
                q = (qt * qshape[1] + qy // stride) * qshape[2] + qx // stride
                weights = attn[q, t].numpy()
                vmax = float(attn[q].max())
                ax.imshow(
                    weights, cmap="magma", alpha=0.75, vmin=0, vmax=vmax,
                    extent=(-0.5, size - 0.5, size - 0.5, -0.5), interpolation="nearest",
                )  # fmt: skip
                ax.set_title(f"{float(weights.sum()):.0%}", fontsize=7)
            if t == qt:
                ax.plot([qx], [qy], marker="x", color="cyan", ms=8, mew=2)
            if t == 0:
                ax.set_ylabel(f"query:\n{qname}\n(frame {qt})", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])


if __name__ == "__main__":
    main()
