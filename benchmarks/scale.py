r"""Training over a graph of 10^6 nodes: k-NN graph build, full-batch and mini-batch epochs.

The nodes are a point cloud: N positions uniform in the unit cube (3-D) with F-dimensional
features (the position, then noise) and a label, the octant of the position. The graph is the
k-NN graph of the positions, built by :func:`nlgraph.graphs.knn_graph` with
``search="grid"`` (exact; the cell-list search that ``"auto"`` takes for at most 3 features) or,
with ``--search ivf``, over the F-dimensional features with the clustered approximate search.
The model is a linear embedding to C channels, two :class:`nlgraph.nn.NonLocalConv` layers
(embedded Gaussian, residual) with a ReLU between, and a linear classifier; SGD on the
cross-entropy of every node.

Two ways through one epoch (every node's loss once):

- ``full-batch``: one step on the whole graph (median of ``--repeat`` epochs);
- ``NeighborLoader``: :class:`torch_geometric.loader.NeighborLoader` mini-batches of
  ``--batch-nodes`` seed nodes with ``--fanout`` sampled in-neighbours per hop and layer (two
  hops), the loss on the seed nodes; one epoch. PyG's own samplers need pyg-lib or
  torch-sparse; where neither is installed :class:`TorchNeighborSampler` (below, plain PyTorch)
  samples instead, and the results say which ran.

Memory is the process's resident set (RSS): the peak of each stage (Linux: ``VmHWM`` after
resetting it through ``/proc/self/clear_refs``) and of the whole run (``ru_maxrss``), so it counts
the data, the graph, the model, the autograd graph and the allocator's caching, not only tensors.
Target (issue 13): an epoch over 10^6 nodes with k = 8 within 8 GiB peak RSS.

Run ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776 python benchmarks/scale.py
[--quick]``; results go to ``benchmarks/results/scale.md``. ``--quick`` is a 5,000-node
version of a few seconds.
"""

from __future__ import annotations

import resource
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch_geometric.typing as pyg_typing
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.loader import NeighborLoader
from torch_geometric.sampler import NeighborSampler, SamplerOutput

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from nlgraph.graphs import knn_graph  # noqa: E402
from nlgraph.nn import NonLocalConv  # noqa: E402

NUM_NODES = 1_000_000
QUICK_NODES = 5_000
K = 8
FEATURES = 16
CHANNELS = 16
POSITION_DIMS = 3
NUM_CLASSES = 2**POSITION_DIMS  # the octant of the position
BATCH_NODES = 16_384
QUICK_BATCH_NODES = 1_024
FANOUT = (4, 4)
LR = 0.1
#: The target: an epoch over 10^6 nodes with k = 8 within this peak RSS.
TARGET_RSS = 8 * 2**30
SEARCHES = ("grid", "ivf")


# ---------------------------------------------------------------------------------- sampler
class TorchNeighborSampler(NeighborSampler):
    """PyG's :class:`~torch_geometric.sampler.NeighborSampler` with the homogeneous sampling step
    in plain PyTorch, for installs without pyg-lib or torch-sparse.

    Same output as PyG's directional sampling without replacement: the seed nodes first (local
    ids 0..B-1), then each hop's new nodes in order of first appearance; for every frontier node
    at most ``fanout`` of its in-edges, drawn uniformly without replacement (all of them for
    ``-1`` or when it has no more), as (``row`` source, ``col`` target) local ids and ``edge``
    positions in the sampler's CSC order. Heterogeneous, temporal, weighted and disjoint
    sampling are not supported.

    Args:
        data (Data): the graph (``edge_index``, ``num_nodes``).
        num_neighbors (list of int): fanout per hop; ``-1`` takes every in-neighbour.
    """

    def __init__(self, data: Data, num_neighbors: list[int]) -> None:
        with warnings.catch_warnings():  # "NeighborSampler without pyg-lib is deprecated"
            warnings.simplefilter("ignore")
            super().__init__(data, num_neighbors)
        if self.data_type.name != "homogeneous":
            raise NotImplementedError("data: expected a homogeneous graph (Data), got HeteroData")
        #: Global -> local node id of the current sample (-1: not in it); reset after each.
        self._local = torch.full((int(data.num_nodes),), -1, dtype=torch.long)

    def _sample(self, seed: Any, seed_time: Any = None, **kwargs: Any) -> SamplerOutput:
        if isinstance(seed, dict) or seed_time is not None:
            raise NotImplementedError("seed: expected homogeneous, non-temporal seed nodes")
        local, colptr, row = self._local, self.colptr.long(), self.row
        seed = seed.long()
        local[seed] = torch.arange(seed.numel())
        count = seed.numel()
        nodes, rows, cols, edges = [seed], [], [], []
        num_nodes, num_edges = [seed.numel()], []
        frontier = seed
        for fanout in self.num_neighbors.get_mapped_values():
            start = colptr[frontier]
            degree = colptr[frontier + 1] - start
            owner = torch.repeat_interleave(torch.arange(frontier.numel()), degree)
            offset = degree.cumsum(0) - degree
            rank = torch.arange(owner.numel()) - offset[owner]
            pos = start[owner] + rank
            if fanout >= 0 and owner.numel() and bool((degree > fanout).any()):
                # Random keys sorted within each target: keep each target's `fanout` smallest.
                order = torch.rand(owner.numel()).argsort()
                order = order[owner[order].argsort(stable=True)]
                keep = order[(torch.arange(order.numel()) - offset[owner[order]]) < fanout]
                keep = keep.sort().values
                pos, owner = pos[keep], owner[keep]
            src = row[pos]
            fresh = src[local[src] < 0]
            unique, inverse = torch.unique(fresh, return_inverse=True)
            first = torch.full((unique.numel(),), fresh.numel(), dtype=torch.long)
            first.scatter_reduce_(0, inverse, torch.arange(fresh.numel()), "amin")
            new = unique[first.argsort()]
            local[new] = torch.arange(count, count + new.numel())
            count += new.numel()
            rows.append(local[src])
            cols.append(local[frontier][owner])
            edges.append(pos)
            nodes.append(new)
            num_nodes.append(new.numel())
            num_edges.append(pos.numel())
            frontier = new
        node = torch.cat(nodes)
        local[node] = -1
        return SamplerOutput(
            node=node, row=torch.cat(rows), col=torch.cat(cols), edge=torch.cat(edges),
            batch=None, num_sampled_nodes=num_nodes, num_sampled_edges=num_edges,
        )  # fmt: skip


