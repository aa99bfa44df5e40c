r"""Exact, memory-blocked k-nearest-neighbour builders with PyG's signatures.

:func:`knn` and :func:`knn_graph` take the arguments of ``torch_geometric.nn.knn`` and
``torch_geometric.nn.knn_graph`` and return the same ``edge_index``, but run on plain PyTorch
(PyG's versions need pyg-lib). The search is exact and blocked over the queries: for a block of
query rows :math:`y_b` (at most ``block_size``) and the points :math:`x` of their graphs, one
``addmm`` into a reused buffer gives the scores

.. math::
    s_{ij} = 2\, y_i \cdot x_j - \lVert x_j \rVert^2
    \quad (= \lVert y_i \rVert^2 - \lVert y_i - x_j \rVert^2,\ \text{same order per row,
    reversed})

and a tie-aware top-k picks each row's k largest (the k nearest), so peak memory is
O(block_size · N) rather than N × M, and the work is O(N · M · F).

**Search.** Points with at most 3 features (positions, box centres) under the l2 metric take
:func:`nlgraph.graphs.grid_knn.search_grid` instead (``search="auto"``, the default): a uniform
grid (cell list) whose cells are sized from the data, searched cell by cell and widened until
every query's k nearest are certain, in O((N + M) log N + M · c) work (c a small multiple of k
candidates per query on spread data) and O(N + M · k) memory. It returns the same neighbours in
the same order; it ranks by :math:`\sum_f (y_f - x_f)^2` rather than the score above, which
rounds relative to :math:`\lVert x_j \rVert^2`, so the two can order float32 near-ties
(distances equal to ~1e-7 relative) differently, the grid being the exact one (see its module
docstring). ``search="exact"`` always takes the blocked all-pairs search, ``search="grid"``
insists on the grid.
``cosine=True`` (or ``metric="cosine"``) ranks by the cosine distance
:math:`1 - \hat y_i \cdot \hat x_j` (rows scaled to unit norm; a zero row has similarity 0 to
everything); ``metric="ip"`` ranks by the inner product :math:`y_i \cdot x_j`, largest first.

**Ties** are broken towards the lower index of ``x``, deterministically on every device: each
row's k nearest are selected by (distance, index) with
:func:`nlgraph.graphs._topk.topk_tie_low`, the exact tie-aware top-k shared by nlgraph's
builders.

**Output order:** queries in increasing order, each query's neighbours nearest first.

**Batches** follow PyG: ``batch_x``/``batch_y`` are sorted integer graph ids (any integer dtype,
used as int64); a query only sees the points of its own graph and gets
``min(k, number of candidates)`` neighbours. 1-D ``x``/``y`` are one feature per point
(``x.view(-1, 1)``, as torch-cluster does).

**PyG-only arguments.** ``num_workers`` and ``batch_size`` are accepted in PyG's positional
places so that PyG code calling ``torch_geometric.nn.knn``/``knn_graph`` can call these
instead. ``num_workers`` (pyg-lib/torch-cluster: CPU worker threads, used only without batch
vectors) is validated and has no other effect: the search runs on torch's intra-op threads
(``torch.set_num_threads``), or faiss's OpenMP threads with ``backend="faiss"``.
``batch_size`` is PyG's number of examples B: when given, the graph count is taken from it
instead of read from the batch vectors' last id.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._validate import (
    check_bool,
    check_choice,
    check_finite_rows,
    check_float_tensor,
    check_positive_int,
    describe,
)
from ._topk import topk_tie_low
from .grid_knn import GRID_MAX_FEATURES, search_grid
from .ivf import check_ivf_options, search_points

__all__ = ["SEARCHES", "knn", "knn_graph"]

METRICS: tuple[str, ...] = ("l2", "cosine", "ip")
#: Elements of one block's (rows, N) score buffer when ``block_size=None``.
AUTO_BLOCK_ELEMENTS = 1 << 22
BACKENDS: tuple[str, ...] = ("torch", "faiss")
FLOWS: tuple[str, ...] = ("source_to_target", "target_to_source")
#: Neighbour searches: auto (the grid where it applies), the blocked all-pairs search, the grid,
#: the clustered approximate search.
SEARCHES: tuple[str, ...] = ("auto", "exact", "grid", "ivf")


def _resolve_metric(cosine: bool, metric: str | None) -> str:
    check_bool("cosine", cosine)
    if metric is None:
        return "cosine" if cosine else "l2"
    check_choice("metric", metric, METRICS)
    if cosine and metric != "cosine":
        raise ValueError(f"cosine: expected False when metric={metric!r}, got True")
    return metric


def _check_points(name: str, t: object) -> Tensor:
    """A floating-point (num_points, features) tensor of finite values; 1-D is one feature per
    point. A NaN or infinite point has no defined distances: ``ValueError`` naming its row
    (one host read; the searches read sizes on the host anyway)."""
    t = check_float_tensor(name, t)
    if t.dim() == 1:
        t = t.view(-1, 1)
    if t.dim() != 2:
        raise ValueError(
            f"{name}: expected a 1-D (num_points,) or 2-D (num_points, features) tensor, "
            f"got {describe(t)}"
        )
    return check_finite_rows(name, t, " (a NaN or infinite point has no neighbours)")


def _ptr(name: str, batch: Tensor | None, n: int, x: Tensor) -> Tensor | None:
    """Validate a batch vector; return it as int64 on ``x``'s device (``None`` stays ``None``)."""
    if batch is None:
        return None
    if not isinstance(batch, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(batch).__name__}")
    integer = not (
        batch.dtype.is_floating_point or batch.dtype.is_complex or batch.dtype == torch.bool
    )
    if not integer or batch.dim() != 1 or batch.numel() != n:
        raise ValueError(
            f"{name}: expected a 1-D integer tensor of length {n}, got {describe(batch)}"
        )
    batch = batch.to(device=x.device, dtype=torch.long)
    if n and bool(batch[0] < 0):
        raise ValueError(f"{name}: expected non-negative graph ids, got {int(batch.min())}")
    if n > 1 and not bool((batch[1:] >= batch[:-1]).all()):
        raise ValueError(f"{name}: expected a sorted batch vector, got unsorted graph ids")
    return batch


