r"""Point clouds whose class needs relations between points: PointNet vs graph and non-local layers.

Every generated cloud has four parts at the corners of a square; each part is the surface of a
sphere or of a cube (at random, the same mean squared radius), 64 points, turned by its own random
3-D rotation. Each point carries a *paint* value, +1 or -1. A part is either **two-tone** (paint
+1 on one side of a random plane through its centre, -1 on the other) or **speckled** (+1 or -1
at random per point). The class (6, balanced) is

- how many parts are two-tone: ``none``, ``one``, ``three``, ``four``; and for two of them,
- whether they share a side of the square (``two/side``) or are opposite (``two/diagonal``).

The cloud is rotated about the vertical axis by a uniform angle, scaled, jittered, then centred
and scaled to unit RMS radius (the same inputs, positions and paint, for every model).

Why it needs relations: every point has paint +1 or -1 with probability 1/2 in every part and
every class, and every part has the same shapes at the same distance from the centroid, so a
point's own (position, paint) says nothing about its part's pattern. Whether a part is two-tone
is a relation between neighbouring points (do their paints agree?); ``two/side`` vs
``two/diagonal`` is a relation between parts about a cloud diameter apart (long range). A
per-point MLP with pooling (PointNet) sees neither.

Pipeline: PyTorch Geometric ``Data(x=paint, pos, y)`` objects, the k-NN graph (on positions)
from :class:`nlgraph.transforms.KNNGraph`, a ``torch_geometric.loader.DataLoader``, and a
max + mean read-out (``global_max_pool``, ``global_mean_pool``). Five models share the width
(64), the depth (a linear embedding of (position, paint), two relational layers each followed by
a per-point Linear-BatchNorm-ReLU, the read-out and a two-layer head) and the training budget:

- ``pointnet``: no message passing; its two "relational" layers are per-point residual MLPs
  (64-32-64, about the parameters of a ``NonLocalConv(64, 32)``);
- ``edgeconv``: ``torch_geometric.nn.EdgeConv`` (max over the edges of
  ReLU(W [x_i, x_j - x_i])), residual, over the same precomputed k-NN graph
  (``DynamicEdgeConv`` rebuilds the graph in feature space every layer but needs torch-cluster,
  which is not installed here);
- ``transformer``: ``torch_geometric.nn.TransformerConv`` (4 heads of 16, skip connection) over
  the k-NN graph;
- ``nonlocal-knn``: :class:`nlgraph.nn.NonLocalConv` (embedded Gaussian, C' = 32, the
  layer's defaults: no logit temperature, no norm, residual) over the k-NN graph, both layers;
- ``nonlocal-full``: the first ``NonLocalConv`` over the k-NN graph (the local pattern), the
  second over the *full* graph of each cloud (every point attends to all 256 points of its
  cloud: 65,536 edges per cloud).

Run::

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776 \
        python examples/point_cloud.py --threads 1 --out-dir examples/results

Runtime: about 7 minutes with ``--threads 1`` on a 2-core CPU (the default run: five models,
three seeds; 415 s measured with one other job on the machine). It
prints a table and writes ``<out-dir>/point_cloud.md`` and ``<out-dir>/point_cloud.png``
(training curves, recall per class, and the attention weights of a
few query points of the ``NonLocalConv`` layers, from ``return_attention_weights=True``); the
default ``--out-dir`` is ``./nlgraph-results``. ``--quick`` is a run of seconds over every model
and code path (the example test runs it). Everything is generated from fixed seeds; nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import _example_utils as eu
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader
from torch_geometric.nn import EdgeConv, TransformerConv, global_max_pool, global_mean_pool

from nlgraph._measure import format_bytes, memory_stats
from nlgraph.nn import NonLocalConv
from nlgraph.transforms import KNNGraph

#: Default results folder, relative to the working directory (never the tracked
#: examples/results/: regenerate those with ``--out-dir examples/results``).
OUT_DIR = eu.OUT_DIR

#: The classes: name and which corners of the square (cyclic order) hold two-tone parts.
CLASSES: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("none", ()),
    ("one", (0,)),
    ("two/side", (0, 1)),
    ("two/diagonal", (0, 2)),
    ("three", (0, 1, 2)),
    ("four", (0, 1, 2, 3)),
)
#: Corners of the square, cyclic order, in the xy plane (before the random rotation).
CORNERS = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
#: Sphere radius; the cube's half side gives the same mean squared radius (5 a^2 / 3 = r^2).
SPHERE_RADIUS = 0.42
CUBE_HALF = SPHERE_RADIUS * math.sqrt(3 / 5)
MODELS: tuple[str, ...] = ("pointnet", "edgeconv", "transformer", "nonlocal-knn", "nonlocal-full")
SMOKE_ARGS: list[str] = ["--quick", "--quiet"]
QUICK = dict(train=48, test=24, points=64, epochs=2, seeds=1, batch_size=16)


# ----------------------------------------------------------------------------- data
def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly from SO(3) (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _z_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation by a uniform angle about the z axis."""
    a = rng.uniform(0, 2 * math.pi)
    return np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0, 0, 1]])


