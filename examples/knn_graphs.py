r"""k-NN graphs for a non-local block: exact vs clustered (ivf) search, and refresh schedules.

A segmentation-like task on generated images where a pixel's label lives in a *distant* region
of *matching content*. Every S x S image holds a few pairs of small square patches. The two
patches of a pair carry the same random *key* code (``--key-channels`` extra input channels: a
random unit vector per pair, plus noise); one of them (the *source*) is painted in one of
``--colours`` colours, the other (the *target*) is grey. Every patch pixel is labelled with its
pair's colour: a source pixel's own colour tells it, a target pixel's label can only be read
from the source patch with the same key, at least S/3 pixels away (far outside the 5x5
receptive field of the convolutions). The background is ignored by the loss and the metrics.

The network (the same in every row): two 3x3 convs at full resolution, one
:class:`nlgraph.NonLocalBlock2d` (embedded Gaussian, ``sub_sample=True``: N = S² queries over
N' = S²/4 pooled keys, 1024 over 256 at S = 32), a 1x1 head. Rows of the experiment:

- ``baseline``: no non-local block (target pixels at chance: the convs cannot see the source);
- ``dense``: ``graph="full"``, every pixel attends to every key;
- ``knn``: ``graph=KNN(k)``, exact k-NN in logit space rebuilt every forward (T = 1);
- ``knn-ivf`` (library defaults) and ``knn-ivf-p<P>`` (``n_probe=P``): ``KNN(k, search="ivf")``,
  clustered approximate k-NN (k-means lists of the keys, each query scans the keys of its
  ``n_probe`` best lists), rebuilt every forward;
- ``knn-T<T>``: ``KNN(k, refresh_every=T)``, exact search; in training the block keeps the
  graph it built and rebuilds it every T-th forward, so T - 1 of every T steps run on the graph
  of an *earlier batch* (other images). Evaluation builds the graph every call (eval mode).

The block is built with ``zero_init=False``: with the zero-initialised BatchNorm (the default)
θ and φ get no gradient until the norm's weight has grown, and within this budget the ``knn``
row then reached 72.5 / 95.0 / 95.7% on seeds 0 / 1 / 2 (2000 images, 4 epochs, measured while
developing this example) against 100.0% by the second epoch without it (seed 0): a k-NN graph
only trains the logits of the edges it holds, so a slow start leaves it stuck on poor edges.

Each row reports the test accuracy on the target pixels (relational) and on the source pixels,
the mean training-step time (forward + backward + optimiser), the mean forward time of the
non-local block in training (graph build or reuse + aggregation, via forward hooks) and the
total training time.

The trained ``knn`` model (first seed) also measures the clustered search itself on its test
features: recall@k against the exact graph and build time per batch, for n_probe = 1, 2, 4, ...
up to every list.

Run::

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776 python examples/knn_graphs.py --threads 1

Runtime: about 16 minutes with ``--threads 1`` on a 2-core CPU (950 s measured: 18 trainings
of 940 steps each). ``--threads 1``: on a shared 2-core machine, two intra-op threads per
process competing with other processes made every step several times slower (the miniature
run: 60 s with 2 threads, 5 s with 1, measured here); one thread keeps the step times
comparable between rows. It prints the table and writes ``<out-dir>/knn_graphs.md`` and
``<out-dir>/knn_graphs.png``
(accuracy and step time vs T; training curves). Everything is generated from fixed seeds;
nothing is downloaded. ``SMOKE_ARGS`` (``--quick``) is a run of a few seconds over every row
(the example test runs it).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

import nlgraph
from nlgraph import NonLocalBlock2d
from nlgraph.graphs import KNN, GraphContext, GraphState, knn_recall
from nlgraph.graphs.ivf import default_clusters, default_probe

#: Default results folder, relative to the working directory (never the tracked
#: examples/results/: regenerate those with ``--out-dir examples/results``).
OUT_DIR = "nlgraph-results"

#: Source colours (RGB in [0, 1]); targets are GREY.
COLOURS = torch.tensor(
    [[0.9, 0.15, 0.1], [0.1, 0.3, 0.95], [0.1, 0.8, 0.2], [0.95, 0.85, 0.1], [0.7, 0.2, 0.8]]
)
GREY = torch.tensor([0.55, 0.55, 0.55])
IGNORE = -100

#: The miniature run of the example test: a few seconds, every row, every code path.
SMOKE_ARGS: list[str] = ["--quick", "--quiet"]
#: The sizes ``--quick`` sets (each can still be given explicitly).
QUICK = dict(
    size=16, pairs=[1, 2], train_images=64, test_images=16, epochs=2, batch_size=16, width=8,
    k=4, ivf_probes=[0, 2], refresh=[2, 4], headline_seeds=2, threads=1,
)  # fmt: skip


# ----------------------------------------------------------------------------- data
@dataclass
class Pairs:
    """Generated images: ``images`` (M, 3 + D, S, S), ``labels`` (M, S, S) (IGNORE on the
    background), ``role`` (M, S, S) int8: 0 background, 1 source, 2 target."""

    images: Tensor
    labels: Tensor
    role: Tensor


def generate(num: int, size: int, args: argparse.Namespace, seed: int) -> Pairs:
    """``num`` images of ``size`` x ``size`` pixels with ``args.pairs`` (min, max) patch pairs.

    A patch is a ``args.patch`` x ``args.patch`` square; patches never touch (one pixel gap) and
    the two patches of a pair are at least size/3 apart (centre to centre, Chebyshev), so the
    5x5 receptive field of the convs never covers both. The key of a pair is a random unit
    vector of ``args.key_channels`` dims (redrawn while two keys of one image have cosine > 0.5);
    every patch pixel gets its key plus N(0, 0.1²) noise in the key channels, every background
    pixel N(0, ``args.clutter``²) noise (so that the background keys are not all alike).
    """
    rng = torch.Generator().manual_seed(seed)
    d, p, n_col = args.key_channels, args.patch, args.colours
    images = torch.zeros(num, 3 + d, size, size)
    images[:, :3] = 0.05
    labels = torch.full((num, size, size), IGNORE, dtype=torch.long)
    role = torch.zeros(num, size, size, dtype=torch.int8)
    lo, hi = args.pairs
    far = size / 3
    for i in range(num):
        n_pairs = int(torch.randint(lo, hi + 1, (1,), generator=rng))
        while True:
            keys = F.normalize(torch.randn(n_pairs, d, generator=rng), dim=1)
            cos = keys @ keys.T - 2 * torch.eye(n_pairs)
            if n_pairs == 1 or float(cos.max()) <= 0.5:
                break
        corners: list[tuple[int, int]] = []
        for _ in range(n_pairs):
            for _attempt in range(500):
                a = torch.randint(0, size - p + 1, (2,), generator=rng).tolist()
                b = torch.randint(0, size - p + 1, (2,), generator=rng).tolist()
                if max(abs(a[0] - b[0]), abs(a[1] - b[1])) < far:
                    continue
                if all(
                    max(abs(c[0] - o[0]), abs(c[1] - o[1])) >= p + 1
                    for c in (a, b)
                    for o in corners
                ):
                    corners += [tuple(a), tuple(b)]
                    break
            else:
                raise RuntimeError("image too crowded: lower --pairs or raise --size")
        colour = torch.randint(0, n_col, (n_pairs,), generator=rng)
        for j in range(n_pairs):
            for r, (y, x) in enumerate(corners[2 * j : 2 * j + 2]):
                sl = (i, slice(None), slice(y, y + p), slice(x, x + p))
                noise = 0.1 * torch.randn(d, p, p, generator=rng)
                images[sl[0], 3:, sl[2], sl[3]] = keys[j][:, None, None] + noise
                images[sl[0], :3, sl[2], sl[3]] = (COLOURS[colour[j]] if r == 0 else GREY)[
                    :, None, None
                ]
                labels[i, y : y + p, x : x + p] = colour[j]
                role[i, y : y + p, x : x + p] = 1 + r
    images[:, :3] += 0.03 * torch.randn(num, 3, size, size, generator=rng)
    background = (role == 0).unsqueeze(1)
    clutter = args.clutter * torch.randn(num, d, size, size, generator=rng)
    images[:, 3:] += clutter * background
    return Pairs(images, labels, role)


# ----------------------------------------------------------------------------- model
class Segmenter(nn.Module):
    """conv3x3-BN-ReLU x 2 -> [NonLocalBlock2d] -> conv1x1-ReLU-conv1x1 (per-pixel logits).

    Shapes: (B, 3 + D, S, S) -> (B, colours, S, S).
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        colours: int,
        graph: object | None,
        sub_sample: bool = True,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )  # fmt: skip
        self.block = None
        if graph is not None:
            self.block = NonLocalBlock2d(
                width, sub_sample=sub_sample, zero_init=zero_init, graph=graph
            )
        self.head = nn.Sequential(
            nn.Conv2d(width, width, 1), nn.ReLU(inplace=True), nn.Conv2d(width, colours, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        if self.block is not None:
            x = self.block(x)
        return self.head(x)


def ivf_name(probe: int) -> str:
    return "knn-ivf" if probe == 0 else f"knn-ivf-p{probe}"


def model_names(args: argparse.Namespace) -> list[str]:
    """Every row: baseline, dense, exact k-NN, the clustered ones, the refresh periods."""
    return [
        "baseline", "dense", "knn", *(ivf_name(p) for p in args.ivf_probes),
        *(f"knn-T{t}" for t in args.refresh),
    ]  # fmt: skip


def is_headline(name: str) -> bool:
    """Rows trained with ``--headline-seeds`` seeds (exact and clustered search, T = 1)."""
    return name == "knn" or name.startswith("knn-ivf")


def graph_of(name: str, args: argparse.Namespace) -> object | None:
    """The ``graph=`` argument of the non-local block of row ``name`` (None: no block)."""
    if name == "baseline":
        return None
    if name == "dense":
        return "full"
    if name == "knn":
        return KNN(args.k)
    if name.startswith("knn-ivf"):
        kw: dict[str, int] = {}
        if args.n_clusters is not None:
            kw["n_clusters"] = args.n_clusters
        if name != "knn-ivf":
            kw["n_probe"] = int(name.removeprefix("knn-ivf-p"))
        return KNN(args.k, search="ivf", **kw)
    if name.startswith("knn-T"):
        return KNN(args.k, refresh_every=int(name.removeprefix("knn-T")))
    raise ValueError(f"unknown model {name!r}")


def graph_label(name: str, args: argparse.Namespace) -> str:
    graph = graph_of(name, args)
    if graph is None:
        return "-"
    return '`"full"`' if isinstance(graph, str) else f"`{graph!r}`"


# ----------------------------------------------------------------------------- training
@dataclass
class Run:
    name: str
    seed: int
    params: int = 0
    target_acc: float = 0.0
    source_acc: float = 0.0
    step_ms: float = 0.0
    block_ms: float = 0.0
    seconds: float = 0.0
    curve: list[float] = field(default_factory=list)  # test target accuracy after each epoch
    loss: list[float] = field(default_factory=list)  # mean training loss of each epoch
    model: nn.Module | None = field(default=None, repr=False)


class BlockTimer:
    """Wall time of every training-mode forward of a module (forward pre-hook and hook)."""

    def __init__(self, module: nn.Module | None) -> None:
        self.times: list[float] = []
        self._start = 0.0
        if module is not None:
            module.register_forward_pre_hook(self._pre)
            module.register_forward_hook(self._post)

    def _pre(self, module: nn.Module, _args: object) -> None:
        self._start = time.perf_counter()

    def _post(self, module: nn.Module, _args: object, _out: object) -> None:
        if module.training:
            self.times.append(time.perf_counter() - self._start)


@torch.no_grad()
def evaluate(model: nn.Module, data: Pairs, batch_size: int) -> tuple[float, float]:
    """Pixel accuracy on the target and on the source pixels (eval mode: fresh graphs)."""
    model.eval()
    hit = torch.zeros(3)
    tot = torch.zeros(3)
    for i in range(0, data.images.shape[0], batch_size):
        pred = model(data.images[i : i + batch_size]).argmax(1)
        right = pred == data.labels[i : i + batch_size]
        role = data.role[i : i + batch_size].long()
        hit += torch.bincount(role[right], minlength=3)[:3].float()
        tot += torch.bincount(role.flatten(), minlength=3)[:3].float()
    model.train()
    acc = hit / tot.clamp(min=1)
    return float(acc[2]), float(acc[1])


def train(name: str, seed: int, train_set: Pairs, test_set: Pairs, args: argparse.Namespace) -> Run:
    """Train row ``name`` from model seed ``seed`` (the batch order follows it too)."""
    torch.manual_seed(seed)
    model = Segmenter(
        train_set.images.shape[1], args.width, args.colours, graph_of(name, args),
        sub_sample=args.sub_sample, zero_init=args.zero_init,
    )  # fmt: skip
    timer = BlockTimer(model.block)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    m = train_set.images.shape[0]
    steps_per_epoch = -(-m // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.2
    )
    run = Run(name, seed, params=sum(p.numel() for p in model.parameters()))
    order_rng = torch.Generator().manual_seed(seed + 1)
    step_times: list[float] = []
    bar = tqdm(
        total=args.epochs * steps_per_epoch, desc=f"{name:11s} seed {seed}",
        disable=True if args.quiet else None, file=sys.stderr,
    )  # fmt: skip
    source = 0.0
    for _epoch in range(args.epochs):
        order = torch.randperm(m, generator=order_rng)
        total = 0.0
        for first in range(0, m, args.batch_size):
            idx = order[first : first + args.batch_size]
            x, y = train_set.images[idx], train_set.labels[idx]
            start = time.perf_counter()
            loss = F.cross_entropy(model(x), y, ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step_times.append(time.perf_counter() - start)
            total += loss.item()
            bar.update()
        run.loss.append(total / steps_per_epoch)
        target, source = evaluate(model, test_set, args.eval_batch)
        run.curve.append(target)
        bar.set_postfix(loss=f"{run.loss[-1]:.3f}", target=f"{target:.3f}", source=f"{source:.3f}")
    bar.close()
    run.target_acc, run.source_acc = run.curve[-1], source
    run.seconds = sum(step_times)
    # The first steps warm up the allocator and the thread pool: the means leave out 5 of them.
    skip = 5 if len(step_times) > 10 else 0
    run.step_ms = 1000 * statistics.fmean(step_times[skip:])
    if timer.times:
        run.block_ms = 1000 * statistics.fmean(timer.times[skip:])
    run.model = model
    return run


@torch.no_grad()
def search_quality(model: Segmenter, data: Pairs, args: argparse.Namespace) -> list[dict]:
    """The clustered search on a trained model's test features, batch by batch as in training:
    recall@k against the exact graph and build time per batch, for n_probe = 1, 2, 4, ... up to
    every list (the last is exact by construction), and the exact build itself. Centroids are
    warm-started from batch to batch, as in a module."""
    assert model.block is not None
    model.eval()
    block = model.block
    feats = []
    for i in range(0, data.images.shape[0], args.batch_size):
        h = model.stem(data.images[i : i + args.batch_size])
        q, k, _ = block.embed(h)
        feats.append((q, k))
    model.train()
    n_keys = feats[0][1].shape[1]
    lists = default_clusters(n_keys) if args.n_clusters is None else min(args.n_clusters, n_keys)
    default = default_probe(lists, k=args.k, num_keys=n_keys)
    probes = sorted({default, *(2**e for e in range(lists.bit_length()))} | {lists})
    probes = [p for p in probes if p <= lists]

    def build(spec: KNN, state: GraphState | None) -> tuple[list, float]:
        graphs, start = [], time.perf_counter()
        for q, k in feats:
            ctx = GraphContext(q.shape[1], k.shape[1], q.device, q.shape[0], query=q, key=k,
                               state=state)  # fmt: skip
            graphs.append(spec.build(ctx))
        return graphs, 1000 * (time.perf_counter() - start) / len(feats)

    exact, exact_ms = build(KNN(args.k), None)
    rows = [dict(search="exact", probe="-", scanned=1.0, kept=1.0, recall=1.0, ms=exact_ms)]
    for p in probes:
        graphs, ms = build(KNN(args.k, search="ivf", n_clusters=lists, n_probe=p), GraphState())
        recall = statistics.fmean(knn_recall(a, e) for a, e in zip(graphs, exact))
        kept = statistics.fmean(
            1.0 if g.mask is None else float(g.mask.float().mean()) for g in graphs
        )
        mark = " (default)" if p == default and args.n_clusters is None else ""
        rows.append(dict(search=f"ivf, {lists} lists", probe=f"{p}{mark}",
                         scanned=p / lists, kept=kept, recall=recall, ms=ms))  # fmt: skip
    return rows


def quality_table(rows: list[dict]) -> str:
    lines = [
        "| search | n_probe | keys scanned (about) | neighbours found (of k) | recall@k "
        "| build per batch (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['search']} | {r['probe']} | {100 * r['scanned']:.0f}% | "
            f"{100 * r['kept']:.1f}% | {100 * r['recall']:.1f}% | {r['ms']:.1f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report
def _pct(values: list[float], each: bool = False) -> str:
    """Mean ± std in % (and each value with ``each``) of one or more runs."""
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    text = f"{100 * statistics.fmean(values):.1f} ± {100 * statistics.stdev(values):.1f}"
    if each:
        text += " (" + ", ".join(f"{100 * v:.1f}" for v in values) + ")"
    return text


def _acc(rs: list[Run]) -> float:
    return 100 * statistics.fmean(r.target_acc for r in rs)


def _ms(rs: list[Run], what: str = "step_ms") -> float:
    return statistics.fmean(getattr(r, what) for r in rs)


def table(runs: dict[str, list[Run]], args: argparse.Namespace) -> str:
    head = [
        "model", "graph", "seeds", "target acc. (%)", "source acc. (%)", "train step (ms)",
        "non-local fwd (ms)", "train time (s)",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, rs in runs.items():
        cells = [
            f"`{name}`",
            graph_label(name, args),
            ", ".join(str(r.seed) for r in rs),
            f"**{_pct([r.target_acc for r in rs], each=True)}**",
            _pct([r.source_acc for r in rs]),
            f"{_ms(rs):.1f}",
            "-" if rs[0].block_ms == 0 else f"{_ms(rs, 'block_ms'):.1f}",
            f"{_ms(rs, 'seconds'):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(runs: dict[str, list[Run]], args: argparse.Namespace) -> list[str]:
    """One sentence per clustered row: is its accuracy within 1 point of the exact graph's?"""
    if "knn" not in runs:
        return []
    exact = _acc(runs["knn"])
    out = []
    for name, rs in runs.items():
        if not name.startswith("knn-ivf"):
            continue
        gap = round(_acc(rs) - exact, 1)
        within = "within" if abs(gap) <= 1.0 else "**not** within"
        by_seed = {r.seed: r.target_acc for r in runs["knn"]}
        paired = ", ".join(
            f"{100 * (r.target_acc - by_seed[r.seed]):+.1f}" for r in rs if r.seed in by_seed
        )
        out.append(
            f"Clustered vs exact search: `{name}` ({graph_label(name, args)}"
            f"{probe_note(name, args)}) reaches {_acc(rs):.1f}% on the target pixels against "
            f"{exact:.1f}% for the exact `knn` ({gap:+.1f} points, means over seeds "
            f"{', '.join(str(r.seed) for r in rs)}; per seed {paired}): {within} 1 point; "
            f"training step {_ms(rs):.0f} ms against {_ms(runs['knn']):.0f} ms."
        )
    return out


def probe_note(name: str, args: argparse.Namespace) -> str:
    """For the library-default clustered row: how many lists its default probes here."""
    if name != "knn-ivf":
        return ""
    n = args.size * args.size
    keys = n // 4 if args.sub_sample else n
    lists = default_clusters(keys) if args.n_clusters is None else min(args.n_clusters, keys)
    probe = default_probe(lists, k=args.k, num_keys=keys)
    what = ": every list, i.e. the exact search" if probe == lists else ""
    return f"; here {probe} of {lists} lists{what}"


def refresh_points(
    runs: dict[str, list[Run]], args: argparse.Namespace
) -> list[tuple[int, list[Run]]]:
    """(T, runs) of the exact search: T = 1 is the ``knn`` row."""
    pts = [(1, runs["knn"])] if "knn" in runs else []
    return pts + [(t, runs[f"knn-T{t}"]) for t in args.refresh if f"knn-T{t}" in runs]


def trade_off(runs: dict[str, list[Run]], args: argparse.Namespace) -> str:
    """A sentence with accuracy and step time vs T (exact search)."""
    pts = refresh_points(runs, args)
    if len(pts) < 2:
        return ""
    parts = [f"T={t}: {_acc(rs):.1f}% / {_ms(rs):.0f} ms" for t, rs in pts]
    (t0, first), (t1, last) = pts[0], pts[-1]
    return (
        "Refresh schedule (exact search, `refresh_every=T`; target accuracy / training step): "
        + "; ".join(parts)
        + f". From T={t0} to T={t1} the training step is {100 * (1 - _ms(last) / _ms(first)):.0f}% "
        f"shorter (non-local forward {_ms(first, 'block_ms'):.1f} -> "
        f"{_ms(last, 'block_ms'):.1f} ms: the build runs on 1 step in {t1}) and the accuracy "
        f"moves by {_acc(last) - _acc(first):+.1f} points: a kept graph was built on earlier "
        "batches, i.e. other images, so on T - 1 of every T steps the block aggregates over "
        "edges that have nothing to do with the current images' content."
    )


def plot(path: Path, runs: dict[str, list[Run]], args: argparse.Namespace) -> None:
    """Accuracy vs T, time vs T (the other rows as horizontal lines), training curves; each
    row keeps one colour in the three panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colour = {name: f"C{i % 10}" for i, name in enumerate(runs)}
    pts = refresh_points(runs, args)
    ts = [t for t, _ in pts]
    exact = colour.get("knn", "k")
    others = [n for n in runs if n in ("dense", "baseline") or n.startswith("knn-ivf")]
    styles = ["--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3))]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    ax.plot(ts, [_acc(rs) for _, rs in pts], marker="o", color=exact,
            label="KNN exact, refresh_every=T (T=1: mean of the seeds)")  # fmt: skip
    if "knn" in runs and len(runs["knn"]) > 1:
        seeds = [100 * r.target_acc for r in runs["knn"]]
        ax.plot([1] * len(seeds), seeds, ls="", marker="x", color=exact, label="knn: each seed")
    for i, name in enumerate(others):
        ax.axhline(_acc(runs[name]), ls=styles[i % len(styles)], color=colour[name], lw=1.2,
                   label=name)  # fmt: skip
    ax.set(xlabel="refresh_every T", ylabel="test accuracy, target pixels (%)",
           title="accuracy vs T", ylim=(0, 102))  # fmt: skip
    ax.legend(fontsize=7, loc="center right", framealpha=0.9)
    ax = axes[1]
    ax.plot(ts, [_ms(rs) for _, rs in pts], marker="o", color=exact,
            label="KNN exact: training step")  # fmt: skip
    ax.plot(ts, [_ms(rs, "block_ms") for _, rs in pts], marker="s", ls="--", color=exact,
            label="KNN exact: non-local forward")  # fmt: skip
    for i, name in enumerate(others):
        ax.axhline(_ms(runs[name]), ls=styles[i % len(styles)], color=colour[name], lw=1.2,
                   label=f"{name}: training step")  # fmt: skip
    ax.set(xlabel="refresh_every T", ylabel="ms", title="time vs T", ylim=(0, None))
    ax.legend(fontsize=7)
    for ax in axes[:2]:
        ax.grid(alpha=0.3)
        if ts:
            ax.set_xscale("log", base=2)
            ax.set_xticks(ts, [str(t) for t in ts])
    ax = axes[2]
    for name, rs in runs.items():
        r = rs[0]
        ax.plot(range(1, len(r.curve) + 1), [100 * a for a in r.curve], marker=".",
                color=colour[name], label=name)  # fmt: skip
    ax.set(xlabel="epoch", ylabel="test accuracy, target pixels (%)",
           title="training curves (first seed of each row)", ylim=(0, 102))  # fmt: skip
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _allocator() -> str:
    names = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
    found = [f"{n}={os.environ[n]}" for n in names if n in os.environ]
    return " ".join(found) or "glibc defaults"


def _load() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"


def write_report(
    runs: dict[str, list[Run]],
    args: argparse.Namespace,
    info: dict[str, str],
    quality: list[dict] | None,
) -> None:
    tab = table(runs, args)
    print(tab)
    notes = [s for s in (trade_off(runs, args), *verdicts(runs, args)) if s]
    for s in notes:
        print(s)
    search = []
    if quality:
        qtab = quality_table(quality)
        print(qtab)
        search = [
            f"Search quality on the trained `knn` model (seed {args.seed}): its θ and φ of the "
            f"{args.test_images} test images, in batches of {args.batch_size}, k = {args.k}; "
            "recall@k of the clustered graph against the exact one, and build time per batch "
            "(centroids warm-started from batch to batch, as in a module):",
            "",
            qtab,
            "",
        ]
    n = args.size * args.size
    keys = n // 4 if args.sub_sample else n
    seeds = ", ".join(str(args.seed + s) for s in range(args.headline_seeds))
    md = [
        "# k-NN graphs for a non-local block: exact vs clustered search, refresh schedules",
        "",
        "`examples/knn_graphs.py`. Generated images with pairs of patches that share a random key "
        "code; one patch of a pair is coloured (source), the other grey (target), far apart. A "
        "target pixel's label is its source's colour: only a non-local interaction with the "
        "patch of matching content can tell it. Accuracy on the held-out images after the last "
        f"epoch, in %; always answering the most common colour scores {info['chance']}% on the "
        "target pixels.",
        "",
        tab,
        "",
        *(f"{s}\n" for s in notes),
        *search,
        "- `train step`: mean wall time of forward + backward + optimiser step (the first 5 "
        "steps left out); `non-local fwd`: mean forward time of the non-local block in training "
        "(graph build or reuse + aggregation, forward hooks); `train time`: sum of the step "
        "times (evaluation excluded). Peak memory is not reported (no cheap per-run measure "
        "on CPU). Times are wall-clock on a shared machine: see the load averages below.",
        f"- network: 2 conv3x3 (width {args.width}) at full resolution, one `NonLocalBlock2d("
        f"{args.width}, sub_sample={args.sub_sample}, zero_init={args.zero_init})` with N = {n} "
        f"queries over N' = {keys} keys (inter channels {max(args.width // 2, 1)}), 1x1 head; "
        "`baseline` leaves the block out.",
        f"- data: {args.train_images} training / {args.test_images} test images of "
        f"{args.size}x{args.size} px, {args.pairs[0]}-{args.pairs[1]} pairs of {args.patch}x"
        f"{args.patch} patches, {args.colours} colours, {args.key_channels} key channels, "
        f"background clutter {args.clutter:g}; k = {args.k}",
        f"- budget: {args.epochs} epochs of batches of {args.batch_size}, Adam one-cycle lr "
        f"{args.lr:g}; data seeds {args.seed} (train) and {args.seed + 1} (test); model seed "
        f"{args.seed} for every row, seeds {seeds} for the headline rows (`knn`, `knn-ivf*`: "
        "mean ± std)",
        f"- machine: {platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} "
        f"cores, torch threads: {torch.get_num_threads()}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, nlgraph {nlgraph.__version__}",
        f"- allocator: {_allocator()}",
        f"- load average (1/5/15 min) at the start: {info['load_start']}, at the end: {_load()}",
        f"- total wall time: {time.perf_counter() - float(info['t0']):.0f} s",
        f"- command: `{info['command']}`",
        "",
        "![accuracy and time vs T; training curves](knn_graphs.png)",
    ]
    (args.out_dir / "knn_graphs.md").write_text("\n".join(md) + "\n")
    plot(args.out_dir / "knn_graphs.png", runs, args)
    print(f"wrote {args.out_dir / 'knn_graphs.md'} and knn_graphs.png")


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out-dir", type=Path, default=Path(OUT_DIR),
        help="where the results go (default: ./nlgraph-results under the working directory; the "
        "repository's examples/results/ were written with --out-dir examples/results)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=32, help="image side S (N = S² queries)")
    p.add_argument("--patch", type=int, default=4, help="patch side in pixels")
    p.add_argument("--pairs", type=int, nargs=2, default=[2, 4], help="min, max pairs per image")
    p.add_argument("--colours", type=int, default=4, choices=range(2, len(COLOURS) + 1))
    p.add_argument("--key-channels", type=int, default=3, help="dims D of a pair's key code")
    p.add_argument("--clutter", type=float, default=0.1,
                   help="std of the background's key channels")  # fmt: skip
    p.add_argument("--train-images", type=int, default=1500)
    p.add_argument("--test-images", type=int, default=300)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-batch", type=int, default=50)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--width", type=int, default=16, help="conv width C (block inter C/2)")
    p.add_argument("--sub-sample", action=argparse.BooleanOptionalAction, default=True,
                   help="max-pool the block's keys and values 2x2 (N' = N / 4)")  # fmt: skip
    p.add_argument("--zero-init", action=argparse.BooleanOptionalAction, default=False,
                   help="zero-initialise the block's norm (see the module docstring)")  # fmt: skip
    p.add_argument("--k", type=int, default=32, help="neighbours per query")
    p.add_argument("--n-clusters", type=int, default=None, help="ivf lists (library default)")
    p.add_argument("--ivf-probes", type=int, nargs="*", default=[0, 4, 8],
                   help="n_probe of each clustered row (0: the library default)")  # fmt: skip
    p.add_argument("--refresh", type=int, nargs="*", default=[2, 4, 8, 16], help="values of T")
    p.add_argument("--headline-seeds", type=int, default=3,
                   help="seeds of the knn and knn-ivf* rows (mean ± std)")  # fmt: skip
    p.add_argument("--models", nargs="+", default=None, help="rows to run (default: all)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="a miniature run of a few seconds")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if "--quick" in argv:  # the miniature's sizes, unless given explicitly
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    names = model_names(args)
    if args.models is None:
        args.models = names
    unknown = [m for m in args.models if m not in names]
    if unknown:
        p.error(f"--models: unknown {unknown}, choose from {names}")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    info = {"t0": str(time.perf_counter()), "load_start": _load()}
    try:
        train_set = generate(args.train_images, args.size, args, args.seed)
        test_set = generate(args.test_images, args.size, args, args.seed + 1)
        target = test_set.labels[test_set.role == 2]
        common = float(torch.bincount(target, minlength=args.colours).max())
        info["chance"] = f"{100 * common / max(target.numel(), 1):.1f}"
        print(
            f"k-NN graphs: {args.train_images} training / {args.test_images} test images of "
            f"{args.size}x{args.size} px (generated in "
            f"{time.perf_counter() - float(info['t0']):.1f} s)"
        )
        runs: dict[str, list[Run]] = {}
        for name in args.models:
            seeds = args.headline_seeds if is_headline(name) else 1
            runs[name] = [
                train(name, args.seed + s, train_set, test_set, args) for s in range(seeds)
            ]
        args.out_dir.mkdir(parents=True, exist_ok=True)
        shown, skip = [], False
        for a in argv:  # the command without --out-dir (a temporary folder in the tests)
            if skip:
                skip = False
            elif a == "--out-dir":
                skip = True
            elif not a.startswith("--out-dir="):
                shown.append(a)
        info["command"] = " ".join(["python examples/knn_graphs.py", *shown])
        quality = None
        if "knn" in runs:
            model = runs["knn"][0].model
            assert isinstance(model, Segmenter)
            quality = search_quality(model, test_set, args)
        write_report(runs, args, info, quality)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