def _offsets(batch: Tensor | None, n: int, num_graphs: int) -> list[int]:
    """Start of each graph's points, plus ``n`` at the end (PyG's ``ptr``), as Python ints.

    Has more than ``num_graphs + 1`` entries when ``batch`` holds an id >= ``num_graphs``.
    """
    if batch is None:
        return [0] + [n] * num_graphs
    counts = torch.bincount(batch, minlength=num_graphs).cumsum(0).tolist()
    return [0, *counts]


def _graph_offsets(
    batch_x: Tensor | None,
    batch_y: Tensor | None,
    n_x: int,
    n_y: int,
    batch_size: int | None,
    names: tuple[str, str],
) -> tuple[list[int], list[int]]:
    """The offsets of x's and y's graphs over ``batch_size`` graphs when it is given (checked
    against the ids without reading their maximum), else over the largest id + 1."""
    same = batch_y is not None and batch_y is batch_x
    vectors = [b for b in ((batch_x,) if same else (batch_x, batch_y)) if b is not None]
    if batch_size is None:
        num_graphs = 1 + max([int(b[-1]) for b in vectors if b.numel()], default=0)
    else:
        num_graphs = batch_size
    ptr_x = _offsets(batch_x, n_x, num_graphs)
    ptr_y = ptr_x if same else _offsets(batch_y, n_y, num_graphs)
    for name, ptr in zip(names, (ptr_x, ptr_y)):
        if len(ptr) - 1 > num_graphs:  # bincount grew past minlength: an id >= batch_size
            raise ValueError(
                f"batch_size: expected an int >= {len(ptr) - 1} (the number of graphs in "
                f"{name}), got {batch_size}"
            )
    return ptr_x, ptr_y