def pyg_sampling_available() -> bool:
    """Whether PyG's own neighbour sampling can run (pyg-lib or torch-sparse installed)."""
    return bool(pyg_typing.WITH_PYG_LIB or pyg_typing.WITH_TORCH_SPARSE)


def neighbor_loader(
    data: Data, num_neighbors: list[int], *, batch_size: int, shuffle: bool = True, **kwargs: Any
) -> NeighborLoader:
    """A :class:`~torch_geometric.loader.NeighborLoader`, with :class:`TorchNeighborSampler`
    where PyG's own sampling is not installed."""
    sampler = None if pyg_sampling_available() else TorchNeighborSampler(data, num_neighbors)
    return NeighborLoader(
        data, num_neighbors, batch_size=batch_size, shuffle=shuffle, neighbor_sampler=sampler,
        **kwargs,
    )  # fmt: skip


# ---------------------------------------------------------------------------------- model
class NodeClassifier(nn.Module):
    """Linear embedding, two NonLocalConv layers with a ReLU between, linear classifier."""

    def __init__(self, in_features: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.embed = nn.Linear(in_features, channels)
        self.conv1 = NonLocalConv(channels)
        self.conv2 = NonLocalConv(channels)
        self.classify = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Class logits (N, classes) of node features (N, F) over ``edge_index`` (2, E)."""
        h = self.conv1(self.embed(x), edge_index)
        return self.classify(self.conv2(F.relu(h), edge_index))


def make_nodes(num_nodes: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Positions (N, 3) in the unit cube, features (N, F) (position, then noise), labels (N,)."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(num_nodes, POSITION_DIMS, generator=g)
    noise = torch.randn(num_nodes, FEATURES - POSITION_DIMS, generator=g)
    x = torch.cat([pos - 0.5, noise], dim=1)
    octant = (pos > 0.5).long()
    y = (octant * (2 ** torch.arange(POSITION_DIMS))).sum(1)
    return pos, x, y


# ---------------------------------------------------------------------------------- memory
def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux ``clear_refs`` 5); False where that is impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    """Peak RSS in bytes since the last reset (``VmHWM``), else since the start (ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return process_peak_rss()


def process_peak_rss() -> int:
    """The whole run's peak RSS in bytes (``getrusage``; KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class Stage:
    """Times a block and records its peak RSS: ``with Stage() as s: ...; s.seconds, s.peak``."""

    def __enter__(self) -> Stage:
        self.exact = _reset_peak_rss()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
        self.peak = _peak_rss()


# ---------------------------------------------------------------------------------- epochs
def full_batch_epoch(model: nn.Module, opt: torch.optim.Optimizer, data: Data) -> float:
    """One SGD step on every node; returns the loss."""
    loss = F.cross_entropy(model(data.x, data.edge_index), data.y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def loader_epoch(model: nn.Module, opt: torch.optim.Optimizer, loader: NeighborLoader) -> float:
    """One pass of the loader (a step per mini-batch, loss on its seed nodes); the mean loss."""
    total, count = 0.0, 0
    for batch in loader:
        n = batch.batch_size
        loss = F.cross_entropy(model(batch.x, batch.edge_index)[:n], batch.y[:n])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * n
        count += n
    return total / max(count, 1)


def build_graph(pos: Tensor, x: Tensor, search: str) -> Tensor:
    """The k-NN ``edge_index`` of the positions (grid) or of the features (ivf)."""
    if search == "grid":
        return knn_graph(pos, K, search="grid")
    return knn_graph(x, K, search="ivf")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _common.make_parser("scale", __doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=None, help=f"N (default {NUM_NODES:,})")
    parser.add_argument("--search", choices=SEARCHES, default="grid")
    parser.add_argument("--batch-nodes", type=int, default=None, help="seed nodes per batch")
    parser.add_argument("--no-loader", action="store_true", help="skip the NeighborLoader epoch")
    args = parser.parse_args(argv)
    n = args.nodes or (QUICK_NODES if args.quick else NUM_NODES)
    batch_nodes = args.batch_nodes or (QUICK_BATCH_NODES if args.quick else BATCH_NODES)
    repeat = 1 if args.quick else args.repeat
    torch.manual_seed(0)
    rows: list[list[Any]] = []

    with Stage() as s:
        pos, x, y = make_nodes(n)
    rows.append(["generate nodes", "—", _common.fmt_time(s.seconds), _common.fmt_bytes(s.peak)])
    with Stage() as s:
        edge_index = build_graph(pos, x, args.search)
    build = s
    rows.append(
        [f"k-NN graph ({args.search})", f"E = {edge_index.shape[1]:,}",
         _common.fmt_time(s.seconds), _common.fmt_bytes(s.peak)]
    )  # fmt: skip
    print(" | ".join(map(str, rows[-1])), flush=True)
    data = Data(x=x, edge_index=edge_index, y=y, num_nodes=n)

    model = NodeClassifier(FEATURES, CHANNELS, NUM_CLASSES)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    losses = []
    times = []
    with Stage() as s:
        for _ in range(max(repeat, 1) + (0 if args.quick else args.warmup)):
            start = time.perf_counter()
            losses.append(full_batch_epoch(model, opt, data))
            times.append(time.perf_counter() - start)
    timed = times[0 if args.quick else args.warmup :]
    full_time = sorted(timed)[len(timed) // 2]
    full_peak = s.peak
    rows.append(
        ["full-batch epoch (1 step)", f"median of {len(timed)}, loss {losses[0]:.3f} → "
         f"{losses[-1]:.3f}", _common.fmt_time(full_time), _common.fmt_bytes(s.peak)]
    )  # fmt: skip
    print(" | ".join(map(str, rows[-1])), flush=True)

    sampler_name = "PyG" if pyg_sampling_available() else "TorchNeighborSampler"
    loader_time = loader_peak = None
    if not args.no_loader:
        loader = neighbor_loader(data, list(FANOUT), batch_size=batch_nodes)
        model = NodeClassifier(FEATURES, CHANNELS, NUM_CLASSES)
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
        with Stage() as s:
            mean_loss = loader_epoch(model, opt, loader)
        loader_time, loader_peak = s.seconds, s.peak
        rows.append(
            [f"NeighborLoader epoch ({len(loader)} batches)",
             f"{batch_nodes:,} seeds, fanout {list(FANOUT)}, {sampler_name}; mean loss "
             f"{mean_loss:.3f}", _common.fmt_time(s.seconds), _common.fmt_bytes(s.peak)]
        )  # fmt: skip
        print(" | ".join(map(str, rows[-1])), flush=True)

    total_peak = process_peak_rss()
    rows.append(["whole run", "process peak RSS (ru_maxrss)", "—", _common.fmt_bytes(total_peak)])
    peak_note = (
        "peak RSS per stage: VmHWM reset before each stage"
        if build.exact
        else "peak RSS per stage: ru_maxrss (cannot reset: cumulative)"
    )
    if args.quick or n < NUM_NODES:
        verdict = f"- not checked: N = {n:,} (the target needs N = {NUM_NODES:,}; drop --quick)"
    else:
        ok = total_peak <= TARGET_RSS
        verdict = (
            f"- {'PASS' if ok else 'FAIL'}: an epoch over {n:,} nodes, k = {K}, within 8 GiB "
            f"peak RSS: the whole run peaked at {_common.fmt_bytes(total_peak)} (graph build "
            f"{_common.fmt_time(build.seconds)}, full-batch epoch "
            f"{_common.fmt_time(full_time)} at {_common.fmt_bytes(full_peak)}"
            + (
                f", NeighborLoader epoch {_common.fmt_time(loader_time)} at "
                f"{_common.fmt_bytes(loader_peak)})"
                if loader_time is not None
                else ")"
            )
        )
    search_text = (
        "`knn_graph(pos, k, search='grid')` over the 3-D positions (exact, cell list)"
        if args.search == "grid"
        else f"`knn_graph(x, k, search='ivf')` over the {FEATURES}-D features (approximate)"
    )
    body = (
        f"N = {n:,} nodes, k = {K}, {FEATURES} features, {NUM_CLASSES} classes; graph: "
        f"{search_text}; model: Linear({FEATURES}, {CHANNELS}) → NonLocalConv({CHANNELS}) → "
        f"ReLU → NonLocalConv({CHANNELS}) → Linear({CHANNELS}, {NUM_CLASSES}); SGD lr {LR}, "
        f"momentum 0.9, float32; {peak_note}.\n\n"
        + _common.markdown_table(["stage", "detail", "time", "peak RSS"], rows)
        + "\n\n## Target\n\n"
        + verdict
    )
    out = _common.write_results(
        args.out, "Training over a 10^6-node graph", [("Results", body)],
        _common.command_line("scale", argv),
    )  # fmt: skip
    print(verdict)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
