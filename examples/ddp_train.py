r"""Data-parallel training (DDP) of a small CNN with two non-local blocks, one process per worker.

The model is a two-convolution stem, a dense :class:`nlgraph.NonLocalBlock2d` (``graph="full"``:
every position attends to every pooled position), a sparse one (``graph=nlgraph.graphs.KNN(k)``:
each position attends to its k keys of largest logit θ_i·φ_j, rebuilt every forward), global
average pooling and a linear head. The task is generated (no download): each image holds two
small squares of random colours at random places; the label says whether they share a colour,
a relation between two distant positions that the non-local blocks can carry.

The same script runs as one process or under ``torchrun``, which starts one process per worker
and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; the
process group is then initialised from them (``init_method="env://"``), with the ``nccl`` backend
on CUDA (one GPU per process, ``cuda:LOCAL_RANK``) and ``gloo`` on the CPU. Every process builds
the same data set and the same initial weights (fixed seeds; DDP also broadcasts rank 0's weights
at wrapping) and a :class:`~torch.utils.data.DistributedSampler` hands each one its share of
every global batch, so a run on W processes with ``--batch-size B`` takes the same steps as one
process with batch B: DDP averages the gradients, and the loss is a mean.

BatchNorm in training mode couples the samples of a batch. On CUDA the script converts every
BatchNorm to :class:`torch.nn.SyncBatchNorm` (statistics over the global batch). In torch 2.13
SyncBatchNorm raises ``ValueError`` on CPU tensors during distributed training, so on CPU each
process normalises its own share (the usual DDP behaviour without SyncBatchNorm); pass
``--norm none`` (no BatchNorm anywhere, the blocks' ``norm=None``) for a run that equals the
single-process one to float32 rounding, as ``tests/test_distributed.py`` checks.

Run::

    python examples/ddp_train.py                                  # one process
    torchrun --nproc_per_node=2 examples/ddp_train.py --threads 1 # two CPU processes, gloo
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 \
        --nproc_per_node=8 examples/ddp_train.py --device cuda    # 2 machines x 8 GPUs, nccl

It prints the loss and test accuracy of every epoch and rank 0 writes ``<out-dir>/ddp_train.md``
(``--save FILE`` also writes rank 0's final state_dict). ``SMOKE_ARGS`` is a run of a few
seconds over every code path (the example test runs it).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import nlgraph
from nlgraph import NonLocalBlock2d
from nlgraph.graphs import KNN

#: Default results folder, relative to the working directory (never the tracked
#: examples/results/: regenerate those with ``--out-dir examples/results``).
OUT_DIR = "nlgraph-results"

#: Square colours (RGB in [0, 1]); two squares of the same colour make a positive image.
PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.9, 0.1, 0.1),
    (0.1, 0.7, 0.1),
    (0.1, 0.2, 0.9),
    (0.95, 0.85, 0.1),
)
#: Side of a square, in pixels.
SQUARE = 3
NUM_CLASSES = 2
NORMS: tuple[str, ...] = ("batch", "none")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")

SMOKE_ARGS: list[str] = [
    "--train-images", "32", "--test-images", "16", "--size", "16", "--epochs", "1",
    "--batch-size", "8", "--width", "8", "--knn", "4",
]  # fmt: skip


# ---------------------------------------------------------------------------------- data
def generate(num: int, size: int, seed: int) -> TensorDataset:
    """``num`` images (3, size, size) with two squares each, and their labels (same colour: 1).

    Half of the images are positive. The squares never overlap (they lie in different halves of
    the image, left and right, at a random height).
    """
    g = torch.Generator().manual_seed(seed)
    palette = torch.tensor(PALETTE)
    images = torch.zeros(num, 3, size, size)
    labels = torch.arange(num) % NUM_CLASSES
    labels = labels[torch.randperm(num, generator=g)]
    first = torch.randint(len(PALETTE), (num,), generator=g)
    shift = torch.randint(1, len(PALETTE), (num,), generator=g)  # a different colour
    second = torch.where(labels == 1, first, (first + shift) % len(PALETTE))
    half = size // 2
    for i in range(num):
        for colour, lo in ((first[i], 0), (second[i], half)):
            r = int(torch.randint(0, size - SQUARE + 1, (1,), generator=g))
            c = lo + int(torch.randint(0, half - SQUARE + 1, (1,), generator=g))
            images[i, :, r : r + SQUARE, c : c + SQUARE] = palette[colour].view(3, 1, 1)
    return TensorDataset(images, labels)


# ---------------------------------------------------------------------------------- model
class NonLocalCNN(nn.Module):
    """Stem (two 3x3 convs, the first of stride 2), a dense and a k-NN non-local block, head.

    Args:
        width (int): channels of the stem and the blocks.
        knn (int): k of the sparse block's feature-space k-NN graph.
        norm (str): ``"batch"`` (BatchNorm in the stem and in the blocks) or ``"none"``.
    """

    def __init__(self, width: int, knn: int, norm: str) -> None:
        super().__init__()
        batch = norm == "batch"

        def conv(c_in: int, stride: int) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(c_in, width, 3, stride, 1, bias=not batch)]
            if batch:
                layers.append(nn.BatchNorm2d(width))
            return nn.Sequential(*layers, nn.ReLU())

        self.stem = nn.Sequential(conv(3, 2), conv(width, 1))
        block_norm = "batch" if batch else None
        self.dense = NonLocalBlock2d(width, graph="full", norm=block_norm)
        self.sparse = NonLocalBlock2d(width, graph=KNN(knn), norm=block_norm)
        self.head = nn.Linear(width, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (B, 2) of images (B, 3, S, S)."""
        x = self.sparse(self.dense(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))


