r"""Exact, memory-blocked k-nearest-neighbour builders with PyG's signatures.

:func:`knn` and :func:`knn_graph` take the arguments of ``torch_geometric.nn.knn`` and
``torch_geometric.nn.knn_graph`` and return the same ``edge_index``, but run on plain PyTorch
(PyG's versions need pyg-lib). The search is exact and blocked over the queries: for a block of
query rows :math:`y_b` (at most ``block_size``) and the points :math:`x` of their graphs, one
``addmm`` into a reused buffer gives

.. math::
    d_{ij} = \lVert x_j \rVert^2 - 2\, y_i \cdot x_j
    \quad (= \lVert y_i - x_j \rVert^2 - \lVert y_i \rVert^2,\ \text{same order per row})

and ``topk`` picks each row's k smallest, so peak memory is O(block_size · N) rather than N × M.
``cosine=True`` (or ``metric="cosine"``) ranks by the cosine distance
:math:`1 - \hat y_i \cdot \hat x_j` (rows scaled to unit norm; a zero row has similarity 0 to
everything); ``metric="ip"`` ranks by the inner product :math:`y_i \cdot x_j`, largest first.

**Ties** are broken towards the lower index of ``x``, deterministically on every device: the
``k + 1`` best of a row are re-sorted by (distance, index), and a row whose k-th and
(k+1)-th distances are equal is re-ranked with a stable sort of the whole row.

**Output order:** queries in increasing order, each query's neighbours nearest first.

**Batches** follow PyG: ``batch_x``/``batch_y`` are sorted int64 graph ids; a query only sees the
points of its own graph and gets ``min(k, number of candidates)`` neighbours.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validate import check_choice, check_float_tensor, check_positive_int, describe

__all__ = ["knn", "knn_graph"]

METRICS: tuple[str, ...] = ("l2", "cosine", "ip")
#: Elements of one block's (rows, N) score buffer when ``block_size=None``.
AUTO_BLOCK_ELEMENTS = 1 << 22
BACKENDS: tuple[str, ...] = ("torch", "faiss")
FLOWS: tuple[str, ...] = ("source_to_target", "target_to_source")


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return value


def _resolve_metric(cosine: bool, metric: str | None) -> str:
    _check_bool("cosine", cosine)
    if metric is None:
        return "cosine" if cosine else "l2"
    check_choice("metric", metric, METRICS)
    if cosine and metric != "cosine":
        raise ValueError(f"cosine: expected False when metric={metric!r}, got True")
    return metric


def _check_points(name: str, t: object) -> Tensor:
    t = check_float_tensor(name, t)
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D (num_points, features) tensor, got {describe(t)}")
    return t


def _ptr(name: str, batch: Tensor | None, n: int, x: Tensor) -> Tensor | None:
    """Validate a batch vector and return it on ``x``'s device (``None`` stays ``None``)."""
    if batch is None:
        return None
    if not isinstance(batch, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(batch).__name__}")
    if batch.dtype != torch.long or batch.dim() != 1 or batch.numel() != n:
        raise ValueError(
            f"{name}: expected a 1-D int64 tensor of length {n}, got {describe(batch)}"
        )
    batch = batch.to(x.device)
    if n and bool(batch[0] < 0):
        raise ValueError(f"{name}: expected non-negative graph ids, got {int(batch.min())}")
    if n > 1 and not bool((batch[1:] >= batch[:-1]).all()):
        raise ValueError(f"{name}: expected a sorted batch vector, got unsorted graph ids")
    return batch


