r"""k nearest keys in feature space, built inside a block's forward (no grad).

For each query i of each sample, keep the k keys j with the best score:

- ``metric="logit"``: the largest unscaled logit :math:`q_i \cdot k_j` (θ_i·φ_j; the raw input
  in the Gaussian mode) — the keys that would dominate the embedded-Gaussian softmax;
- ``metric="l2"``: the smallest :math:`\lVert q_i - k_j \rVert_2`;
- ``metric="cosine"``: the largest cosine similarity.

Two searches:

- ``search="exact"`` (what ``"auto"`` means): a full scan, computed in blocks of queries so that
  peak memory is O(B · block · N') rather than O(B · N · N'); ties are broken towards the lower
  key index (the shared tie-aware top-k of ``nlgraph.graphs._topk``). No tensor value is read on
  the host: the build runs inside a ``torch.compile``'d or CUDA forward without synchronising.
  Its cost is O(N · N' · C), the same order as dense attention. A NaN score (a NaN feature)
  ranks last, level with -inf: a NaN key is nobody's neighbour while k finite keys exist, so
  one NaN pixel makes only its own output NaN (dense attention spreads it to every query).
  The fused Triton scan of :mod:`nlgraph.graphs._triton_knn` gives the same graphs
  (``force_triton_knn()``; not yet the default on CUDA: measured on a GPU first).
- ``search="ivf"``: the clustered approximate search of :mod:`nlgraph.graphs.ivf` (k-means lists
  of the keys, each query scans the lists probed for its group), about O(N · n_probe · N'/L · C)
  for L lists: 10-20x cheaper than the exact scan from N' = 65536 on, with recall@k measured by
  :func:`nlgraph.graphs.knn_recall` (``benchmarks/results/recall.md``). Its centroids are
  warm-started from the module's previous call. It reads a few sizes on the host per build.

The neighbours of a row come in ascending key index. With k >= N' every key is a neighbour and
the full graph (``"full"``) is returned, so the dense fast paths run.

**Rebuild schedule.** ``refresh_every=T`` keeps the graph a module built and rebuilds it only
every T-th training-mode call (see :class:`KNN`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._validate import check_bool, check_choice, check_float_tensor, check_positive_int, describe
from ._topk import topk_tie_low
from ._triton_knn import triton_knn, use_triton_knn
from .base import RegularGraph, trusted
from .ivf import check_ivf_options, default_clusters, ivf_knn
from .spec import Graph, GraphContext, GraphSpec, GraphState

__all__ = ["KNN"]

METRICS: tuple[str, ...] = ("logit", "l2", "cosine")
#: The searches of :class:`KNN`: ``"auto"`` is ``"exact"``.
SEARCHES: tuple[str, ...] = ("auto", "exact", "ivf")

#: Elements of the (B, block, N') score buffer when ``block_size=None`` (8 MiB in float32).
#: Small enough to stay in cache between the matmul that writes it and the top-k that reads it:
#: at N'=16384, C'=32, 128-row blocks score 1.9x faster than 256-row (16 MiB) ones here.
AUTO_BLOCK_ELEMENTS = 1 << 21


def _check_embeddings(query: object, key: object) -> None:
    """A direct :meth:`KNN.build` call (a module's context is consistent by construction):
    query ``ctx`` (B, N, C) and ``key`` (B, N', C), floating point, same dtype, device, B and C.
    Shapes, dtypes and devices only: no value is read."""
    q = check_float_tensor("ctx", query)
    if q.dim() != 3:
        raise ValueError(f"ctx: expected (B, N, C) query embeddings, got {describe(q)}")
    if key is None:
        return
    k = check_float_tensor("key", key)
    if k.dim() != 3 or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(
            f"key: expected ({q.shape[0]}, N', {q.shape[2]}) key embeddings (as the queries "
            f"ctx: {describe(q)}), got {describe(k)}"
        )
    if k.dtype != q.dtype or k.device != q.device:
        raise ValueError(
            f"key: expected dtype {q.dtype} on {q.device} as the queries ctx, got {describe(k)}"
        )


@dataclass(frozen=True)
class KNN(GraphSpec):
    r"""Feature-space k-NN edge set for the non-local blocks.

    Args:
        k (int): neighbours per query (k >= N' means the full graph).
        metric (str): ``"logit"``, ``"l2"`` or ``"cosine"`` (see the module docstring).
            (default: ``"logit"``)
        block_size (int, optional): queries scored at once (memory O(B · block_size · N')).
            ``None`` picks min(1024, max(16, 2**21 // (B · N'))) rows: a score buffer of about
            8 MiB in float32. (default: ``None``)
        reuse (bool): removed. It used to keep the first graph built and hand it to every later
            call with the same shapes, so a new batch of the same shape silently got the old
            batch's graph. Share a graph explicitly instead: ``g = block.build_graph(x)``, then
            ``block(x, graph=g)`` (and ``other_block(x, graph=g)``) for as long as you want it.
            ``reuse=True`` raises ``ValueError`` saying so. (default: ``False``)
        search (str): ``"auto"`` or ``"exact"`` (the full scan) or ``"ivf"`` (the clustered
            approximate search, :func:`nlgraph.graphs.ivf.ivf_knn`). (default: ``"auto"``)
        n_clusters (int, optional): ``search="ivf"``: k-means lists per sample.
            ``None``: :func:`nlgraph.graphs.ivf.default_clusters` of N' (≈ √N', a power of 2).
            (default: ``None``)
        n_probe (int, optional): ``search="ivf"``: lists scanned per query, at most
            ``n_clusters``; ``n_probe = n_clusters`` is exact. ``None``:
            :func:`nlgraph.graphs.ivf.default_probe` (1/16 of the lists below 256, 1/32 from
            256, raised to scan about 8·k keys at least: every list, i.e. the exact search,
            where N' is small against k). (default: ``None``)
        refresh_every (int): in training mode, rebuild the graph every ``refresh_every``-th
            call and hand the kept graph to the calls between (one graph per module, dropped
            when the input's shape, device or dtype changes; a kept graph was built on an
            earlier batch, so T > 1 trades accuracy for time, see
            ``examples/knn_graphs.py``). In eval mode, and without a module (a direct
            :meth:`build`), every call builds. (default: ``1``: every call)
        seed (int): ``search="ivf"``: seed of the ``torch.Generator`` that draws the initial
            centroids and the k-means sample: the same seed and input give the same graph.
            (default: ``0``)
        warm_start (bool): ``search="ivf"``: start k-means from the centroids of the module's
            previous call (2 Lloyd iterations instead of 8), as the Routing Transformer's
            running centroids; the graph then depends on the module's history. Only training
            calls update the kept centroids (evaluation starts from them, leaves them as
            they are).
            (default: ``True``)

    Shapes:
        - :meth:`build` query (B, N, C), key (B, N', C) → RegularGraph index (B, N, k)

    Example:
        >>> g = KNN(4).build(torch.randn(2, 10, 8), torch.randn(2, 6, 8))
        >>> g.index.shape
        torch.Size([2, 10, 4])
    """

    k: int
    metric: str = "logit"
    block_size: int | None = None
    reuse: bool = False
    search: str = "auto"
    n_clusters: int | None = None
    n_probe: int | None = None
    refresh_every: int = 1
    seed: int = 0
    warm_start: bool = True

    def __post_init__(self) -> None:
        check_positive_int("k", self.k)
        check_choice("metric", self.metric, METRICS)
        if self.block_size is not None:
            check_positive_int("block_size", self.block_size)
        check_choice("search", self.search, SEARCHES)
        check_ivf_options(self.search, self.n_clusters, self.n_probe)
        check_positive_int("refresh_every", self.refresh_every)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed: expected an int, got {type(self.seed).__name__}")
        check_bool("warm_start", self.warm_start)
        if self.reuse is not False:
            raise ValueError(
                "reuse: expected False (a graph kept inside the spec was silently reused for "
                "later batches of the same shape, so it was removed); share a graph explicitly "
                f"with g = block.build_graph(x) and block(x, graph=g), got {self.reuse!r}"
            )

    @torch.no_grad()
    def build(self, ctx: GraphContext | Tensor, key: Tensor | None = None) -> Graph:
        """The per-sample k-NN graph of the queries over the keys (``"full"`` when k >= N').

        Args:
            ctx (GraphContext or Tensor): a context holding the embeddings ``query``
                (B, N, C) and ``key`` (B, N', C), or the query embeddings themselves.
            key (Tensor, optional): the key embeddings when ``ctx`` is the queries.
        """
        if isinstance(ctx, GraphContext):
            query, key = ctx.query, ctx.key
            if query is None or key is None:
                raise ValueError(
                    "ctx: expected query and key embeddings (a feature-space k-NN graph is "
                    "built from them), got None"
                )
        else:
            query = ctx
            _check_embeddings(query, key)
        if key is None:
            raise ValueError("key: expected the (B, N', C) key embeddings, got None")
        if self.k >= key.shape[1]:
            return "full"
        state = ctx.state if isinstance(ctx, GraphContext) else None
        training = isinstance(ctx, GraphContext) and ctx.training
        if state is None or self.refresh_every == 1 or not training:
            return self._build(query, key, state, training)
        sig = (tuple(query.shape), tuple(key.shape), query.device, query.dtype)
        kept = state.get(("graph", self))
        if kept is not None and kept[0] == sig and kept[1] < self.refresh_every:
            state[("graph", self)] = (sig, kept[1] + 1, kept[2])
            return kept[2]
        graph = self._build(query, key, state, training)
        state[("graph", self)] = (sig, 1, graph)
        return graph

    def _build(
        self, query: Tensor, key: Tensor, state: GraphState | None = None, training: bool = True
    ) -> RegularGraph:
        if self.search == "ivf":
            return self._build_ivf(query, key, state, training)
        b, n, m = query.shape[0], query.shape[1], key.shape[1]
        q, kk = query.detach(), key.detach()
        if use_triton_knn(q, kk, self.k):
            # Inside force_triton_knn(): the fused Triton scan keeps a running top-k per query
            # in registers, never storing a score block; the same graph.
            return trusted(RegularGraph(triton_knn(q, kk, self.k, metric=self.metric), m))
        if self.metric == "cosine":
            q = torch.nn.functional.normalize(q, dim=-1)
            kk = torch.nn.functional.normalize(kk, dim=-1)
        # Row-major (B, N, C) queries and keys: bmm on their blocks is ~2.4x faster than on the
        # (B, C, N)-transposed views the blocks produce (measured at N=16384, C=32).
        q, kk = q.contiguous(), kk.contiguous()
        key_t = kk.transpose(1, 2)
        sq = (kk * kk).sum(-1).unsqueeze(1) if self.metric == "l2" else None
        index = torch.empty(b, n, self.k, dtype=torch.long, device=query.device)
        block = self.block_size or min(1024, max(16, AUTO_BLOCK_ELEMENTS // max(1, b * m)))
        buffer = torch.empty(b, min(block, n), m, dtype=q.dtype, device=q.device)
        for start in range(0, n, block):
            stop = min(start + block, n)
            # The buffer's first B·rows·N' elements, contiguous (a short last block included):
            # ``out=`` into a strided slice would copy in eager and break a torch.compile graph.
            scores = buffer.view(-1)[: b * (stop - start) * m].view(b, stop - start, m)
            if sq is None:
                torch.bmm(q[:, start:stop], key_t, out=scores)
            else:  # -(|k|^2 - 2 q.k): larger is nearer (|q|^2 is constant per row)
                torch.baddbmm(sq, q[:, start:stop], key_t, beta=-1, alpha=2, out=scores)
            index[:, start:stop] = topk_tie_low(scores, self.k)
        return trusted(RegularGraph(index, m))

    def _build_ivf(
        self, query: Tensor, key: Tensor, state: GraphState | None, training: bool
    ) -> RegularGraph:
        """The clustered search, warm-started from the module's centroids (and updating them
        in training)."""
        slot = ("centroids", self)
        m = key.shape[1]
        n_clusters = default_clusters(m) if self.n_clusters is None else min(self.n_clusters, m)
        start = None
        if state is not None and self.warm_start:
            kept = state.get(slot)
            if kept is not None and kept.shape == (key.shape[0], n_clusters, key.shape[2]):
                start = kept if kept.device == key.device else None
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        result = ivf_knn(
            query,
            key,
            self.k,
            metric=self.metric,
            n_clusters=n_clusters,
            n_probe=self.n_probe,
            generator=generator,
            centroids=start,
        )
        if state is not None and self.warm_start and training:
            state[slot] = result.centroids
        return trusted(RegularGraph(result.index, key.shape[1], result.mask))

    def __repr__(self) -> str:
        extra = "" if self.metric == "logit" else f", metric={self.metric!r}"
        for name, default in (
            ("search", "auto"),
            ("n_clusters", None),
            ("n_probe", None),
            ("refresh_every", 1),
            ("seed", 0),
            ("warm_start", True),
        ):
            value: Any = getattr(self, name)
            if value != default:
                extra += f", {name}={value!r}"
        return f"KNN(k={self.k}{extra})"