def sample_sphere(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points uniform on the sphere of radius :data:`SPHERE_RADIUS` about the origin."""
    v = rng.standard_normal((n, 3))
    return SPHERE_RADIUS * v / np.linalg.norm(v, axis=1, keepdims=True)


def sample_cube(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points uniform on the surface of the cube of half side :data:`CUBE_HALF`."""
    p = rng.uniform(-CUBE_HALF, CUBE_HALF, (n, 3))
    axis = rng.integers(0, 3, n)
    p[np.arange(n), axis] = CUBE_HALF * rng.choice([-1.0, 1.0], n)
    return p


def make_cloud(
    label: int, points: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One cloud of class ``label``: positions (points, 3), paint (points,) in {-1, +1}, both
    float32, and the part index (points,).

    Four parts of ``points // 4`` points each, each a sphere or a cube (at random, the same
    mean squared radius) turned by its own random 3-D rotation, at the jittered corners of the
    class's outline. The parts at the class's two corners are *two-tone*: paint +1 on one side
    of a random plane through the part's centre, -1 on the other; the other two are *speckled*:
    paint +1 or -1 at random per point. The cloud is rotated about the z axis by a uniform angle
    (the outline lies in the xy plane), scaled by U(0.8, 1.25), jittered by N(0, 0.01^2) per
    coordinate, then centred on its centroid and divided by its RMS radius (the usual
    normalisation, the same for every model).
    """
    _, two_tone = CLASSES[label]
    corners = CORNERS * rng.uniform(0.95, 1.05, (4, 2))
    per_part = points // 4
    parts, paint, part_id = [], [], []
    for c in range(4):
        surface = sample_sphere(per_part, rng) if rng.random() < 0.5 else sample_cube(per_part, rng)
        surface = surface @ _rotation(rng).T
        if c in two_tone:
            normal = rng.standard_normal(3)
            paint.append(np.where(surface @ normal >= 0, 1.0, -1.0))
        else:
            paint.append(rng.choice([-1.0, 1.0], per_part))
        parts.append(surface + np.array([corners[c, 0], corners[c, 1], 0.0]))
        part_id.append(np.full(per_part, c))
    pos = np.concatenate(parts) @ _z_rotation(rng).T * rng.uniform(0.8, 1.25)
    pos += 0.01 * rng.standard_normal(pos.shape)
    pos -= pos.mean(0)
    pos /= np.sqrt((pos**2).sum(1).mean())
    return pos.astype(np.float32), np.concatenate(paint).astype(np.float32), np.concatenate(part_id)


def make_dataset(n: int, points: int, k: int, seed: int) -> list[Data]:
    """``n`` clouds, classes balanced and shuffled, as ``Data(pos, x=paint (N, 1), y, part)``
    with the k-NN ``edge_index`` of :class:`nlgraph.transforms.KNNGraph` (built once per cloud,
    on the positions)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASSES))
    knn = KNNGraph(k=k)
    data = []
    for label in labels:
        pos, paint, part = make_cloud(int(label), points, rng)
        d = Data(
            x=torch.from_numpy(paint)[:, None],
            pos=torch.from_numpy(pos),
            y=torch.tensor([int(label)]),
        )
        d.part = torch.from_numpy(part)
        data.append(knn(d))
    return data


def full_edge_index(num_graphs: int, points: int) -> Tensor:
    """Every ordered pair (self-pairs included) of points of the same cloud, sorted by target
    (clouds of ``points`` points each, concatenated as PyG batches them)."""
    local = torch.arange(points)
    src = local.repeat(points)  # for target i: all j
    dst = local.repeat_interleave(points)
    offsets = (torch.arange(num_graphs) * points).repeat_interleave(points * points)
    return torch.stack([src.repeat(num_graphs) + offsets, dst.repeat(num_graphs) + offsets])