def _offsets(batch: Tensor | None, n: int, num_graphs: int) -> list[int]:
    """Start of each graph's points, plus ``n`` at the end (PyG's ``ptr``), as Python ints."""
    if batch is None:
        return [0] + [n] * num_graphs
    counts = torch.bincount(batch, minlength=num_graphs).cumsum(0).tolist()
    return [0, *counts]


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
    if metric == "cosine":
        xs = -torch.nn.functional.normalize(x, dim=1)
        ys = torch.nn.functional.normalize(y, dim=1)
    elif metric == "ip":
        xs, ys = -x, y  # d = y . (-x): smallest first is largest inner product first
    else:
        xs, ys = x, y
    bias = (x * x).sum(1) if metric == "l2" else None

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
        d = buffer[: rows * span].view(rows, span)
        if bias is None:
            torch.mm(ys[qs:qe], xs[xs0:xe].T, out=d)
        else:
            torch.addmm(bias[xs0:xe], ys[qs:qe], xs[xs0:xe].T, alpha=-2.0, out=d)
        g_rows = graph_of_y[qs:qe]
        if mixed:  # hide the points of the other graphs in the block
            g_cols = torch.repeat_interleave(
                torch.arange(len(ptr_x) - 1, device=dev)[g_rows[0] : g_rows[-1] + 1],
                size_x[g_rows[0] : g_rows[-1] + 1],
            )
            d.masked_fill_(g_rows[:, None] != g_cols[None, :], float("inf"))
        r = torch.arange(rows, device=dev)
        if self_index is not None:
            d[r, self_index[qs:qe] - xs0] = float("inf")
        count = (size_x[g_rows] - int(self_index is not None)).clamp_(max=k)  # neighbours per query
        idx = _topk_ties_low(d, k)
        keep = torch.arange(idx.shape[1], device=dev)[None, :] < count[:, None]
        rows_out.append((r + qs)[:, None].expand_as(idx)[keep])
        cols_out.append((idx + xs0)[keep])
    if not rows_out:
        empty = torch.empty(0, dtype=torch.long, device=dev)
        return empty, empty
    return torch.cat(rows_out), torch.cat(cols_out)


def _topk_ties_low(d: Tensor, k: int) -> Tensor:
    """Column indices of each row's ``min(k, cols)`` smallest, ordered by (value, index)."""
    span = d.shape[1]
    if span <= k + 1:
        return torch.sort(d, dim=1, stable=True).indices[:, :k]
    vals, idx = torch.topk(d, k + 1, dim=1, largest=False, sorted=False)
    idx, perm = idx.sort(dim=1)
    vals = vals.gather(1, perm)
    vals, perm = vals.sort(dim=1, stable=True)
    idx = idx.gather(1, perm)
    # A tie across the k-th place may hide a lower index outside the k + 1: re-rank exactly.
    tied = (vals[:, k - 1] == vals[:, k]) & (vals[:, k - 1] != float("inf"))
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        idx[rows] = torch.sort(d[rows], dim=1, stable=True).indices[:, : k + 1]
    return idx[:, :k]


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


def _prepare(
    x: object,
    y: object,
    k: object,
    batch_x: Tensor | None,
    batch_y: Tensor | None,
    cosine: bool,
    metric: str | None,
    block_size: object,
    backend: object,
    batch_names: tuple[str, str] = ("batch_x", "batch_y"),
) -> tuple[Tensor, Tensor, int, list[int], list[int], str, int, str]:
    """Validate the common arguments; return them with the graphs' offsets."""
    x = _check_points("x", x)
    y = _check_points("y", y)
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
    check_choice("backend", backend, BACKENDS)
    batch_x = _ptr(batch_names[0], batch_x, x.shape[0], x)
    batch_y = (
        batch_x if y is x and batch_y is batch_x else _ptr(batch_names[1], batch_y, y.shape[0], x)
    )
    num_graphs = 1 + max(
        [int(b[-1]) for b in (batch_x, batch_y) if b is not None and b.numel()], default=0
    )
    ptr_x = _offsets(batch_x, x.shape[0], num_graphs)
    ptr_y = _offsets(batch_y, y.shape[0], num_graphs)
    return x, y, k, ptr_x, ptr_y, metric, block_size, backend  # type: ignore[return-value]