# ---------------------------------------------------------------------------------- processes
@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among ``world_size`` processes, and its device."""

    rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None: a single process, no process group

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints and writes files."""
        return self.rank == 0


def setup(device: str) -> Context:
    """Join the process group that ``torchrun`` describes in the environment, or run alone.

    Args:
        device (str): ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    """
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device: expected a CUDA device to be available for 'cuda', got none")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Context(0, 1, torch.device("cuda" if use_cuda else "cpu"), None)
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of torch")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, init_method="env://")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return Context(dist.get_rank(), dist.get_world_size(), dev, backend)


def mean_over_processes(value: float, ctx: Context) -> float:
    """The mean of ``value`` over the processes (the value itself for one process)."""
    if ctx.backend is None:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t) / ctx.world_size


# ---------------------------------------------------------------------------------- training
def evaluate(model: nn.Module, data: TensorDataset, device: torch.device) -> float:
    """Accuracy of ``model`` on ``data`` (eval mode, batches of 64)."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(data, batch_size=64):
            correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
    model.train()
    return correct / max(len(data), 1)


def train(args: argparse.Namespace, ctx: Context) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train the model on this process's share of every global batch; return it (unwrapped) and
    one record per epoch (mean training loss over the processes, rank 0's test accuracy)."""
    if args.batch_size % ctx.world_size:
        raise ValueError(
            f"batch_size: expected a multiple of the {ctx.world_size} processes, "
            f"got {args.batch_size}"
        )
    train_set = generate(args.train_images, args.size, args.seed)
    test_set = generate(args.test_images, args.size, args.seed + 1)
    torch.manual_seed(args.seed)  # the same initial weights in every process
    model = NonLocalCNN(args.width, args.knn, args.norm).to(ctx.device)
    if ctx.backend is not None and args.norm == "batch":
        if ctx.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif ctx.is_main:
            print(
                "note: SyncBatchNorm needs CUDA tensors; on CPU each process normalises its own "
                "share of the batch (pass --norm none for a run equal to one process)"
            )
    net: nn.Module = model
    if ctx.backend is not None:
        # W_z's 1x1-conv weight gradient comes back with strides that differ from its bucket's
        # only on size-1 dimensions (same memory layout); DDP warns about it, harmlessly.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)
    # Every process draws the same permutation (seed + epoch) and takes every W-th index, so the
    # union of the W local batches of a step is the global batch of a one-process run.
    sampler: DistributedSampler[int] = DistributedSampler(
        train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=args.seed,
        drop_last=True,
    )  # fmt: skip
    loader = DataLoader(
        train_set, batch_size=args.batch_size // ctx.world_size, sampler=sampler, drop_last=True
    )
    optimiser = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum)
    history: list[dict[str, float]] = []
    step = 0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        start, losses = time.perf_counter(), []
        for x, y in loader:
            if args.steps is not None and step >= args.steps:
                break
            loss = F.cross_entropy(net(x.to(ctx.device)), y.to(ctx.device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            step += 1
        seconds = time.perf_counter() - start
        loss_mean = mean_over_processes(sum(losses) / max(len(losses), 1), ctx)
        record = dict(
            epoch=epoch + 1, steps=step, loss=loss_mean, seconds=seconds,
            accuracy=evaluate(model, test_set, ctx.device) if ctx.is_main else float("nan"),
        )  # fmt: skip
        history.append(record)
        if ctx.is_main and not args.quiet:
            print(
                f"epoch {epoch + 1}: loss {loss_mean:.4f}, test accuracy "
                f"{record['accuracy']:.1%}, {seconds:.1f} s ({step} steps)",
                flush=True,
            )
        if args.steps is not None and step >= args.steps:
            break
    return model, history


# ---------------------------------------------------------------------------------- report
def write_report(history: list[dict[str, float]], args: argparse.Namespace, ctx: Context) -> None:
    """Rank 0 writes ``<out-dir>/ddp_train.md``: the epochs, the run's settings, the machine."""
    rows = [
        "| epoch | steps | training loss | test accuracy | epoch time |",
        "|---:|---:|---:|---:|---:|",
    ]
    rows += [
        f"| {int(r['epoch'])} | {int(r['steps'])} | {r['loss']:.4f} | {r['accuracy']:.1%} | "
        f"{r['seconds']:.1f} s |"
        for r in history
    ]
    backend = ctx.backend or "none (one process)"
    md = [
        "# Data-parallel training with non-local blocks (examples/ddp_train.py)",
        "",
        "Two squares per image, same colour or not; a dense and a k-NN non-local block.",
        "",
        *rows,
        "",
        f"- command: `{args.command}`",
        f"- processes: {ctx.world_size}, backend {backend}, device {ctx.device.type}, "
        f"global batch {args.batch_size} ({args.batch_size // ctx.world_size} per process)",
        f"- data: {args.train_images} training / {args.test_images} test images of "
        f"{args.size}x{args.size} px; width {args.width}, k = {args.knn}, norm {args.norm}, "
        f"SGD lr {args.lr} momentum {args.momentum}, seed {args.seed}",
        f"- machine: {platform.machine()}, {torch.get_num_threads()} threads per process, "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"nlgraph {nlgraph.__version__}",
        f"- allocator: {_allocator()}",
        f"- wall time: {sum(r['seconds'] for r in history):.0f} s of training epochs "
        f"(one seed: a demonstration of DDP, not a comparison)",
    ]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "ddp_train.md").write_text("\n".join(md) + "\n")


def _allocator() -> str:
    """The glibc allocator variables of this run (see docs/performance.md)."""
    names = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
    found = [f"{n}={os.environ[n]}" for n in names if n in os.environ]
    return " ".join(found) or "glibc defaults"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command-line options (see ``--help``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-images", type=int, default=4096)
    p.add_argument("--test-images", type=int, default=512)
    p.add_argument("--size", type=int, default=24, help="image side in pixels")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--batch-size", type=int, default=32, help="global batch (all processes)")
    p.add_argument("--width", type=int, default=16, help="channels of the stem and blocks")
    p.add_argument("--knn", type=int, default=8, help="k of the sparse block's graph")
    p.add_argument("--norm", choices=NORMS, default="batch")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    p.add_argument("--save", type=Path, default=None, help="rank 0 writes its state_dict here")
    p.add_argument(
        "--out-dir", type=Path, default=Path(OUT_DIR),
        help="where the results go (default: ./nlgraph-results under the working directory; the "
        "repository's examples/results/ were written with --out-dir examples/results)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="print nothing per epoch")
    p.add_argument("--quick", action="store_true", help="the miniature run (SMOKE_ARGS), seconds")
    args = p.parse_args(argv)
    if args.quick:
        argv = [*SMOKE_ARGS, *(a for a in argv if a != "--quick")]
        args = p.parse_args(argv)
    shown = [a for a in argv if not a.startswith("--out-dir")]
    for i, a in enumerate(argv):  # the command without --out-dir's value (a test's tmp folder)
        if a == "--out-dir" and i + 1 < len(argv):
            shown.remove(argv[i + 1])
    procs = os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE"))
    launcher = f"torchrun --nproc_per_node={procs}" if "RANK" in os.environ else "python"
    args.command = f"{launcher} examples/ddp_train.py {' '.join(shown)}".rstrip()
    return args


def main(argv: list[str] | None = None) -> None:
    """Train (as one process, or as one of ``torchrun``'s), report on rank 0."""
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    ctx = setup(args.device)
    try:
        model, history = train(args, ctx)
        if ctx.is_main:
            write_report(history, args, ctx)
            if args.save is not None:
                torch.save(model.state_dict(), args.save)
            final = history[-1]
            print(
                f"{ctx.world_size} process(es), backend {ctx.backend or 'none'}: final loss "
                f"{final['loss']:.4f}, test accuracy {final['accuracy']:.1%}"
            )
    finally:
        if ctx.backend is not None:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