# ----------------------------------------------------------------------------- models
class PointwiseResidual(nn.Module):
    """PointNet's stand-in for a relational layer: x + W2 ReLU(W1 x), per point (C -> C/2 -> C,
    about the parameters of a ``NonLocalConv(C, C/2)``)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(width, width // 2), nn.ReLU(), nn.Linear(width // 2, width)
        )

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return x + self.mlp(x)


class EdgeConvResidual(nn.Module):
    """x + EdgeConv(x): max over the edges j -> i of ReLU(W [x_i, x_j - x_i] + b)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = EdgeConv(nn.Sequential(nn.Linear(2 * width, width), nn.ReLU()), aggr="max")

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return x + self.conv(x, edge_index)


class TransformerLayer(nn.Module):
    """``TransformerConv(C, C / heads, heads)`` with its skip connection (root weight)."""

    def __init__(self, width: int, heads: int = 4) -> None:
        super().__init__()
        self.conv = TransformerConv(width, width // heads, heads=heads, root_weight=True)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.conv(x, edge_index)


class PointCloudNet(nn.Module):
    """Linear embedding of (position, paint), two (relational layer, per-point
    Linear-BatchNorm-ReLU) stages, max + mean pooling, a two-layer head.

    ``kind`` picks the relational layer; ``nonlocal-full`` runs its second ``NonLocalConv`` on
    the full graph of each cloud (``forward(..., full_edge_index=...)``).
    """

    def __init__(self, kind: str, num_classes: int, width: int = 64) -> None:
        super().__init__()
        if kind not in MODELS:
            raise ValueError(f"kind: expected one of {MODELS}, got {kind!r}")
        self.kind = kind
        self.embed = nn.Linear(4, width)

        def layer() -> nn.Module:
            if kind == "pointnet":
                return PointwiseResidual(width)
            if kind == "edgeconv":
                return EdgeConvResidual(width)
            if kind == "transformer":
                return TransformerLayer(width)
            return NonLocalConv(width, width // 2)

        self.layers = nn.ModuleList([layer(), layer()])
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU())
            for _ in range(2)
        )
        self.head = nn.Sequential(
            nn.Linear(2 * width, width), nn.ReLU(), nn.Dropout(0.2), nn.Linear(width, num_classes)
        )

    def forward(
        self,
        features: Tensor,
        edge_index: Tensor,
        batch: Tensor,
        num_graphs: int,
        full_edge_index: Tensor | None = None,
    ) -> Tensor:
        """Class logits (G, classes) of the G clouds of a batch; ``features`` (N, 4) are the
        points' (x, y, z, paint)."""
        x = self.embed(features)
        for i, (layer, mlp) in enumerate(zip(self.layers, self.mlps)):
            graph = edge_index
            if self.kind == "nonlocal-full" and i == 1:
                if full_edge_index is None:
                    raise ValueError("nonlocal-full needs full_edge_index")
                graph = full_edge_index
            x = mlp(layer(x, graph))
        pooled = torch.cat(
            [global_max_pool(x, batch, num_graphs), global_mean_pool(x, batch, num_graphs)], 1
        )
        return self.head(pooled)


# ----------------------------------------------------------------------------- training
class FullGraphs:
    """Cache of :func:`full_edge_index` per number of clouds in a batch (the same tensor for
    the same batch size, so that ``NonLocalConv`` keeps its prepared graph)."""

    def __init__(self, points: int) -> None:
        self.points = points
        self.cache: dict[int, Tensor] = {}

    def __call__(self, data: Batch) -> Tensor:
        g = data.num_graphs
        if g not in self.cache:
            self.cache[g] = full_edge_index(g, self.points)
        return self.cache[g]


def step_inputs(model: PointCloudNet, data: Batch, full: FullGraphs) -> tuple:
    """The arguments of ``model`` for a PyG batch: features, k-NN graph, batch vector, number of
    clouds, and the full graph (``nonlocal-full`` only)."""
    fe = full(data) if model.kind == "nonlocal-full" else None
    return torch.cat([data.pos, data.x], 1), data.edge_index, data.batch, data.num_graphs, fe


