"""Relational captioning: describe the two closest objects of a scene and how they lie.

Each generated scene holds 3-4 coloured shapes (square, circle, triangle; distinct colours out
of red, green, blue, yellow, magenta) on a 48 x 48 canvas. Its caption is one sentence
"<subject> <relation> <object>", e.g. "red square left of blue circle":

- the pair described is the two objects *nearest to each other* (centre distance, at least
  3 px nearer than any other pair);
- of the two, the *subject* is the one whose colour comes first in the order above;
- the *relation word* ("left of", "right of", "above", "below") is the side on which the
  subject lies relative to the object, along the axis of the larger offset.

So the first word already needs relations: which two boxes are closest is a property of the
pairs of boxes, not of any one box, and the relation word needs the offset between two boxes.
The ground-truth boxes are given (as proposals); every model pools region nodes with
``nlgraph.nodes.roi_features`` (4 x 4 bins) from the same small CNN, adds an MLP embedding of
the region's own box, passes the nodes through one block (the only difference between the
models) and a residual MLP, and a GRU decoder with dot-product attention over the region nodes
generates the sentence token by token (teacher forcing in training, greedy decoding at test).
The blocks, with about the same number of parameters (12.4k-12.6k):

- ``regions``: a residual per-region MLP: no relation, each node sees only its own box;
- ``relation``: ``nlgraph.nn.ObjectRelation`` over all the regions of each image (Hu et al.
  2018: appearance and relative box geometry);
- ``relation-knn``: the same on the sparse box graph ``BoxKNN(2)`` (each region and its
  nearest region);
- ``nonlocal``: an embedded-Gaussian ``nlgraph.NonLocalBlock1d`` over the region nodes on the
  full box graph of each image (``nlgraph.graphs.box_graph``): appearance and the box
  embedding, no geometric term;
- ``nonlocal-knn``: the same block on the 2-NN box graph (``box_graph(boxes, batch, k=2)``).

The baseline is not blind to relations: its decoder attends over all the regions at every
step and every node carries its own box, so it *can* compare regions across decoding steps
(it has to commit to the subject at the first word, though). What it lacks is a layer in which
the regions exchange information before decoding.

Run::

    python examples/captioning.py --threads 1    # full run: 5 models x 3 seeds
    python examples/captioning.py --quick        # seconds (the smoke test)

Runtime: about 5 minutes with --threads 1 on a 2-core CPU (274 s measured, with one other job
on the machine). It prints a table and writes
``<out-dir>/captioning.md`` and ``captioning.png`` (default ``./nlgraph-results``; the
repository's copy, ``examples/results/``, was written with ``--out-dir examples/results``).
Everything is generated from fixed seeds; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import _example_utils as eu
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlgraph import NonLocalBlock1d
from nlgraph._measure import format_bytes, memory_stats
from nlgraph.graphs import BoxKNN, box_graph, from_edge_index
from nlgraph.nn import ObjectRelation
from nlgraph.nodes import roi_features

OUT_DIR = eu.OUT_DIR
SMOKE_ARGS: list[str] = ["--quick", "--quiet"]
MODELS = ["regions", "relation", "relation-knn", "nonlocal", "nonlocal-knn"]

COLOURS = ["red", "green", "blue", "yellow", "magenta"]  # also the subject's priority order
RGB = torch.tensor(
    [[0.95, 0.15, 0.1], [0.1, 0.8, 0.2], [0.15, 0.3, 1.0], [0.95, 0.9, 0.1], [0.9, 0.2, 0.9]]
)
SHAPES = ["square", "circle", "triangle"]
RELATIONS = ["left of", "right of", "above", "below"]
SPECIALS = ["<bos>", "<eos>"]
VOCAB = SPECIALS + COLOURS + SHAPES + RELATIONS
TOKEN = {w: i for i, w in enumerate(VOCAB)}
BOS, EOS = TOKEN["<bos>"], TOKEN["<eos>"]
CAPTION_LEN = 6  # subject colour, shape, relation, object colour, shape, <eos>
REL_POS = 2  # position of the relation word
MAX_REGIONS = 4


# ----------------------------------------------------------------------------- data
@dataclass
class Scene:
    """One generated scene: image (3, S, S), boxes (R, 4), caption tokens (CAPTION_LEN,)."""

    image: Tensor
    boxes: Tensor
    caption: Tensor
    colours: list[int] = field(default_factory=list)
    shapes: list[int] = field(default_factory=list)
    subject: int = 0
    obj: int = 0


def describe(centres: Tensor, colours: list[int]) -> tuple[int, int, int] | None:
    """(subject, object, relation index) of a scene, or ``None`` when it is ambiguous.

    The pair described is the two objects nearest to each other, at least 3 px nearer than
    any other pair. Of the two, the subject is the one whose colour comes first in
    :data:`COLOURS`. The relation is the side of the subject relative to the object along the
    axis of the larger offset, which must be at least 1.4 times the smaller one.
    """
    n = len(colours)
    dist = torch.cdist(centres, centres)
    flat = [(float(dist[i, j]), i, j) for i in range(n) for j in range(i + 1, n)]
    flat.sort()
    if len(flat) > 1 and flat[1][0] - flat[0][0] < 3.0:
        return None
    _, i, j = flat[0]
    subject, obj = (i, j) if colours[i] < colours[j] else (j, i)
    dx, dy = (centres[obj] - centres[subject]).tolist()
    big, small = max(abs(dx), abs(dy)), min(abs(dx), abs(dy))
    if big < 1.4 * small:
        return None
    if abs(dx) > abs(dy):
        relation = 0 if dx > 0 else 1  # the object is right of the subject: "left of"
    else:
        relation = 2 if dy > 0 else 3  # image y grows downwards: "above"
    return subject, obj, relation


def _draw(image: Tensor, shape: int, centre: Tensor, half: float, colour: Tensor) -> None:
    size = image.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    dx, dy = xx - centre[0], yy - centre[1]
    if shape == 0:
        inside = (dx.abs() <= half) & (dy.abs() <= half)
    elif shape == 1:
        inside = dx.square() + dy.square() <= half * half
    else:  # triangle pointing up, filling the box
        inside = (dy.abs() <= half) & (dx.abs() <= (dy + half) / 2)
    image[:, inside] = colour[:, None]


def make_scene(rng: torch.Generator, size: int) -> Scene:
    """A scene of 3-4 non-overlapping objects with a caption that is unambiguous."""
    while True:
        n = int(torch.randint(3, MAX_REGIONS + 1, (1,), generator=rng))
        colours = torch.randperm(len(COLOURS), generator=rng)[:n].tolist()
        shapes = torch.randint(0, len(SHAPES), (n,), generator=rng).tolist()
        halves = (torch.rand(n, generator=rng) * 2 + 4).tolist()  # half sizes 4-6 px
        centres: list[Tensor] = []
        for h in halves:
            for _ in range(100):
                c = torch.rand(2, generator=rng) * (size - 2 * h - 2) + h + 1
                if all(
                    float((c - t).abs().max()) >= h + ht + 2
                    for t, ht in zip(centres, halves, strict=False)
                ):
                    centres.append(c)
                    break
            else:
                break
        if len(centres) < n:
            continue
        c = torch.stack(centres)
        described = describe(c, colours)
        if described is None:
            continue
        subject, obj, relation = described
        image = torch.full((3, size, size), 0.05)
        for i in range(n):
            _draw(image, shapes[i], c[i], halves[i], RGB[colours[i]])
        image += 0.03 * torch.randn(image.shape, generator=rng)
        half = torch.tensor(halves)[:, None]
        boxes = torch.cat([c - half, c + half], 1)
        words = [
            COLOURS[colours[subject]], SHAPES[shapes[subject]], RELATIONS[relation],
            COLOURS[colours[obj]], SHAPES[shapes[obj]], "<eos>",
        ]  # fmt: skip
        caption = torch.tensor([TOKEN[w] for w in words])
        return Scene(image, boxes, caption, colours, shapes, subject, obj)


def make_dataset(n: int, size: int, seed: int) -> list[Scene]:
    """``n`` scenes, deterministic from ``seed``."""
    rng = torch.Generator().manual_seed(seed)
    return [make_scene(rng, size) for _ in range(n)]


def words(tokens: list[int]) -> str:
    """A caption as text, up to ``<eos>``."""
    out = []
    for t in tokens:
        if t == EOS:
            break
        out.append(VOCAB[t])
    return " ".join(out)


@dataclass
class Batch:
    """Scenes collated: images (B, 3, S, S), boxes (R, 4), batch (R,), captions (B, T)."""

    images: Tensor
    boxes: Tensor
    batch: Tensor
    captions: Tensor


def collate(scenes: list[Scene]) -> Batch:
    return Batch(
        torch.stack([s.image for s in scenes]),
        torch.cat([s.boxes for s in scenes]),
        torch.cat([torch.full((len(s.boxes),), i) for i, s in enumerate(scenes)]),
        torch.stack([s.caption for s in scenes]),
    )


# ----------------------------------------------------------------------------- models
class Captioner(nn.Module):
    """CNN -> RoI-Align region nodes (+ box MLP) -> one block -> GRU decoder with attention.

    ``block`` is ``"regions"`` (residual MLP), ``"relation"`` / ``"relation-knn"``
    (``ObjectRelation``, full / 2-NN box graph) or ``"nonlocal"`` (``NonLocalBlock1d`` over the
    full box graph of each image).
    """

    def __init__(self, block: str, size: int, width: int = 64, hidden: int = 96) -> None:
        super().__init__()
        self.kind, self.size = block, size
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.roi = nn.Sequential(nn.Linear(32 * 4 * 4, width), nn.ReLU())
        self.box = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, width))
        self.mlp: nn.Module | None = None  # the baseline's block
        self.post = nn.Sequential(nn.Linear(width, 96), nn.ReLU(), nn.Linear(96, width))
        self.norm_in = nn.LayerNorm(width)
        self.norm_out = nn.LayerNorm(width)
        self.relation: ObjectRelation | None = None
        self.nonlocal_block: NonLocalBlock1d | None = None
        if block == "regions":  # ~ the parameters of the relation module
            self.mlp = nn.Sequential(nn.Linear(width, 96), nn.ReLU(), nn.Linear(96, width))
        elif block in ("relation", "relation-knn"):
            graph = BoxKNN(2) if block == "relation-knn" else None
            self.relation = ObjectRelation(
                width, num_heads=4, key_channels=16, geo_channels=32, graph=graph
            )
        elif block in ("nonlocal", "nonlocal-knn"):
            self.nonlocal_block = NonLocalBlock1d(
                width, inter_channels=48, sub_sample=False, norm=None, scale="inner"
            )
        else:
            raise ValueError(f"unknown block {block!r}; expected one of {MODELS}")
        self.embed = nn.Embedding(len(VOCAB), 32)
        self.init_h = nn.Linear(width, hidden)
        self.query = nn.Linear(hidden, width)
        self.cell = nn.GRUCell(32 + width, hidden)
        self.out = nn.Linear(hidden + width, len(VOCAB))

    def nodes(
        self, images: Tensor, boxes: Tensor, batch: Tensor, return_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Region nodes (R, C) after the block, and the block's (heads, R, R) weights."""
        fmap = self.backbone(images)  # stride 2
        roi = roi_features(fmap, boxes, batch, output_size=4, spatial_scale=0.5)
        x = self.norm_in(self.roi(roi.flatten(1)) + self.box((boxes / self.size - 0.5) * 4))
        attn = None
        if self.mlp is not None:
            x = x + self.mlp(x)
        elif self.relation is not None:
            if return_attention:
                x, a = self.relation(x, boxes, batch, return_attention=True)
                attn = a.to_dense()
            else:
                x = self.relation(x, boxes, batch)
        else:
            assert self.nonlocal_block is not None
            edges = box_graph(boxes, batch, k=2 if self.kind == "nonlocal-knn" else None)
            graph = from_edge_index(edges, len(boxes), len(boxes))
            out = self.nonlocal_block(x.t()[None], graph=graph, return_attention=return_attention)
            if return_attention:
                out, a = out
                attn = a.to_dense()
            x = out[0].t()
        return self.norm_out(x + self.post(x)), attn

    @staticmethod
    def pad(x: Tensor, batch: Tensor, num_images: int) -> tuple[Tensor, Tensor]:
        """(R, C) nodes -> (B, MAX_REGIONS, C) and the (B, MAX_REGIONS) mask of real ones."""
        counts = torch.bincount(batch, minlength=num_images)
        start = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(batch)) - start[batch]
        padded = x.new_zeros(num_images, MAX_REGIONS, x.shape[1])
        padded[batch, slot] = x
        mask = torch.zeros(num_images, MAX_REGIONS, dtype=torch.bool)
        mask[batch, slot] = True
        return padded, mask

    def step(
        self, token: Tensor, h: Tensor, memory: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One decoder step: logits (B, V), new state (B, H), attention (B, MAX_REGIONS)."""
        scores = (memory @ self.query(h)[:, :, None])[..., 0] / math.sqrt(memory.shape[-1])
        alpha = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        context = (alpha[:, :, None] * memory).sum(1)
        h = self.cell(torch.cat([self.embed(token), context], 1), h)
        return self.out(torch.cat([h, context], 1)), h, alpha

    def start(self, b: Batch) -> tuple[Tensor, Tensor, Tensor]:
        x, _ = self.nodes(b.images, b.boxes, b.batch)
        memory, mask = self.pad(x, b.batch, len(b.images))
        mean = memory.sum(1) / mask.sum(1, keepdim=True)
        return memory, mask, torch.tanh(self.init_h(mean))

    def forward(self, b: Batch) -> Tensor:
        """Teacher-forced logits (B, T, V) for the captions of ``b``."""
        memory, mask, h = self.start(b)
        token = torch.full((len(b.images),), BOS)
        logits = []
        for t in range(CAPTION_LEN):
            out, h, _ = self.step(token, h, memory, mask)
            logits.append(out)
            token = b.captions[:, t]
        return torch.stack(logits, 1)

    @torch.no_grad()
    def generate(self, b: Batch) -> tuple[Tensor, Tensor]:
        """Greedy captions (B, T) and the decoder's attention (B, T, MAX_REGIONS)."""
        memory, mask, h = self.start(b)
        token = torch.full((len(b.images),), BOS)
        tokens, alphas = [], []
        for _ in range(CAPTION_LEN):
            out, h, alpha = self.step(token, h, memory, mask)
            token = out.argmax(1)
            tokens.append(token)
            alphas.append(alpha)
        return torch.stack(tokens, 1), torch.stack(alphas, 1)


def block_parameters(model: Captioner) -> int:
    """Parameters of the one block that differs between the models."""
    block = model.mlp or model.relation or model.nonlocal_block
    assert block is not None
    return sum(p.numel() for p in block.parameters())


# ----------------------------------------------------------------------------- training
def evaluate(model: Captioner, data: list[Scene], batch_size: int = 128) -> dict[str, float]:
    """Greedy-decoding metrics on ``data`` (%): exact match, token, relation word, pair."""
    model.eval()
    exact = token = relation = pair = 0
    for i in range(0, len(data), batch_size):
        b = collate(data[i : i + batch_size])
        pred, _ = model.generate(b)
        right = pred == b.captions
        exact += int(right.all(1).sum())
        token += int(right.sum())
        relation += int(right[:, REL_POS].sum())
        pair += int(right[:, [0, 1, REL_POS + 1, REL_POS + 2]].all(1).sum())
    model.train()
    n = max(len(data), 1)
    return {
        "exact": 100 * exact / n,
        "token": 100 * token / (n * CAPTION_LEN),
        "relation": 100 * relation / n,
        "pair": 100 * pair / n,
    }


def train_step(model: Captioner, opt: torch.optim.Optimizer, b: Batch) -> float:
    logits = model(b)
    loss = F.cross_entropy(logits.flatten(0, 1), b.captions.flatten())
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def train(
    name: str, seed: int, train_data: list[Scene], test_data: list[Scene], args: argparse.Namespace
) -> dict:
    """Train one model on one seed; returns its curve, final metrics, time and memory."""
    torch.manual_seed(seed)
    model = Captioner(name, args.size)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(len(train_data) / args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.2
    )
    order_rng = torch.Generator().manual_seed(seed)
    curve: list[dict[str, float]] = []
    seconds = 0.0
    for epoch in range(args.epochs):
        order = torch.randperm(len(train_data), generator=order_rng).tolist()
        start = time.perf_counter()
        batches = range(0, len(order), args.batch_size)
        desc = f"{name} seed {seed} epoch {epoch + 1}/{args.epochs}"
        for i in eu.progress(batches, quiet=args.quiet, desc=desc):
            train_step(model, opt, collate([train_data[j] for j in order[i : i + args.batch_size]]))
            sched.step()
        seconds += time.perf_counter() - start
        curve.append(evaluate(model, test_data))
    memory = None
    if seed == 0:  # memory of one more training step (forward, backward, update)
        b = collate(train_data[: args.batch_size])
        memory = memory_stats(lambda: train_step(model, opt, b)).peak_bytes
    return {
        "model": model.eval(),
        "curve": curve,
        "final": curve[-1],
        "seconds": seconds,
        "memory": memory,
        "params": sum(p.numel() for p in model.parameters()),
        "block_params": block_parameters(model),
    }


# ----------------------------------------------------------------------------- report
METRICS = [
    ("exact", "exact match"),
    ("token", "token acc."),
    ("relation", "relation word"),
    ("pair", "pair (subject + object)"),
]


def prior_rates(train_data: list[Scene], test_data: list[Scene]) -> dict[str, float]:
    """Test scores of two position-blind guesses.

    ``relation``: the most common relation word of the training set; ``pair``: how often the
    described pair is the two objects whose colours come first in the priority order (what a
    captioner that ignores positions would name, shapes aside).
    """
    rel = torch.bincount(torch.stack([s.caption[REL_POS] for s in train_data]))
    best_rel = int(rel.argmax())
    rel_hits = pair_hits = 0
    for s in test_data:
        rel_hits += int(s.caption[REL_POS]) == best_rel
        first_two = sorted(s.colours)[:2]
        pair_hits += sorted([s.colours[s.subject], s.colours[s.obj]]) == first_two
    n = max(len(test_data), 1)
    return {"relation": 100 * rel_hits / n, "pair": 100 * pair_hits / n, "rel_word": best_rel}


#: Why a model may not beat ``regions``: said in the results file when it does not.
WHY_NOT = {
    "relation": "over the full graph each region must learn, from the geometric weight, to "
    "single out its nearest region among all of them, and the geometry of Hu et al. has no "
    "side (it uses |dx|, |dy|)",
    "relation-knn": "its graph holds only each region and its nearest region",
    "nonlocal": "its weights come from the node features only (no geometric term), so finding "
    "the nearest region needs the embedded-Gaussian logits to learn a distance from the box "
    "embeddings",
    "nonlocal-knn": "its graph holds only each region and its nearest region",
}


def verdict_lines(results: dict[str, list[dict]]) -> list[str]:
    """One line per model: its exact-match gain over ``regions`` and whether it wins."""
    if "regions" not in results:
        return []
    base = [r["final"]["exact"] for r in results["regions"]]
    lines = []
    for name, runs in results.items():
        if name == "regions":
            continue
        ours = [r["final"]["exact"] for r in runs]
        gain = sum(ours) / len(ours) - sum(base) / len(base)
        gap = min(ours) - max(base)
        if gap > 0:
            verdict = f"**wins** (its worst seed beats the baseline's best by {gap:.1f})"
        elif gain > 0:
            verdict = (
                f"is ahead on average but **does not win on every seed** (worst seed minus the "
                f"baseline's best: {gap:+.1f}); {WHY_NOT.get(name, '')}"
            )
        else:
            verdict = f"**does not win**: {WHY_NOT.get(name, '')}"
        lines.append(f"- `{name}` vs `regions`: {gain:+.1f} points of exact match; {verdict}.")
    return lines


def write_report(
    results: dict[str, list[dict]],
    args: argparse.Namespace,
    argv: list[str],
    wall_s: float,
    cpu_s: float,
    train_data: list[Scene],
    test_data: list[Scene],
) -> str:
    head = "| model | " + " | ".join(t for _, t in METRICS)
    head += " | parameters (block) | train time / seed | memory of a training step |"
    rows = [head, "|---|" + "---:|" * (len(METRICS) + 3)]
    for name, runs in results.items():
        cells = [eu.mean_std([r["final"][k] for r in runs]) for k, _ in METRICS]
        r0 = runs[0]
        rows.append(
            f"| `{name}` | " + " | ".join(cells) + f" | {r0['params']:,} ({r0['block_params']:,}) "
            f"| {eu.mean_std([r['seconds'] for r in runs], 0)} s | {format_bytes(r0['memory'])} |"
        )
    table = "\n".join(rows)
    print(table)
    prior = prior_rates(train_data, test_data)
    seeds = len(next(iter(results.values())))
    md = [
        "# Relational captioning (examples/captioning.py)",
        "",
        f"Generated scenes of 3-4 coloured shapes on a {args.size} x {args.size} canvas, each "
        'described by one sentence "<subject> <relation> <object>", e.g. "red square left of '
        'blue circle": the two objects nearest to each other, the subject being the one whose '
        "colour comes first in the order red, green, blue, yellow, magenta, and the side on "
        "which the subject lies relative to the object (along the axis of the larger offset). "
        "The ground-truth boxes are the proposals; region nodes from `roi_features`, one block "
        "(the only difference between the models), a GRU decoder with attention over the "
        f"regions. Greedy decoding on {args.test} held-out scenes after the last epoch, in %, "
        f"mean ± std over {seeds} seed(s).",
        "",
        table,
        "",
        "- exact match: the whole sentence; token acc.: the 6 tokens (5 words and the end "
        "token) position by position; relation word: the third token; pair: the subject's "
        "and the object's colour and shape all right (the right pair in the right order).",
        f"- position-blind references on the test scenes: the most common relation word "
        f'("{VOCAB[int(prior["rel_word"])]}") is right {prior["relation"]:.1f}% of the time; the '
        "pair is the two objects whose colours come first in the order "
        f"{prior['pair']:.1f}% of the time.",
        *verdict_lines(results),
        "",
        "Models (block parameters in brackets in the table; everything else is shared):",
        "",
        "- `regions`: a residual per-region MLP 64-96-64: each node sees only its own box.",
        "- `relation`: `ObjectRelation(64, num_heads=4, key_channels=16, geo_channels=32)` over "
        "all the regions of each image (appearance and relative box geometry).",
        "- `relation-knn`: the same with `graph=BoxKNN(2)`: each region and its nearest region.",
        "- `nonlocal`: `NonLocalBlock1d(64, inter_channels=48, sub_sample=False, norm=None, "
        'scale="inner")` over the full box graph of each image (`box_graph(boxes, batch)`); '
        "no geometric term, the positions only in the node features.",
        "- `nonlocal-knn`: the same block on the 2-NN box graph (`box_graph(boxes, batch, k=2)`).",
        "- shared: conv 3-16 (stride 2), conv 16-32, `roi_features` 4 x 4 bins -> linear 64, "
        "plus an MLP of the normalised box (x1, y1, x2, y2), LayerNorm; after the block a "
        "residual MLP 64-96-64 and LayerNorm; a GRU decoder (hidden 96, word embedding 32) with "
        "dot-product attention over the region nodes, initial state from their mean; teacher "
        "forcing in training, greedy decoding at test.",
        f"- training: {args.train} training scenes, {args.epochs} epochs, batch "
        f"{args.batch_size}, Adam with a one-cycle schedule peaking at lr {args.lr}, the same for "
        "every model. Data seeds 1000 (train) and 1001 (test); the seeds below set the model "
        "initialisation and the batch order.",
        "- train time / seed: training steps only (the per-epoch evaluation excluded). Memory: "
        "peak bytes of the tensors allocated during one training step (forward, backward, Adam "
        f"update) of {args.batch_size} scenes (`nlgraph._measure.memory_stats`, seed 0); peak "
        f"RSS of the whole run {eu.peak_rss_mib():.0f} MiB.",
        *eu.run_lines("captioning.py", argv, seeds, wall_s),
        f"- CPU time of the process: {cpu_s:.0f} s ({cpu_s / 60:.1f} min); on a shared machine "
        "it, rather than the wall time, approximates the run time on a quiet core.",
        "",
        "![training curves, test captions and relation weights](captioning.png)",
    ]
    (args.out_dir / "captioning.md").write_text("\n".join(md) + "\n")
    return table


def plot(results: dict[str, list[dict]], path: Path, test_data: list[Scene]) -> None:
    """Training curves, a few test scenes with their captions, and relation weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n_scenes = 3
    fig, axes = plt.subplots(2, 3 + 1, figsize=(17, 8.5))
    for ax, (key, title) in zip(axes[0, :3], METRICS[:1] + METRICS[2:4], strict=True):
        for name, runs in results.items():
            curves = torch.tensor([[c[key] for c in r["curve"]] for r in runs])
            epochs = range(1, curves.shape[1] + 1)
            (line,) = ax.plot(epochs, curves.mean(0).numpy(), marker="o", ms=3, label=name)
            if len(runs) > 1:
                lo, hi = curves.min(0).values, curves.max(0).values
                ax.fill_between(epochs, lo.numpy(), hi.numpy(), color=line.get_color(), alpha=0.15)
        ax.set(title=f"test {title} (%)", xlabel="epoch", ylim=(0, 102))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)

    rel_name = "relation" if "relation" in results else None
    rel_model = results[rel_name][0]["model"] if rel_name else None
    base_model = results["regions"][0]["model"] if "regions" in results else None
    scenes = test_data[:n_scenes]
    b = collate(scenes)
    captions = {}
    for name, runs in results.items():
        captions[name] = runs[0]["model"].generate(b)[0].tolist()
    attn = None
    if rel_model is not None:
        with torch.no_grad():
            _, attn = rel_model.nodes(b.images, b.boxes, b.batch, return_attention=True)
    # Top right: the relation weights of scene 0 as a matrix (mean over heads).
    ax = axes[0, 3]
    if attn is not None:
        sel = (b.batch == 0).nonzero()[:, 0]
        mat = attn.mean(0)[sel][:, sel]
        ax.imshow(mat.numpy(), vmin=0, vmax=1, cmap="viridis")
        labels = [f"{COLOURS[c][:3]} {SHAPES[s][:3]}" for c, s in zip(scenes[0].colours,
                  scenes[0].shapes, strict=True)]  # fmt: skip
        ax.set_xticks(range(len(sel)), labels, rotation=45, fontsize=7)
        ax.set_yticks(range(len(sel)), labels, fontsize=7)
        for i in range(len(sel)):
            for j in range(len(sel)):
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
        ax.set(title="'relation' weights, scene 0 (mean of heads)\nrow: query region, col: key")
    else:
        ax.axis("off")
    # Bottom: test scenes, captions, and the subject's relation weights as lines.
    offset = 0
    for k, s in enumerate(scenes):
        ax = axes[1, k]
        ax.imshow(s.image.clamp(0, 1).permute(1, 2, 0).numpy())
        centres = (s.boxes[:, :2] + s.boxes[:, 2:]) / 2
        for r, box in enumerate(s.boxes.tolist()):
            edge = "white" if r == s.subject else "grey"
            ax.add_patch(
                Rectangle(
                    (box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False, ec=edge, lw=0.8
                )
            )
        if attn is not None:
            w = attn.mean(0)[offset + s.subject, offset : offset + len(s.boxes)]
            for r in range(len(s.boxes)):
                if r != s.subject:
                    xs = [float(centres[s.subject, 0]), float(centres[r, 0])]
                    ys = [float(centres[s.subject, 1]), float(centres[r, 1])]
                    ax.plot(xs, ys, color="white", lw=0.5 + 6 * float(w[r]), alpha=0.8)
                    ax.text(
                        float(centres[r, 0]), float(centres[r, 1]) - 7, f"{float(w[r]):.2f}",
                        color="white", fontsize=7, ha="center",
                    )  # fmt: skip
        offset += len(s.boxes)
        lines = [f"truth: {words(s.caption.tolist())}"]
        for name in results:
            pred = captions[name][k]
            mark = "ok" if pred == s.caption.tolist() else "x"
            lines.append(f"{name}: {words(pred)} [{mark}]")
        ax.set_title("\n".join(lines), fontsize=7, loc="left")
        ax.set(xticks=[], yticks=[])
    ax = axes[1, 3]
    if base_model is not None:  # the baseline decoder's attention while writing scene 0
        _, alphas = base_model.generate(collate(scenes[:1]))
        n = len(scenes[0].boxes)
        ax.imshow(alphas[0, :, :n].numpy(), vmin=0, vmax=1, cmap="magma")
        pred = captions["regions"][0]
        ax.set_yticks(range(CAPTION_LEN), [VOCAB[t] for t in pred], fontsize=7)
        labels = [f"{COLOURS[c][:3]} {SHAPES[s][:3]}" for c, s in zip(scenes[0].colours,
                  scenes[0].shapes, strict=True)]  # fmt: skip
        ax.set_xticks(range(n), labels, rotation=45, fontsize=7)
        ax.set(title="'regions' decoder attention, scene 0\n(row: generated word)")
    else:
        ax.axis("off")
    fig.suptitle(
        "Relational captioning: lines in the scenes = 'relation' weights of the subject (white box)"
        " over the other regions",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100 if len(test_data) > 100 else 40)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    eu.add_common_args(parser)
    parser.add_argument("--train", type=int, default=2000, help="training scenes (default 2000)")
    parser.add_argument("--test", type=int, default=500, help="test scenes (default 500)")
    parser.add_argument("--size", type=int, default=48, help="canvas side in pixels (default 48)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    parser.add_argument("--batch-size", type=int, default=32, help="scenes per step (default 32)")
    parser.add_argument("--lr", type=float, default=6e-3, help="peak learning rate (default 6e-3)")
    parser.add_argument(
        "--models", nargs="+", default=MODELS, choices=MODELS, metavar="MODEL",
        help=f"models to train (default: all of {', '.join(MODELS)})",
    )  # fmt: skip
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.quick:
        args.train, args.test, args.epochs = 32, 16, 2
        args.seeds = min(args.seeds, 2)
    eu.setup(args)
    wall, cpu = time.perf_counter(), time.process_time()
    train_data = make_dataset(args.train, args.size, 1000)
    test_data = make_dataset(args.test, args.size, 1001)
    results: dict[str, list[dict]] = {}
    for name in args.models:
        results[name] = [train(name, s, train_data, test_data, args) for s in range(args.seeds)]
        f = results[name][-1]["final"]
        print(
            f"{name}: exact {eu.mean_std([r['final']['exact'] for r in results[name]])}%, "
            f"relation word {f['relation']:.1f}% (last seed)"
        )
    wall_s, cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    write_report(results, args, argv, wall_s, cpu_s, train_data, test_data)
    plot(results, args.out_dir / "captioning.png", test_data)
    print(f"wrote {args.out_dir / 'captioning.md'} and captioning.png ({wall_s:.0f} s)")


if __name__ == "__main__":
    main()
