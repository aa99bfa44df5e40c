r"""Clustered approximate k-NN in feature space (an inverted file, "IVF"), pure torch.

The exact builders score all N·N' query-key pairs. The clustered search scores a few percent:

1. **Clusters.** k-means centroids :math:`c_1..c_L` of the keys (Lloyd iterations on a random
   sample of at most ``64 · L`` keys, initialised from L distinct random keys drawn with a
   ``torch.Generator``, or warm-started from the previous call's centroids), then every key
   joins its nearest centroid: the inverted lists.
2. **Probes.** The queries are grouped by their best list (the largest :math:`q \cdot c` for
   ``metric="logit"``: maximum inner product, the logits that dominate the softmax; the
   nearest centroid for ``"l2"``; the most similar for ``"cosine"``). Each group probes the
   ``n_probe`` lists that are best for its mean query.
3. **Scan.** Each query scores the keys of its group's probed lists exactly and keeps the k
   best, ties towards the lower key index.

The work is a few large tensor operations, not a loop over clusters: a group's candidates (its
probed lists, concatenated and sorted by key index) are scored against tiles of up to ``TILE``
of its queries; tiles of groups with similar candidate counts (padded to a common length, at
most 1.5x) are scored together by one batched matmul and reduced by the shared tie-aware top-k
(about :data:`BLOCK_ELEMENTS` scores at a time). Memory is O(N·k) for the result plus the
candidate lists (O(L · n_probe · N'/L)) and the tile blocks. Probing per group rather than per
query keeps the tiles dense (one candidate set for many queries); it finds fewer of the true
neighbours than per-query probes of the same size (``benchmarks/results/recall.md``).

**Cost.** k-means: O(iters · 64 L · L · C) (sample) + O(N'·L·C) (assignment); probing
O(N·L·C); scanning about O(N · n_probe · N'/L · C) when the lists are balanced. With the
defaults (:func:`default_clusters`, :func:`default_probe`) a query scans about 1/32 of the keys
from N' = 16384 on.

**Exactness.** With ``n_probe = n_clusters`` every key is a candidate: the scan then runs as the
exact search (all scores, blocked over the queries) and the result equals the exact builder's
(same sets, same ties). With fewer probes, a true neighbour in an unprobed list is missed;
:func:`nlgraph.graphs.knn_recall` measures how often. A query whose probed lists hold fewer than
k keys gets fewer neighbours: its remaining slots are padding (``mask`` False). The default
``n_probe`` (:func:`default_probe`) scans at least about 8·k keys, so that at small N' (e.g.
k = 32 of 256 keys) it is the exact search rather than a search that finds half the neighbours.

**Host reads.** Unlike the exact builder, the clustered search reads the list and tile sizes
on the host once per call (the block shapes depend on the clusters), and checks that the
features are finite: ``torch.compile`` breaks its graph there (``fullgraph=True`` and CUDA-graph
capture need the exact search or a graph built outside).

**Precision.** float16/bfloat16 inputs are searched in float32, float64 inputs in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._validate import check_choice, check_positive_int, describe
from ._topk import topk_tie_low

__all__ = [
    "IVFResult",
    "check_ivf_options",
    "default_clusters",
    "default_probe",
    "ivf_knn",
    "search_points",
]

#: The metrics of the clustered search (``"ip"`` is ``"logit"``: the plain inner product).
IVF_METRICS: tuple[str, ...] = ("logit", "l2", "cosine", "ip")
#: (query, list) pairs per tile: the rows of one tile's score block.
TILE = 64
#: Scores computed at once (2 MiB in float32): a block small enough to stay in cache between the
#: matmul that writes it and the top-k that reads it (measured here: 4 MiB blocks are ~15%
#: slower, 16 MiB ones ~30%).
BLOCK_ELEMENTS = 1 << 19
#: Keys sampled per centroid for the Lloyd iterations.
SAMPLE_PER_CLUSTER = 64
#: Lloyd iterations from a random start, and from warm-started centroids.
COLD_ITERS, WARM_ITERS = 8, 2
#: The default ``n_probe`` scans about this many keys per neighbour at least
#: (:func:`default_probe`).
MIN_SCAN_PER_NEIGHBOUR = 8


@dataclass(frozen=True)
class IVFResult:
    """What :func:`ivf_knn` returns.

    Attributes:
        index (Tensor): (B, N, min(k, N')) int64 key indices; padding slots hold 0.
        mask (Tensor or None): (B, N, min(k, N')) bool, False at padding; ``None`` when every
            query got min(k, N') neighbours.
        centroids (Tensor): (B, L, C) the k-means centroids of the keys (in the search space:
            unit-normalised keys for ``"cosine"``; float32, or float64 for float64 inputs), to
            warm-start the next call. With ``n_probe = n_clusters`` (the exact search) no
            clustering runs: the start is returned (the given ``centroids``, or L random keys).
    """

    index: Tensor
    mask: Tensor | None
    centroids: Tensor


def default_clusters(num_keys: int) -> int:
    r"""The default number of lists L for N' keys: :math:`2^{\lceil \log_2 \sqrt{N'} \rceil}`,
    capped at N' (e.g. 64 at N' = 4096, 128 at 16384, 256 at 65536, 512 at 262144): lists of
    about :math:`\sqrt{N'}` keys, so that probing (N·L) and scanning (N·n_probe·N'/L) stay
    balanced."""
    check_positive_int("num_keys", num_keys)
    return min(num_keys, 1 << math.ceil(math.log2(math.sqrt(num_keys))))


def default_probe(n_clusters: int, *, k: int | None = None, num_keys: int | None = None) -> int:
    r"""The default ``n_probe`` for L lists: a fraction of the lists, raised so that a query
    scans enough keys for k neighbours.

    .. math::
        n_\text{probe} = \min\Bigl(L,\; \max\bigl(\lfloor L / d \rfloor,\; 1,\;
        \lceil s \cdot k \cdot L / N' \rceil\bigr)\Bigr)

    with d = 16 below 256 lists and 32 from 256 (e.g. 4 of 64, 8 of 128, 8 of 256, 16 of
    512: a query scans about 1/16 to 1/32 of the keys) and s = :data:`MIN_SCAN_PER_NEIGHBOUR`:
    the probed lists hold about s·k keys at least (lists of N'/L keys on average), since a
    query that scans only a few times k keys finds few of its true neighbours. The floor
    applies when both ``k`` and ``num_keys`` are given; where it reaches L (small N', large k:
    e.g. k = 32 of N' = 256 keys in 16 lists) the search scans every list, which is the exact
    search (:func:`ivf_knn`). At N' = 65536, k = 16 the floor is 1 probe and the fraction rules.

    Args:
        n_clusters (int): the lists L, >= 1.
        k (int, optional): neighbours per query. (default: ``None``: no floor)
        num_keys (int, optional): keys N' per sample. (default: ``None``: no floor)
    """
    check_positive_int("n_clusters", n_clusters)
    probe = max(1, n_clusters // (32 if n_clusters >= 256 else 16))
    if k is not None and num_keys is not None:
        check_positive_int("k", k)
        check_positive_int("num_keys", num_keys)
        probe = max(probe, -(-MIN_SCAN_PER_NEIGHBOUR * k * n_clusters // num_keys))
    return min(probe, n_clusters)


def check_ivf_options(search: object, n_clusters: object, n_probe: object) -> None:
    """Validate the clustered search's options where a caller picks a ``search``
    (:class:`~nlgraph.graphs.KNN`, ``knn``/``knn_graph``): ``n_clusters`` and ``n_probe`` are
    ``None`` or positive ints, given only with ``search="ivf"``, and n_probe <= n_clusters
    when both are given."""
    for name, value in (("n_clusters", n_clusters), ("n_probe", n_probe)):
        if value is None:
            continue
        check_positive_int(name, value)
        if search != "ivf":
            raise ValueError(
                f"{name}: only used by search='ivf' (the clustered search), got "
                f"{name}={value} with search={search!r}"
            )
    if n_clusters is not None and n_probe is not None and n_probe > n_clusters:  # type: ignore[operator]
        raise ValueError(f"n_probe: expected an int in [1, n_clusters={n_clusters}], got {n_probe}")


def _nearest(points: Tensor, cents: Tensor, top: int, inner: bool) -> Tensor:
    """(B, P, top) indices of each point's best centroids: largest p·c (``inner``) or smallest
    distance, i.e. largest 2 p·c − |c|². Blocked over the points."""
    b, p, _ = points.shape
    ncent = cents.shape[1]
    cents_t = cents.transpose(1, 2)
    bias = None if inner else -(cents * cents).sum(-1).unsqueeze(1)
    out = torch.empty(b, p, top, dtype=torch.long, device=points.device)
    rows = max(1, BLOCK_ELEMENTS // max(1, b * ncent))
    for s in range(0, p, rows):
        e = min(s + rows, p)
        if bias is None:
            scores = torch.bmm(points[:, s:e], cents_t)
        else:
            scores = torch.baddbmm(bias, points[:, s:e], cents_t, alpha=2.0)
        if top == 1:
            out[:, s:e, 0] = scores.argmax(-1)
        else:
            out[:, s:e] = torch.topk(scores, top, dim=-1, sorted=False).indices
    return out


def _segment_sums(points: Tensor, ids: Tensor, num: int) -> tuple[Tensor, Tensor]:
    """(sums (num, C), counts (num,)) of the rows of ``points`` (P, C) by id in [0, num), by
    one sort and a float64 running sum (``index_add_`` is several times slower here on CPU
    and pathological when the cores are shared)."""
    order = torch.argsort(ids)
    counts = torch.bincount(ids, minlength=num)
    ends = counts.cumsum(0)
    running = torch.zeros(
        points.shape[0] + 1, points.shape[1], dtype=torch.float64, device=points.device
    )
    torch.cumsum(points.index_select(0, order).to(torch.float64), 0, out=running[1:])
    sums = running.index_select(0, ends) - running.index_select(0, ends - counts)
    return sums.to(points.dtype), counts


def _lloyd(points: Tensor, cents: Tensor, iters: int) -> Tensor:
    """``iters`` Lloyd iterations of k-means on ``points`` (B, P, C) from ``cents`` (B, L, C);
    a list left empty keeps its centroid."""
    b, _, c = points.shape
    ncent = cents.shape[1]
    flat = points.reshape(-1, c)
    offset = (torch.arange(b, device=points.device) * ncent).unsqueeze(1)
    for _ in range(iters):
        assign = (_nearest(points, cents, 1, inner=False)[..., 0] + offset).reshape(-1)
        sums, counts = _segment_sums(flat, assign, b * ncent)
        new = (sums / counts.clamp_min(1).unsqueeze(1).to(sums.dtype)).view(b, ncent, c)
        cents = torch.where((counts > 0).view(b, ncent, 1), new, cents)
    return cents


def _init_centroids(
    key: Tensor, n_clusters: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """(initial centroids (B, L, C): L distinct random keys per sample, training sample
    (B, S, C): the first S of the same random order)."""
    b, m, _ = key.shape
    sample = min(m, SAMPLE_PER_CLUSTER * n_clusters)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    perms = [torch.randperm(m, generator=generator, device=gen_device)[:sample] for _ in range(b)]
    order = torch.stack(perms).to(key.device)
    picked = key.gather(1, order.unsqueeze(-1).expand(-1, -1, key.shape[2]))
    return picked[:, :n_clusters].clone(), picked


def _caps(sizes: list[int]) -> list[int]:
    """Each list length rounded up to 8, 12, 16, 24, 32, 48, ... (padding under 1.5x)."""
    out = []
    for s in sizes:
        cap = 8
        while cap < s:
            cap = cap * 3 // 2 if cap & (cap - 1) == 0 else cap * 4 // 3
        out.append(cap)
    return out


def ivf_knn(
    query: Tensor,
    key: Tensor,
    k: int,
    *,
    metric: str = "logit",
    n_clusters: int | None = None,
    n_probe: int | None = None,
    iters: int | None = None,
    generator: torch.Generator | None = None,
    centroids: Tensor | None = None,
    exclude: Tensor | None = None,
    order: str = "index",
) -> IVFResult:
    r"""The clustered approximate k-NN of every query among the keys of its sample.

    .. math::
        \mathcal{N}(i) = \operatorname{arg\,top\text{-}k}_{j \in \bigcup_{l \in P(i)} V_l}
        s(q_i, k_j), \qquad P(i) = \text{the } n_\text{probe} \text{ best lists } V_l
        \text{ for } \bar q_{g(i)}

    where :math:`g(i)` is the query's best list and :math:`\bar q_g` the mean of the queries
    whose best list is g

    with :math:`s` the inner product (``"logit"``/``"ip"``), the negated Euclidean distance
    (``"l2"``) or the cosine similarity (``"cosine"``); see the module docstring for the
    algorithm, its cost and its exactness. No gradient flows through the selection.

    Args:
        query (Tensor): (B, N, C) floating point.
        key (Tensor): (B, N', C), same dtype and device.
        k (int): neighbours per query (at most N' are returned).
        metric (str): ``"logit"`` (= ``"ip"``), ``"l2"`` or ``"cosine"``. (default: ``"logit"``)
        n_clusters (int, optional): lists L per sample, 1 <= L (capped at N').
            ``None``: :func:`default_clusters` of N'. (default: ``None``)
        n_probe (int, optional): lists scanned per query, 1 <= n_probe <= L (``L``: every key,
            the exact search). ``None``: :func:`default_probe` of L, k and N'.
            (default: ``None``)
        iters (int, optional): Lloyd iterations; ``None``: 8 from a random start, 2 from
            ``centroids``. ``0`` keeps the start as is. (default: ``None``)
        generator (torch.Generator, optional): draws the initial centroids and the k-means
            sample (same generator state, same graph). (default: ``None``: torch's global RNG)
        centroids (Tensor, optional): (B, L, C) warm start, e.g. the previous call's
            :attr:`IVFResult.centroids`. (default: ``None``)
        exclude (Tensor, optional): (B, N) int64, a key index per query that must not be a
            neighbour (the query itself in a k-NN graph without self-loops). (default: ``None``)
        order (str): ``"index"`` (each row ascending, padding last) or ``"score"`` (best first,
            ties in ascending index). (default: ``"index"``)

    Returns:
        IVFResult: ``index`` and ``mask`` (B, N, min(k, N')), ``centroids`` (B, L, C).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> q, kv = torch.randn(1, 100, 8), torch.randn(1, 300, 8)
        >>> res = ivf_knn(q, kv, 5, n_clusters=16, n_probe=16, generator=g)
        >>> exact = torch.topk(q @ kv.transpose(1, 2), 5).indices.sort(-1).values
        >>> torch.equal(res.index, exact)
        True
    """
    _check_inputs(query, key, exclude)
    k = check_positive_int("k", k)
    check_choice("metric", metric, IVF_METRICS)
    check_choice("order", order, ("index", "score"))
    b, n, c = query.shape
    m = key.shape[1]
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator: expected None or a torch.Generator, got {type(generator).__name__}"
        )
    if n_clusters is None:
        n_clusters = default_clusters(max(m, 1))
    n_clusters = min(check_positive_int("n_clusters", n_clusters), max(m, 1))
    if n_probe is None:
        n_probe = default_probe(n_clusters, k=k, num_keys=max(m, 1))
    n_probe = check_positive_int("n_probe", n_probe)
    if n_probe > n_clusters:
        raise ValueError(
            f"n_probe: expected an int in [1, n_clusters={n_clusters}] (lists per sample, "
            f"at most N'={m}), got {n_probe}"
        )
    if iters is not None and (isinstance(iters, bool) or not isinstance(iters, int) or iters < 0):
        raise ValueError(f"iters: expected a non-negative int or None, got {iters!r}")
    if centroids is not None and (
        not isinstance(centroids, Tensor) or centroids.shape != (b, n_clusters, c)
    ):
        got = describe(centroids) if isinstance(centroids, Tensor) else type(centroids).__name__
        raise ValueError(f"centroids: expected a ({b}, {n_clusters}, {c}) tensor, got {got}")

    with torch.no_grad():
        work = torch.float64 if query.dtype == torch.float64 else torch.float32
        q, kk = query.detach().to(work), key.detach().to(work)
        if metric == "cosine":
            q = torch.nn.functional.normalize(q, dim=-1)
            kk = torch.nn.functional.normalize(kk, dim=-1)
        q, kk = q.contiguous(), kk.contiguous()
        kk_out = min(k, m)
        if m == 0 or n == 0 or b == 0:
            shape = (b, n, kk_out)
            empty = torch.zeros(shape, dtype=torch.long, device=query.device)
            cents = kk.new_zeros(b, n_clusters, c)
            return IVFResult(empty, None if m else torch.zeros_like(empty, dtype=torch.bool), cents)

        # 1. k-means centroids of the keys (none needed when every list is scanned: the
        # centroids returned are then the start, for a later warm start).
        if n_probe == n_clusters:
            if centroids is None:
                cents = _init_centroids(kk, n_clusters, generator)[0]
            else:
                cents = centroids.detach().to(device=kk.device, dtype=work)
        elif centroids is None:
            cents, sample = _init_centroids(kk, n_clusters, generator)
            cents = _lloyd(sample, cents, COLD_ITERS if iters is None else iters)
        else:
            cents = centroids.detach().to(device=kk.device, dtype=work)
            if m <= SAMPLE_PER_CLUSTER * n_clusters:
                sample = kk
            else:
                sample = _init_centroids(kk, n_clusters, generator)[1]
            cents = _lloyd(sample, cents, WARM_ITERS if iters is None else iters)
        inner = metric in ("logit", "ip")
        if n_probe < n_clusters:
            assign = _nearest(kk, cents, 1, inner=False)[..., 0]  # (B, N')
            group = _nearest(q, cents, 1, inner=inner)[..., 0]  # (B, N): each query's best list
            probes = _group_probes(q, group, cents, n_probe, inner)  # (B, L, P)

        # 2. Scan: each query scores the keys of its group's probed lists, keeps the k best.
        bias = -(kk * kk).sum(-1) if metric == "l2" else None
        if n_probe == n_clusters:  # every list: the exact search, without the list bookkeeping
            index = _scan_all(q, kk, bias, kk_out, exclude, order)
        else:
            index = _scan(q, kk, bias, assign, group, probes, kk_out, exclude, order)
        valid = index < m
        mask = None if bool(valid.all()) else valid
        if mask is not None:
            index = index.masked_fill(~valid, 0)
    return IVFResult(index, mask, cents)


def _check_inputs(query: object, key: object, exclude: object) -> None:
    for name, t in (("query", query), ("key", key)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if not torch.is_floating_point(t) or t.dim() != 3:
            raise ValueError(
                f"{name}: expected a (B, N, C) floating-point tensor, got {describe(t)}"
            )
    assert isinstance(query, Tensor) and isinstance(key, Tensor)
    if (
        key.shape[0] != query.shape[0]
        or key.shape[2] != query.shape[2]
        or key.device != query.device
    ):
        raise ValueError(
            f"key: expected ({query.shape[0]}, N', {query.shape[2]}) on {query.device} like "
            f"query, got {describe(key)}"
        )
    for name, t in (("query", query), ("key", key)):
        if t.numel() and not bool(torch.isfinite(t).all()):
            raise ValueError(
                f"{name}: expected finite values (the clustered k-NN ranks by distance), got "
                "NaN or infinite entries"
            )
    if exclude is not None and (
        not isinstance(exclude, Tensor)
        or exclude.dtype != torch.long
        or exclude.shape != query.shape[:2]
    ):
        got = describe(exclude) if isinstance(exclude, Tensor) else type(exclude).__name__
        raise ValueError(
            f"exclude: expected a ({query.shape[0]}, {query.shape[1]}) int64 tensor, got {got}"
        )


def _group_probes(q: Tensor, group: Tensor, cents: Tensor, n_probe: int, inner: bool) -> Tensor:
    """(B, L, P): the ``n_probe`` best lists for the mean query of each group (the queries
    whose best list is that one); a group without queries gets its own list's neighbours."""
    b, n, c = q.shape
    ncent = cents.shape[1]
    offset = (torch.arange(b, device=q.device) * ncent).unsqueeze(1)
    sums, counts = _segment_sums(q.reshape(-1, c), (group + offset).reshape(-1), b * ncent)
    mean = (sums / counts.clamp_min(1).unsqueeze(1).to(sums.dtype)).view(b, ncent, c)
    mean = torch.where((counts > 0).view(b, ncent, 1), mean, cents)
    return _nearest(mean, cents, n_probe, inner=inner)


def _scan_all(
    q: Tensor, kk: Tensor, bias: Tensor | None, k: int, exclude: Tensor | None, order: str
) -> Tensor:
    """(B, N, k) key indices: each query's k best among all keys (ties towards the lower
    index), blocked over the queries; index N' where fewer than k keys are left (``exclude``
    with k = N')."""
    b, n, _ = q.shape
    m = kk.shape[1]
    key_t = kk.transpose(1, 2)
    out = torch.empty(b, n, k, dtype=torch.long, device=q.device)
    rows = max(1, BLOCK_ELEMENTS // max(1, b * m))
    for s in range(0, n, rows):
        e = min(s + rows, n)
        if bias is None:
            scores = torch.bmm(q[:, s:e], key_t)
        else:  # l2: 2 q.k - |k|^2
            scores = torch.baddbmm(bias.unsqueeze(1), q[:, s:e], key_t, alpha=2.0)
        if exclude is not None:
            own = exclude[:, s:e].unsqueeze(2) == torch.arange(m, device=q.device)
            scores.masked_fill_(own, float("-inf"))
        best = topk_tie_low(scores, k, order=order)
        out[:, s:e] = best.masked_fill(scores.gather(2, best) == float("-inf"), m)
    return torch.sort(out, dim=-1).values if order == "index" else out


def _scan(
    q: Tensor,
    kk: Tensor,
    bias: Tensor | None,
    assign: Tensor,
    group: Tensor,
    probes: Tensor,
    k: int,
    exclude: Tensor | None,
    order: str,
) -> Tensor:
    """(B, N, k) key indices: each query's k best among the keys of its group's probed lists
    (ties towards the lower index); index N' where fewer than k candidates exist."""
    b, n, c = q.shape
    m = kk.shape[1]
    ncent, p = probes.shape[1], probes.shape[2]
    dev = q.device
    lists = b * ncent
    offset = torch.arange(b, device=dev) * ncent
    key_list = (assign + offset.unsqueeze(1)).reshape(-1)  # (B·N',) global list of each key
    key_order = torch.argsort(key_list, stable=True)  # keys grouped by list, index ascending
    k_count = torch.bincount(key_list, minlength=lists)
    k_start = k_count.cumsum(0) - k_count
    q_group = (group + offset.unsqueeze(1)).reshape(-1)  # (B·N,)
    q_order = torch.argsort(q_group, stable=True)
    q_count = torch.bincount(q_group, minlength=lists)
    q_start = q_count.cumsum(0) - q_count
    g_lists = (probes + offset.view(b, 1, 1)).view(lists, p)  # probed lists of each group
    g_count = k_count[g_lists]  # (lists, P) keys per probed list
    g_total = g_count.sum(1)
    totals, demand = torch.stack([g_total, q_count]).tolist()  # the one read of the shapes

    flat_q = q.reshape(b * n, c)
    flat_k = kk.reshape(b * m, c)
    flat_bias = None if bias is None else bias.reshape(-1)
    flat_excl = None
    if exclude is not None:  # as global key rows b·N' + j
        flat_excl = (exclude + (torch.arange(b, device=dev) * m).unsqueeze(1)).reshape(-1)
    out = torch.full((b * n + 1, k), m, dtype=torch.long, device=dev)

    by_cap: dict[int, list[int]] = {}
    for g, (cap, need) in enumerate(zip(_caps(totals), demand)):
        if need and totals[g]:
            by_cap.setdefault(cap, []).append(g)
    slot = torch.arange(TILE, device=dev)
    for cap, groups in sorted(by_cap.items()):
        gs = torch.tensor(groups, device=dev)
        # The candidates of each group: its probed lists, concatenated, sorted by key index.
        ends = g_count[gs].cumsum(1)
        col = torch.arange(cap, device=dev).expand(len(groups), cap).contiguous()
        seg = torch.searchsorted(ends, col, right=True).clamp_(max=p - 1)
        within = col - (ends - g_count[gs]).gather(1, seg)
        pos = k_start[g_lists[gs].gather(1, seg)] + within
        cand = key_order[pos.clamp_(0, b * m - 1)]
        cand = torch.where(col < g_total[gs].unsqueeze(1), cand, b * m)
        cand = torch.sort(cand, dim=1).values  # global key rows ascending, b·N' (none) last
        cand_valid = cand < b * m
        cand_rows = cand.clamp(max=b * m - 1)
        cand_local = torch.where(
            cand_valid, cand - torch.div(cand, m, rounding_mode="floor") * m, m
        )
        zero = torch.zeros((), dtype=q.dtype, device=dev)
        col_bias = torch.where(
            cand_valid, zero if flat_bias is None else flat_bias[cand_rows], float("-inf")
        )
        # Tiles of up to TILE queries of one group.
        tiles = [-(-demand[g] // TILE) for g in groups]
        tiles_t = torch.tensor(tiles, device=dev)
        t_group = torch.repeat_interleave(torch.arange(len(groups), device=dev), tiles_t)
        first = torch.cumsum(tiles_t, 0) - tiles_t
        t_off = (torch.arange(t_group.shape[0], device=dev) - first[t_group]) * TILE
        kp = min(k, cap)
        chunk = max(1, BLOCK_ELEMENTS // (TILE * cap))
        for s in range(0, t_group.shape[0], chunk):
            gi, off = t_group[s : s + chunk], t_off[s : s + chunk]
            gg = gs[gi]
            rank = off.unsqueeze(1) + slot  # (T, TILE) rank of the query in its group
            qvalid = rank < q_count[gg].unsqueeze(1)
            qrow = q_order[(q_start[gg].unsqueeze(1) + rank).clamp_(max=b * n - 1)]
            rows = cand_rows[gi]  # (T, cap)
            scores = torch.bmm(flat_q[qrow], flat_k[rows].transpose(1, 2))
            if flat_bias is not None:
                scores.mul_(2.0)  # l2: 2 q.k - |k|^2
            scores.add_(col_bias[gi].unsqueeze(1))  # (and -inf on the padding columns)
            if flat_excl is not None:
                own = flat_excl[qrow].unsqueeze(2) == rows.unsqueeze(1)
                scores.masked_fill_(own, float("-inf"))
            best = topk_tie_low(scores, kp, order=order)  # (T, TILE, kp)
            picked = cand_local[gi].unsqueeze(1).expand(-1, TILE, -1).gather(2, best)
            picked.masked_fill_(scores.gather(2, best) == float("-inf"), m)
            dest = torch.where(qvalid, qrow, b * n).reshape(-1)
            out[:, :kp].index_copy_(0, dest, picked.reshape(-1, kp))
    index = out[: b * n].view(b, n, k)
    if order == "index":
        index = torch.sort(index, dim=-1).values  # padding (index N') back to the end
    return index


def search_points(
    x: Tensor,
    y: Tensor,
    k: int,
    ptr_x: list[int],
    ptr_y: list[int],
    metric: str,
    self_index: Tensor | None,
    *,
    n_clusters: int | None = None,
    n_probe: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """(query, point) index pairs of the clustered search over PyG-style graphs: for each
    graph g, the queries ``y[ptr_y[g]:ptr_y[g+1]]`` among the points ``x[ptr_x[g]:ptr_x[g+1]]``
    (:func:`ivf_knn` per graph, ``n_clusters`` and ``n_probe`` per graph, both capped at the
    graph's size), queries ascending,
    each query's neighbours best first; ``metric`` ``"l2"``, ``"cosine"`` or ``"ip"``.
    ``self_index``: per query, a point index to leave out (the query itself), or ``None``."""
    rows_out: list[Tensor] = []
    cols_out: list[Tensor] = []
    for g in range(len(ptr_y) - 1):
        (qs, qe), (xs, xe) = ptr_y[g : g + 2], ptr_x[g : g + 2]
        if qe == qs or xe == xs:
            continue
        exclude = None if self_index is None else (self_index[qs:qe] - xs).unsqueeze(0)
        clusters = default_clusters(xe - xs) if n_clusters is None else min(n_clusters, xe - xs)
        probe = None if n_probe is None else min(n_probe, clusters)
        res = ivf_knn(
            y[qs:qe].unsqueeze(0),
            x[xs:xe].unsqueeze(0),
            k,
            metric=metric,
            n_clusters=clusters,
            n_probe=probe,
            generator=generator,
            exclude=exclude,
            order="score",
        )
        index = res.index[0]
        rows = torch.arange(qs, qe, device=x.device).unsqueeze(1).expand_as(index)
        if res.mask is None:
            rows_out.append(rows.reshape(-1))
            cols_out.append((index + xs).reshape(-1))
        else:
            keep = res.mask[0]
            rows_out.append(rows[keep])
            cols_out.append(index[keep] + xs)
    if not rows_out:
        empty = torch.empty(0, dtype=torch.long, device=x.device)
        return empty, empty
    return torch.cat(rows_out), torch.cat(cols_out)