def evaluate(model: PointCloudNet, loader: DataLoader, full: FullGraphs) -> tuple[float, Tensor]:
    """Accuracy and the confusion matrix (true x predicted) over ``loader``."""
    model.eval()
    confusion = torch.zeros(len(CLASSES), len(CLASSES), dtype=torch.long)
    with torch.no_grad():
        for data in loader:
            pred = model(*step_inputs(model, data, full)).argmax(1)
            confusion.index_put_((data.y, pred), torch.ones_like(pred), accumulate=True)
    model.train()
    return float(confusion.diag().sum() / confusion.sum()), confusion


def train(
    kind: str, seed: int, train_set: list[Data], test_set: list[Data], args: argparse.Namespace
) -> dict:
    """Train one model on one seed; returns its curve, final accuracy, time and memory."""
    torch.manual_seed(seed)
    model = PointCloudNet(kind, len(CLASSES), args.width)
    full = FullGraphs(args.points)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    loader = DataLoader(
        train_set, batch_size=args.batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(seed), drop_last=True,
    )  # fmt: skip
    test_loader = DataLoader(test_set, batch_size=64)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * len(loader), pct_start=0.2
    )
    curve, seconds = [], 0.0
    for epoch in range(args.epochs):
        start = time.perf_counter()
        bar = eu.progress(
            loader, quiet=args.quiet, desc=f"{kind} s{seed} {epoch + 1}/{args.epochs}"
        )
        for data in bar:
            loss = F.cross_entropy(model(*step_inputs(model, data, full)), data.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        seconds += time.perf_counter() - start
        curve.append(evaluate(model, test_loader, full)[0])
    acc, confusion = evaluate(model, test_loader, full)
    batch = next(iter(loader))

    def one_step() -> None:
        loss = F.cross_entropy(model(*step_inputs(model, batch, full)), batch.y)
        loss.backward()
        model.zero_grad()

    one_step()  # warm the layers' prepared graphs before measuring
    memory = memory_stats(one_step).peak_bytes
    return dict(
        model=model, curve=curve, acc=acc, confusion=confusion, seconds=seconds,
        memory=memory, params=sum(p.numel() for p in model.parameters()),
    )  # fmt: skip


# ----------------------------------------------------------------------------- report
PAIR = (2, 3)  # "two/side" and "two/diagonal": the same count, told apart only by placement


def _pair_accuracy(confusion: Tensor) -> float:
    """Accuracy on the clouds of the two ``two/*`` classes."""
    rows = confusion[list(PAIR)]
    return float(rows[:, list(PAIR)].diag().sum() / rows.sum().clamp(min=1))


def results_table(results: dict[str, list[dict]]) -> str:
    """The headline table: parameters, accuracy and pair accuracy (mean ± std), time, memory."""
    rows = [
        "| model | parameters | test accuracy (%) | `two/side` vs `two/diagonal` (%) "
        "| train time / seed (s) | time / epoch (s) | memory of a training step |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():
        acc = eu.mean_std([100 * r["acc"] for r in runs])
        pair = eu.mean_std([100 * _pair_accuracy(r["confusion"]) for r in runs])
        secs = [r["seconds"] for r in runs]
        epochs = len(runs[0]["curve"])
        rows.append(
            f"| `{name}` | {runs[0]['params']:,} | **{acc}** | {pair} | {eu.mean_std(secs, 0)} | "
            f"{sum(secs) / len(secs) / epochs:.2f} | {format_bytes(runs[0]['memory'])} |"
        )
    return "\n".join(rows)


def per_class_table(results: dict[str, list[dict]]) -> str:
    """Recall per class (%), confusion matrices summed over the seeds."""
    names = [c[0] for c in CLASSES]
    rows = ["| model | " + " | ".join(f"`{n}`" for n in names) + " |"]
    rows.append("|---|" + "---:|" * len(names))
    for name, runs in results.items():
        conf = sum(r["confusion"] for r in runs)
        recall = conf.diag().double() / conf.sum(1).clamp(min=1)
        rows.append(f"| `{name}` | " + " | ".join(f"{100 * v:.0f}" for v in recall) + " |")
    return "\n".join(rows)


def verdict(results: dict[str, list[dict]]) -> list[str]:
    """Sentences comparing the relational models with ``pointnet`` (written from the numbers)."""
    if "pointnet" not in results:
        return ["(`pointnet` was not trained: no comparison.)"]
    mean = {n: float(np.mean([r["acc"] for r in runs])) for n, runs in results.items()}
    pair = {
        n: float(np.mean([_pair_accuracy(r["confusion"]) for r in runs]))
        for n, runs in results.items()
    }
    base = mean["pointnet"]
    lines = []
    for name in (n for n in results if n != "pointnet"):
        diff = 100 * (mean[name] - base)
        word = "wins" if diff > 5 else ("ties" if abs(diff) <= 5 else "loses")
        lines.append(
            f"- `{name}` {word} against `pointnet`: {100 * mean[name]:.1f}% vs {100 * base:.1f}% "
            f"({diff:+.1f} points); on the `two/side` vs `two/diagonal` pair "
            f"{100 * pair[name]:.1f}% (50% = guessing)."
        )
    return lines


def attention_of(model: PointCloudNet, data: Data, points: int) -> list[tuple[Tensor, Tensor]]:
    """``(edge_index, alpha (E,))`` of both ``NonLocalConv`` layers of ``model`` on one cloud,
    from ``return_attention_weights=True``."""
    model.eval()
    out = []
    with torch.no_grad():
        x = model.embed(torch.cat([data.pos, data.x], 1))
        for i, (layer, mlp) in enumerate(zip(model.layers, model.mlps)):
            graph = data.edge_index
            if model.kind == "nonlocal-full" and i == 1:
                graph = full_edge_index(1, points)
            y, (ei, alpha) = layer(x, graph, return_attention_weights=True)
            out.append((ei, alpha[:, 0]))
            x = mlp(y)
    model.train()
    return out


def _query_weights(ei: Tensor, alpha: Tensor, query: int, n: int) -> Tensor:
    """The weights w_qj of query ``query`` over all n points (0 where there is no edge)."""
    w = torch.zeros(n)
    sel = ei[1] == query
    return w.index_add_(0, ei[0, sel], alpha[sel])


def plot(results: dict[str, list[dict]], test_set: list[Data], path: Path, points: int) -> None:
    """Training curves, per-class recall, and the attention of a few query points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 8))
    ax = axes[0, 0]
    for name, runs in results.items():
        curves = np.array([r["curve"] for r in runs]) * 100
        epochs = np.arange(1, curves.shape[1] + 1)
        ax.plot(epochs, curves.mean(0), marker="o", ms=3, label=name)
        if len(runs) > 1:
            ax.fill_between(epochs, curves.min(0), curves.max(0), alpha=0.15)
    ax.axhline(100 / len(CLASSES), color="grey", ls=":", lw=1)
    ax.set(title="test accuracy (mean; band: min-max over seeds)", xlabel="epoch", ylabel="%")
    ax.set_ylim(0, 102)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)

    ax = axes[1, 0]
    width = 0.8 / max(len(results), 1)
    for m, (name, runs) in enumerate(results.items()):
        conf = sum(r["confusion"] for r in runs)
        recall = 100 * conf.diag().double() / conf.sum(1).clamp(min=1)
        ax.bar(np.arange(len(CLASSES)) + m * width, recall.numpy(), width, label=name)
    ax.set_xticks(
        np.arange(len(CLASSES)) + 0.4 - width / 2, [c[0] for c in CLASSES], fontsize=7, rotation=20
    )
    ax.set(title="recall per class (all seeds)", ylabel="%", ylim=(0, 102))

    name = next((n for n in ("nonlocal-full", "nonlocal-knn") if n in results), None)
    panels = [a for a in axes[:, 1:].ravel()]
    if name is None:
        for a in panels:
            a.axis("off")
        panels[0].text(0.5, 0.5, "no NonLocalConv model trained", ha="center")
    else:
        model = results[name][0]["model"]
        side = next(d for d in test_set if int(d.y) == 2)
        diag = next(d for d in test_set if int(d.y) == 3)
        a = panels[0]
        xy = side.pos[:, :2].numpy()
        a.scatter(xy[:, 0], xy[:, 1], s=8, c=side.x[:, 0].numpy(), cmap="coolwarm")
        a.set_title("a `two/side` test cloud (xy), coloured by paint", fontsize=8)
        jobs = []
        for cloud, label in ((side, "two/side"), (diag, "two/diagonal")):
            layers = attention_of(model, cloud, points)
            tone = int((cloud.part == CLASSES[int(cloud.y)][1][0]).nonzero()[0])
            speck = int((cloud.part == 3).nonzero()[0])
            for li in (0, 1):
                for q, what in ((tone, "two-tone"), (speck, "speckled")):
                    if label == "two/diagonal" and (li == 0 or what == "speckled"):
                        continue
                    jobs.append((cloud, label, layers[li], li, q, what))
        for a, (cloud, label, (ei, alpha), li, q, what) in zip(panels[1:], jobs):
            xy = cloud.pos[:, :2].numpy()
            w = _query_weights(ei, alpha, q, cloud.num_nodes).numpy()
            order = np.argsort(w)
            a.scatter(xy[:, 0], xy[:, 1], s=4, c="lightgrey")
            sc = a.scatter(xy[order, 0], xy[order, 1], s=9, c=w[order], cmap="viridis")
            a.scatter(xy[q, 0], xy[q, 1], marker="*", s=180, c="red", edgecolors="k")
            graph = "full graph" if name == "nonlocal-full" and li == 1 else "k-NN graph"
            a.set_title(f"`{label}`, layer {li + 1} ({graph}): query on a {what} part", fontsize=8)
            fig.colorbar(sc, ax=a, fraction=0.04)
        for a in panels:
            a.set(xticks=[], yticks=[], aspect="equal")
    fig.suptitle(
        f"Point clouds: training curves; {name or '-'} attention w_ij of each point j for a query "
        "(red star), seed 0, from NonLocalConv(..., return_attention_weights=True)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    eu.add_common_args(parser)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--train", type=int, default=640, help="training clouds")
    parser.add_argument("--test", type=int, default=240, help="test clouds")
    parser.add_argument("--points", type=int, default=256, help="points per cloud (4 parts)")
    parser.add_argument("--k", type=int, default=8, help="neighbours of the k-NN graph")
    parser.add_argument("--width", type=int, default=64, help="feature width of every model")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak of the one-cycle schedule")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the generated clouds")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> None:
    """Generate the clouds, train every model on every seed, write the table and the figure."""
    args = parse_args(argv)
    eu.setup(args)
    wall = time.perf_counter()
    train_set = make_dataset(args.train, args.points, args.k, args.data_seed)
    test_set = make_dataset(args.test, args.points, args.k, args.data_seed + 1)
    print(
        f"point clouds: {args.train} training / {args.test} test clouds of {args.points} points, "
        f"{len(CLASSES)} classes, k = {args.k} (generated in {time.perf_counter() - wall:.1f} s)"
    )
    results: dict[str, list[dict]] = {}
    for name in args.models:
        results[name] = []
        for seed in range(args.seeds):
            r = train(name, seed, train_set, test_set, args)
            results[name].append(r)
            print(
                f"{name} seed {seed}: accuracy {100 * r['acc']:.1f}%, {r['seconds']:.0f} s",
                flush=True,
            )
    table = results_table(results)
    print(table)
    lines = verdict(results)
    print("\n".join(lines))
    plot(results, test_set, args.out_dir / "point_cloud.png", args.points)
    wall_s = time.perf_counter() - wall
    md = [
        "# Point clouds: two-tone parts and where they are (examples/point_cloud.py)",
        "",
        "Four parts (sphere or cube surfaces) at the corners of a square, each *two-tone* (paint",
        "+1 / -1 on the two sides of a plane) or *speckled* (paint +1 / -1 at random per point);",
        "the class is how many parts are two-tone and, for two, whether they share a side or are",
        "opposite. A point's own position and paint cannot tell its part's pattern; the",
        f"side/diagonal pair needs the placement of parts about a cloud diameter apart. "
        f"{args.train} training / {args.test} test clouds of {args.points} points, k = {args.k}, "
        f"{args.epochs} epochs of batches of {args.batch_size}, AdamW one-cycle lr {args.lr}; "
        f"chance is {100 / len(CLASSES):.1f}%. Accuracy after the last epoch, mean ± std over "
        "the seeds; memory: peak tensor memory of one training step "
        "(`nlgraph._measure.memory_stats`).",
        "",
        table,
        "",
        *lines,
        "",
        "Recall per class (%), summed over the seeds:",
        "",
        per_class_table(results),
        "",
        *eu.run_lines("point_cloud.py", argv, args.seeds, wall_s),
        f"- peak RSS: {eu.peak_rss_mib():.0f} MiB",
        "",
        "![training curves and attention](point_cloud.png)",
    ]
    (args.out_dir / "point_cloud.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