@torch.no_grad()
def _search_torch(
    x: Tensor,
    y: Tensor,
    k: int,
    ptr_x: list[int],
    ptr_y: list[int],
    metric: str,
    block_size: int,
    self_index: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """(query, point) index pairs of the exact search, queries ascending, nearest first.

    ``self_index``: for each query, the index of a point of its own graph to leave out (the
    query itself in :func:`knn_graph`), or ``None``.
    """
    m = y.shape[0]
    dev = x.device
    # Scores, larger = nearer (the top-k then needs no negated copy of the block): cosine
    # similarity, inner product, or 2 y.x - |x|^2 (the negated l2 distance up to |y|^2).
    if metric == "cosine":
        xs = torch.nn.functional.normalize(x, dim=1)
        ys = torch.nn.functional.normalize(y, dim=1)
    else:
        xs, ys = x, y
    bias = -(x * x).sum(1) if metric == "l2" else None

    graph_of_y = torch.repeat_interleave(
        torch.arange(len(ptr_y) - 1, device=dev), torch.tensor(ptr_y, device=dev).diff()
    )
    size_x = torch.tensor(ptr_x, device=dev).diff()
    # Plan the blocks: query rows [qs, qe) see the points of their graphs, [xs0, xe0).
    plan = []
    g = 0
    for qs in range(0, m, block_size):
        qe = min(qs + block_size, m)
        while ptr_y[g + 1] <= qs:
            g += 1
        g_last = g
        while ptr_y[g_last + 1] < qe:
            g_last += 1
        plan.append((qs, qe, ptr_x[g], ptr_x[g_last + 1], g != g_last))
    largest = max(((qe - qs) * (xe - xs0) for qs, qe, xs0, xe, _ in plan), default=0)
    buffer = x.new_empty(largest)
    rows_out: list[Tensor] = []
    cols_out: list[Tensor] = []
    for qs, qe, xs0, xe, mixed in plan:
        span, rows = xe - xs0, qe - qs
        if span == 0:
            continue
        s = buffer[: rows * span].view(rows, span)
        if bias is None:
            torch.mm(ys[qs:qe], xs[xs0:xe].T, out=s)
        else:
            torch.addmm(bias[xs0:xe], ys[qs:qe], xs[xs0:xe].T, alpha=2.0, out=s)
        g_rows = graph_of_y[qs:qe]
        if mixed:  # hide the points of the other graphs in the block
            g_cols = torch.repeat_interleave(
                torch.arange(len(ptr_x) - 1, device=dev)[g_rows[0] : g_rows[-1] + 1],
                size_x[g_rows[0] : g_rows[-1] + 1],
            )
            s.masked_fill_(g_rows[:, None] != g_cols[None, :], float("-inf"))
        r = torch.arange(rows, device=dev)
        count = (size_x[g_rows] - int(self_index is not None)).clamp_(max=k)  # neighbours per query
        if self_index is None:
            idx = topk_tie_low(s, k, order="score")  # the -inf entries come last, cut by count
            keep = torch.arange(idx.shape[1], device=dev)[None, :] < count[:, None]
        else:
            # The query itself is dropped after the selection, not by a -inf score: a NaN
            # point's scores are all NaN (ranked as -inf) and would tie with it.
            own = self_index[qs:qe] - xs0
            idx = topk_tie_low(s, min(k + 1, span), order="score")
            keep = idx != own[:, None]
            keep &= keep.cumsum(1) <= count[:, None]
        rows_out.append((r + qs)[:, None].expand_as(idx)[keep])
        cols_out.append((idx + xs0)[keep])
    if not rows_out:
        empty = torch.empty(0, dtype=torch.long, device=dev)
        return empty, empty
    return torch.cat(rows_out), torch.cat(cols_out)


def _search_faiss(
    x: Tensor,
    y: Tensor,
    k: int,
    ptr_x: list[int],
    ptr_y: list[int],
    metric: str,
    block_size: int,
    self_index: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """The same search with faiss flat indexes (float32, CPU), one index per graph."""
    try:
        import faiss
    except ImportError as err:
        raise ImportError(
            "backend: 'faiss' needs the faiss package; install it with "
            "`pip install nlgraph[faiss]` (faiss-cpu)"
        ) from err

    with torch.no_grad():
        xf = x.detach().float().cpu()
        yf = y.detach().float().cpu()
        if metric == "cosine":
            xf = torch.nn.functional.normalize(xf, dim=1)
            yf = torch.nn.functional.normalize(yf, dim=1)
    own = None if self_index is None else self_index.cpu()
    rows_out: list[Tensor] = []
    cols_out: list[Tensor] = []
    for g in range(len(ptr_y) - 1):
        (qs, qe), (xs0, xe) = ptr_y[g : g + 2], ptr_x[g : g + 2]
        n = xe - xs0
        count = min(k, n - int(own is not None))
        if qe == qs or count <= 0:
            continue
        dim = x.shape[1]
        index = faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim)
        index.add(xf[xs0:xe].contiguous().numpy())
        want = min(count + 1 + int(own is not None), n)
        for bs in range(qs, qe, block_size):
            be = min(bs + block_size, qe)
            dist, lab = index.search(yf[bs:be].contiguous().numpy(), want)
            key = torch.from_numpy(dist if metric == "l2" else -dist)
            lab = torch.from_numpy(lab)
            drop = lab < 0  # faiss pads with -1; the query itself goes last too
            if own is not None:
                drop |= lab == (own[bs:be, None] - xs0)
            key = key.masked_fill(drop, float("inf"))
            lab, perm = lab.sort(dim=1)
            key, perm = key.gather(1, perm).sort(dim=1, stable=True)
            lab = lab.gather(1, perm)
            if lab.shape[1] > count:  # a tie across the last place: re-rank these rows exactly
                last, nxt = key[:, count - 1], key[:, count]
                tied = torch.nonzero((last == nxt) & (last != float("inf"))).squeeze(1)
                if tied.numel():
                    sub_own = None if own is None else own[bs + tied].to(x.device) - xs0
                    _, cols = _search_torch(
                        x[xs0:xe],
                        y[(bs + tied).to(y.device)],
                        k,
                        [0, n],
                        [0, tied.numel()],
                        metric,
                        block_size,
                        sub_own,
                    )
                    lab[tied, :count] = cols.cpu().view(tied.numel(), count)
            rows_out.append(torch.arange(bs, be).repeat_interleave(count))
            cols_out.append((lab[:, :count] + xs0).reshape(-1))
    if not rows_out:
        empty = torch.empty(0, dtype=torch.long, device=x.device)
        return empty, empty
    return torch.cat(rows_out).to(x.device), torch.cat(cols_out).to(x.device)


def _search_grid(
    x: Tensor,
    y: Tensor,
    k: int,
    ptr_x: list[int],
    ptr_y: list[int],
    metric: str,
    block_size: int,
    self_index: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """:func:`~nlgraph.graphs.grid_knn.search_grid` behind the signature of the other
    searches (l2 only; ``block_size`` is not used: the grid sizes its own blocks;
    ``self_index`` is ``arange(N)`` with ``y`` is ``x``, from :func:`knn_graph`)."""
    return search_grid(x, y, k, ptr_x, ptr_y, exclude_self=self_index is not None)


#: The searches' common signature: (x, y, k, ptr_x, ptr_y, metric, block_size, self_index).
_Searcher = Callable[
    [Tensor, Tensor, int, list[int], list[int], str, int, Tensor | None], tuple[Tensor, Tensor]
]


def _search_ivf(n_clusters: int | None, n_probe: int | None) -> _Searcher:
    """The clustered search (:func:`nlgraph.graphs.ivf.search_points`, k-means seeded with 0:
    the same input gives the same graph) behind the signature of the other searches."""

    def run(
        x: Tensor,
        y: Tensor,
        k: int,
        ptr_x: list[int],
        ptr_y: list[int],
        metric: str,
        block_size: int,
        self_index: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(0)
        return search_points(
            x,
            y,
            k,
            ptr_x,
            ptr_y,
            metric,
            self_index,
            n_clusters=n_clusters,
            n_probe=n_probe,
            generator=generator,
        )

    return run


def _searcher(
    search: str,
    features: int,
    metric: str,
    backend: str,
    n_clusters: object = None,
    n_probe: object = None,
) -> _Searcher:
    """The search function for the ``search`` argument (checked in :func:`_prepare`)."""
    check_ivf_options(search, n_clusters, n_probe)
    if search == "ivf":
        if backend != "torch":
            raise ValueError(f"search: 'ivf' needs backend 'torch', got backend {backend!r}")
        return _search_ivf(n_clusters, n_probe)  # type: ignore[arg-type]
    grid_ok = features <= GRID_MAX_FEATURES and metric == "l2" and backend == "torch"
    if search == "grid":
        if features > GRID_MAX_FEATURES:
            raise ValueError(
                f"search: 'grid' needs at most {GRID_MAX_FEATURES} features, got {features}"
            )
        if metric != "l2":
            raise ValueError(f"search: 'grid' needs metric 'l2', got metric {metric!r}")
        if backend != "torch":
            raise ValueError(f"search: 'grid' needs backend 'torch', got backend {backend!r}")
        return _search_grid
    if search == "auto" and grid_ok:
        return _search_grid
    return _search_faiss if backend == "faiss" else _search_torch


def _prepare(
    x: object,
    y: object,
    k: object,
    batch_x: Tensor | None,
    batch_y: Tensor | None,
    cosine: bool,
    num_workers: object,
    batch_size: object,
    metric: str | None,
    block_size: object,
    backend: object,
    search: object,
    batch_names: tuple[str, str] = ("batch_x", "batch_y"),
    n_clusters: object = None,
    n_probe: object = None,
) -> tuple[Tensor, Tensor, int, list[int], list[int], str, int, _Searcher]:
    """Validate the common arguments; return them with the graphs' offsets and the search."""
    same_points = y is x
    x = _check_points("x", x)
    y = x if same_points else _check_points("y", y)
    if y.shape[1] != x.shape[1] or y.dtype != x.dtype or y.device != x.device:
        raise ValueError(
            f"y: expected {x.shape[1]} features, dtype {x.dtype} and device {x.device} as x, "
            f"got {describe(y)}"
        )
    k = check_positive_int("k", k)
    if block_size is None:  # a (block, N) score buffer of about 2**22 elements (16 MiB fp32)
        block_size = min(1024, max(64, AUTO_BLOCK_ELEMENTS // max(1, x.shape[0])))
    block_size = check_positive_int("block_size", block_size)
    metric = _resolve_metric(cosine, metric)
    check_positive_int("num_workers", num_workers)  # accepted for PyG; no other effect
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    check_choice("backend", backend, BACKENDS)
    check_choice("search", search, SEARCHES)
    searcher = _searcher(search, x.shape[1], metric, backend, n_clusters, n_probe)  # type: ignore[arg-type]
    same_batch = same_points and batch_y is batch_x
    batch_x = _ptr(batch_names[0], batch_x, x.shape[0], x)
    batch_y = batch_x if same_batch else _ptr(batch_names[1], batch_y, y.shape[0], x)
    ptr_x, ptr_y = _graph_offsets(batch_x, batch_y, x.shape[0], y.shape[0], batch_size, batch_names)
    return x, y, k, ptr_x, ptr_y, metric, block_size, searcher


def knn(
    x: Tensor,
    y: Tensor,
    k: int,
    batch_x: Tensor | None = None,
    batch_y: Tensor | None = None,
    cosine: bool = False,
    num_workers: int = 1,
    batch_size: int | None = None,
    *,
    metric: str | None = None,
    block_size: int | None = None,
    backend: str = "torch",
    search: str = "auto",
    n_clusters: int | None = None,
    n_probe: int | None = None,
) -> Tensor:
    r"""For each point of ``y``, the k nearest points of ``x`` (exact; ``torch_geometric.nn.knn``).

    .. math::
        \mathcal{N}(i) = \operatorname{arg\,top\text{-}k}_{j:\ b^x_j = b^y_i}\ -d(y_i, x_j)

    with :math:`d` the Euclidean, cosine (``cosine=True``) or negated inner-product
    (``metric="ip"``) distance, ties towards the lower j (see the module docstring).

    Cost: the blocked all-pairs search does O(N·M·F) work in O(block_size·N) memory; the grid
    (``search="auto"`` with F <= 3 and l2, or ``"grid"``) O((N + M) log N + M·c) work, c a
    small multiple of k on spread data, in O(N + M·k) memory.

    Args:
        x (Tensor): points :math:`X \in \mathbb{R}^{N \times F}`, floating point, finite (a
            NaN or infinite point raises ``ValueError`` naming its row); 1-D is (N, 1).
        y (Tensor): queries :math:`Y \in \mathbb{R}^{M \times F}`, same dtype and device,
            finite; 1-D is (M, 1).
        k (int): neighbours per query; a query whose graph has fewer points gets them all.
        batch_x (Tensor, optional): sorted graph id of each point of x, any integer dtype
            (used as int64). ``None``: one graph (graph 0). (default: ``None``)
        batch_y (Tensor, optional): sorted graph id of each query, as batch_x.
            (default: ``None``)
        cosine (bool, optional): rank by cosine distance. (default: ``False``)
        num_workers (int, optional): PyG's CPU worker count, accepted for compatibility: it
            must be a positive int and has no other effect (the search uses torch's intra-op
            threads, see ``torch.set_num_threads``). (default: ``1``)
        batch_size (int, optional): PyG's number of examples B, i.e. of graphs. When given,
            the graph count is not read from the batch vectors; it must be at least the
            largest graph id + 1 (``ValueError`` otherwise), and graphs past the ids are
            empty. ``None``: the largest id + 1. Without batch vectors it is only validated.
            (default: ``None``)
        metric (str, optional): ``"l2"``, ``"cosine"`` or ``"ip"`` (inner product, largest
            first); ``None`` follows ``cosine``. (default: ``None``)
        block_size (int, optional): query rows per block; memory is O(block_size · N).
            ``None`` picks min(1024, max(64, 2**22 // N)) rows, a score buffer of about
            16 MiB in float32. (default: ``None``)
        backend (str, optional): ``"torch"`` or ``"faiss"`` (flat indexes, float32 on CPU;
            needs ``pip install nlgraph[faiss]``). (default: ``"torch"``)
        search (str, optional): ``"auto"``: the grid search
            (:mod:`nlgraph.graphs.grid_knn`) when F <= 3, the metric is l2 and the backend
            torch, else the blocked all-pairs search; ``"exact"``: always the blocked
            all-pairs search; ``"grid"``: always the grid (``ValueError`` naming ``search`` for
            F > 3, another metric or backend). Both are exact and give the same neighbours in
            the same order, up to float32 rounding of near-ties (module docstring). The grid
            needs finite coordinates (``ValueError`` naming ``x`` or ``y``) and ignores
            ``block_size``. ``"ivf"``: the clustered *approximate* search of
            :mod:`nlgraph.graphs.ivf` per graph (any metric and F; k-means seeded with 0, so
            the same input gives the same graph; a query may get fewer than k neighbours when
            its probed lists hold fewer points; recall: :func:`nlgraph.graphs.knn_recall`).
            (default: ``"auto"``)
        n_clusters (int, optional): ``search="ivf"``: k-means lists per graph (capped at its
            size); ``None``: :func:`nlgraph.graphs.ivf.default_clusters`. (default: ``None``)
        n_probe (int, optional): ``search="ivf"``: lists scanned per query, at most
            ``n_clusters``; ``None``: :func:`nlgraph.graphs.ivf.default_probe`.
            (default: ``None``)

    Returns:
        Tensor: ``edge_index`` (2, E) int64 on x's device, row 0 indexing y and row 1 indexing
        x, queries ascending and each query's neighbours nearest first.

    Shapes:
        - x: (N, F) or (N,), y: (M, F) or (M,), batch_x: (N,), batch_y: (M,) -> (2, E),
          E <= M·k

    Example:
        >>> x = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
        >>> y = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
        >>> knn(x, y, 2)
        tensor([[0, 0, 1, 1],
                [0, 1, 2, 3]])
    """
    x, y, k, ptr_x, ptr_y, metric, block_size, searcher = _prepare(
        x,
        y,
        k,
        batch_x,
        batch_y,
        cosine,
        num_workers,
        batch_size,
        metric,
        block_size,
        backend,
        search,
        n_clusters=n_clusters,
        n_probe=n_probe,
    )
    rows, cols = searcher(x, y, k, ptr_x, ptr_y, metric, block_size, None)
    return torch.stack([rows, cols])


def knn_graph(
    x: Tensor,
    k: int,
    batch: Tensor | None = None,
    loop: bool = False,
    flow: str = "source_to_target",
    cosine: bool = False,
    num_workers: int = 1,
    batch_size: int | None = None,
    *,
    metric: str | None = None,
    block_size: int | None = None,
    backend: str = "torch",
    search: str = "auto",
    n_clusters: int | None = None,
    n_probe: int | None = None,
) -> Tensor:
    r"""Edges from each point's k nearest points (exact; ``torch_geometric.nn.knn_graph``).

    .. math::
        (j \to i) \in E \iff j \in \mathcal{N}_k(i),\quad b_j = b_i,\quad
        j \ne i \text{ unless } \texttt{loop}

    The query itself is left out explicitly when ``loop=False`` (PyG searches k + 1 and drops
    it, which keeps k + 1 edges in the rare case the point is not among its own k + 1 nearest,
    e.g. with more than k duplicates of lower index).

    Cost: O(N²·F) work in O(block_size·N) memory (all pairs), or with the grid (default for
    F <= 3 and l2) O(N log N + N·c) work, c a small multiple of k, in O(N·k) memory.

    Args:
        x (Tensor): points :math:`X \in \mathbb{R}^{N \times F}`, floating point, finite (a
            NaN or infinite point raises ``ValueError`` naming its row); 1-D is (N, 1).
        k (int): neighbours per point.
        batch (Tensor, optional): sorted graph id of each point, any integer dtype (used as
            int64). (default: ``None``)
        loop (bool, optional): keep self-loops (the point is then one of its own k).
            (default: ``False``)
        flow (str, optional): ``"source_to_target"`` (row 0 = neighbour j, row 1 = point i) or
            ``"target_to_source"`` (rows swapped). (default: ``"source_to_target"``)
        cosine (bool, optional): rank by cosine distance. (default: ``False``)
        num_workers (int, optional): accepted for PyG; a positive int with no other effect,
            see :func:`knn`. (default: ``1``)
        batch_size (int, optional): PyG's number of graphs B, at least the largest id of
            ``batch`` + 1; see :func:`knn`. (default: ``None``)
        metric (str, optional): ``"l2"``, ``"cosine"`` or ``"ip"``; see :func:`knn`.
        block_size (int, optional): query rows per block; ``None`` as in :func:`knn`.
            (default: ``None``)
        backend (str, optional): ``"torch"`` or ``"faiss"``. (default: ``"torch"``)
        search (str, optional): ``"auto"``, ``"exact"``, ``"grid"`` or ``"ivf"``
            (approximate); see :func:`knn`. (default: ``"auto"``)
        n_clusters (int, optional): ``search="ivf"`` lists per graph; see :func:`knn`.
        n_probe (int, optional): ``search="ivf"`` lists scanned per query; see :func:`knn`.

    Returns:
        Tensor: ``edge_index`` (2, E) int64, E <= N·k, grouped by point i, nearest first.

    Shapes:
        - x: (N, F) or (N,), batch: (N,) -> (2, E)

    Example:
        >>> x = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
        >>> knn_graph(x, k=2)
        tensor([[1, 2, 0, 3, 0, 3, 1, 2],
                [0, 0, 1, 1, 2, 2, 3, 3]])
    """
    check_bool("loop", loop)
    check_choice("flow", flow, FLOWS)
    x, _, k, ptr, _, metric, block_size, searcher = _prepare(
        x,
        x,
        k,
        batch,
        batch,
        cosine,
        num_workers,
        batch_size,
        metric,
        block_size,
        backend,
        search,
        ("batch", "batch"),
        n_clusters,
        n_probe,
    )
    own = None if loop else torch.arange(x.shape[0], device=x.device)
    rows, cols = searcher(x, x, k, ptr, ptr, metric, block_size, own)
    if flow == "source_to_target":
        return torch.stack([cols, rows])
    return torch.stack([rows, cols])