def knn(
    x: Tensor,
    y: Tensor,
    k: int,
    batch_x: Tensor | None = None,
    batch_y: Tensor | None = None,
    cosine: bool = False,
    *,
    metric: str | None = None,
    block_size: int | None = None,
    backend: str = "torch",
) -> Tensor:
    r"""For each point of ``y``, the k nearest points of ``x`` (exact; ``torch_geometric.nn.knn``).

    .. math::
        \mathcal{N}(i) = \operatorname{arg\,top\text{-}k}_{j:\ b^x_j = b^y_i}\ -d(y_i, x_j)

    with :math:`d` the Euclidean, cosine (``cosine=True``) or negated inner-product
    (``metric="ip"``) distance, ties towards the lower j (see the module docstring).

    Args:
        x (Tensor): points :math:`X \in \mathbb{R}^{N \times F}`, floating point.
        y (Tensor): queries :math:`Y \in \mathbb{R}^{M \times F}`, same dtype and device.
        k (int): neighbours per query; a query whose graph has fewer points gets them all.
        batch_x (Tensor, optional): sorted int64 graph id of each point of x. ``None``: one
            graph (graph 0). (default: ``None``)
        batch_y (Tensor, optional): sorted int64 graph id of each query. (default: ``None``)
        cosine (bool, optional): rank by cosine distance. (default: ``False``)
        metric (str, optional): ``"l2"``, ``"cosine"`` or ``"ip"`` (inner product, largest
            first); ``None`` follows ``cosine``. (default: ``None``)
        block_size (int, optional): query rows per block; memory is O(block_size · N).
            ``None`` picks min(1024, max(64, 2**22 // N)) rows, a score buffer of about
            16 MiB in float32. (default: ``None``)
        backend (str, optional): ``"torch"`` or ``"faiss"`` (flat indexes, float32 on CPU;
            needs ``pip install nlgraph[faiss]``). (default: ``"torch"``)

    Returns:
        Tensor: ``edge_index`` (2, E) int64 on x's device, row 0 indexing y and row 1 indexing
        x, queries ascending and each query's neighbours nearest first.

    Shapes:
        - x: (N, F), y: (M, F), batch_x: (N,), batch_y: (M,) -> (2, E), E <= M·k

    Example:
        >>> x = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
        >>> y = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
        >>> knn(x, y, 2)
        tensor([[0, 0, 1, 1],
                [0, 1, 2, 3]])
    """
    x, y, k, ptr_x, ptr_y, metric, block_size, backend = _prepare(
        x, y, k, batch_x, batch_y, cosine, metric, block_size, backend
    )
    search = _search_faiss if backend == "faiss" else _search_torch
    rows, cols = search(x, y, k, ptr_x, ptr_y, metric, block_size, None)
    return torch.stack([rows, cols])


def knn_graph(
    x: Tensor,
    k: int,
    batch: Tensor | None = None,
    loop: bool = False,
    flow: str = "source_to_target",
    cosine: bool = False,
    *,
    metric: str | None = None,
    block_size: int | None = None,
    backend: str = "torch",
) -> Tensor:
    r"""Edges from each point's k nearest points (exact; ``torch_geometric.nn.knn_graph``).

    .. math::
        (j \to i) \in E \iff j \in \mathcal{N}_k(i),\quad b_j = b_i,\quad
        j \ne i \text{ unless } \texttt{loop}

    The query itself is left out explicitly when ``loop=False`` (PyG searches k + 1 and drops
    it, which keeps k + 1 edges in the rare case the point is not among its own k + 1 nearest,
    e.g. with more than k duplicates of lower index).

    Args:
        x (Tensor): points :math:`X \in \mathbb{R}^{N \times F}`, floating point.
        k (int): neighbours per point.
        batch (Tensor, optional): sorted int64 graph id of each point. (default: ``None``)
        loop (bool, optional): keep self-loops (the point is then one of its own k).
            (default: ``False``)
        flow (str, optional): ``"source_to_target"`` (row 0 = neighbour j, row 1 = point i) or
            ``"target_to_source"`` (rows swapped). (default: ``"source_to_target"``)
        cosine (bool, optional): rank by cosine distance. (default: ``False``)
        metric (str, optional): ``"l2"``, ``"cosine"`` or ``"ip"``; see :func:`knn`.
        block_size (int, optional): query rows per block; ``None`` as in :func:`knn`.
            (default: ``None``)
        backend (str, optional): ``"torch"`` or ``"faiss"``. (default: ``"torch"``)

    Returns:
        Tensor: ``edge_index`` (2, E) int64, E <= N·k, grouped by point i, nearest first.

    Shapes:
        - x: (N, F), batch: (N,) -> (2, E)

    Example:
        >>> x = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
        >>> knn_graph(x, k=2)
        tensor([[1, 2, 0, 3, 0, 3, 1, 2],
                [0, 0, 1, 1, 2, 2, 3, 3]])
    """
    _check_bool("loop", loop)
    check_choice("flow", flow, FLOWS)
    x, _, k, ptr, _, metric, block_size, backend = _prepare(
        x, x, k, batch, batch, cosine, metric, block_size, backend, ("batch", "batch")
    )
    own = None if loop else torch.arange(x.shape[0], device=x.device)
    search = _search_faiss if backend == "faiss" else _search_torch
    rows, cols = search(x, x, k, ptr, ptr, metric, block_size, own)
    if flow == "source_to_target":
        return torch.stack([cols, rows])
    return torch.stack([rows, cols])
