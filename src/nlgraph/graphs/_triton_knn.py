r"""Fused exact k-NN search in Triton: the CUDA path of ``KNN(search="exact")``.

For every query i of every sample b, the k keys j of the best score

.. math::
    s_{ij} = q_i \cdot k_j \quad (\text{"logit", "cosine" on unit vectors}), \qquad
    s_{ij} = 2\, q_i \cdot k_j - \lVert k_j \rVert^2 \quad (\text{"l2"})

(for "l2", :math:`-\lVert q_i - k_j \rVert^2 = s_{ij} - \lVert q_i \rVert^2`, and
:math:`\lVert q_i \rVert^2` is the same for every key of a row), ties towards the **lower key
index** and NaN ranked last, level with -inf: exactly :func:`nlgraph.graphs._topk.topk_tie_low` of the
scores that :meth:`nlgraph.graphs.KNN._build` computes with ``bmm``, without ever writing the
(B, N, N') score matrix.

**Algorithm.** One program handles ``BLOCK_M`` queries of one sample and scans the keys in tiles
of ``BLOCK_N``:

1. the (BLOCK_M, BLOCK_N) score tile is ``tl.dot`` of the query block and the key tile (fp32
   accumulation, IEEE fp32 products: no TF32), minus :math:`\lVert k_j \rVert^2` for "l2",
   rounded to the input dtype for float16/bfloat16 inputs (as the torch path's half scores);
2. each score and its column become one int64 *ranking key*: the score's float32 bits mapped to
   an int32 of the same order (-0.0 as 0.0, every NaN as -inf) in the high half, and
   N' - 1 - j in the low half. Keys are distinct and order like (score, then lower column);
3. every query keeps its k best keys so far in a (BLOCK_M, KP) register list (KP = k rounded
   up to a power of two; free slots hold distinct sentinels below every real key). While some
   query of the block has a tile key above the worst key of its list, that best tile key
   replaces the worst one of its list (and leaves the tile). A tile whose keys are all below
   every list costs one comparison; after the first tiles most tiles are skipped that way;
4. at the end each list holds its row's k best keys; their columns are stored, and one
   ``torch.sort`` of the (B, N, k) result puts every row in ascending order.

The result is a pure function of the scores: bitwise the torch path's whenever the scores are
bitwise equal (e.g. integer-valued features, or the CPU interpreter on inputs whose products
are exact). For general float inputs the two sum the C products in different orders, so two
keys within a rounding error of each other at the k-th place may come out differently; each
result is the exact top-k of its own scores.

**Limits.** k <= :data:`MAX_K` (the list lives in registers); float32, float16 and bfloat16
inputs (float64 scores do not fit a 64-bit key beside a column); N·C and N'·C < 2**31
(32-bit offsets inside a sample); B <= 65535 (the grid's second axis). Anything else returns
reasons from :func:`triton_knn_unsupported`, and ``KNN`` keeps its torch path. C is a
compile-time constant (the channel loop is unrolled): one compilation per C, k and dtype.
Speed on a GPU has not been measured yet (no GPU where this was written); only ptxas's register
use was checked (see :data:`NUM_WARPS`).

**Where it runs.** On CUDA tensors when ``triton`` imports. On CPU tensors only in Triton's
interpreter (``TRITON_INTERPRET=1``) and only inside :func:`force_triton_knn`, which the tests
use; the kernel is built (``triton.jit``) lazily at its first call, so the environment variable
can be set after nlgraph (or triton) was imported: the kernel calls only Triton builtins, which
the interpreter patches at launch, never ``triton.jit`` library functions such as ``tl.max``.
No tensor value is read on the host.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MAX_K",
    "force_triton_knn",
    "triton_knn",
    "triton_knn_available",
    "triton_knn_unsupported",
    "use_triton_knn",
]

#: Largest k of the fused search: the running list is a (BLOCK_M, KP) int64 register tile,
#: KP = k rounded up to a power of two; 64 keeps it at 16 KiB per program.
MAX_K = 64
#: Queries per program: the M side of ``tl.dot`` (>= 16).
BLOCK_M = 32
#: Keys per tile: the N side of ``tl.dot``; also the width that every insertion scans.
BLOCK_N = 64
#: Largest channel chunk of one ``tl.dot`` (the C loop is unrolled in chunks of at most this,
#: each a power of two >= 16, the smallest reduction ``tl.dot`` takes).
MAX_BLOCK_C = 32
#: Warps per program. At 8 warps ptxas (sm_80, sm_90) keeps the running lists, the int64 keys
#: and the score tile in registers at k = 64 with at most 40 bytes of spill up to C = 512; at 4
#: warps float32 spills over 1 KiB from C = 256 (and 64-channel chunks spill at 4 warps).
NUM_WARPS = 8
#: Input dtypes of the fused search (the scores are ranked as float32).
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)
METRICS: tuple[str, ...] = ("logit", "l2", "cosine")

_forced = False
_kernels: dict[bool, Any] = {}


@functools.cache
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_knn_available(t: Tensor) -> bool:
    """Whether the fused search can run on ``t``'s device: ``triton`` imports and ``t`` is a
    CUDA tensor, or a CPU tensor with Triton's interpreter on (``TRITON_INTERPRET=1``)."""
    if not _triton_importable():
        return False
    return t.is_cuda or (t.device.type == "cpu" and _interpreting())


def triton_knn_unsupported(query: Tensor, key: Tensor, k: int) -> list[str]:
    """Reasons the fused search cannot take these inputs (empty: it can). Reads shapes, dtypes
    and devices only."""
    reasons = []
    if not triton_knn_available(query):
        reasons.append(
            f"device={query.device} (needs triton and CUDA, or CPU with TRITON_INTERPRET=1)"
        )
    if query.dtype not in SUPPORTED_DTYPES or key.dtype != query.dtype:
        reasons.append(
            f"dtype={query.dtype}/{key.dtype} (supported: float32, float16, bfloat16, equal)"
        )
    if query.shape[0] > 65535:
        reasons.append(f"B={query.shape[0]} (supported: B <= 65535, the grid's second axis)")
    if k > MAX_K:
        reasons.append(f"k={k} (supported: k <= {MAX_K})")
    n, m, c = query.shape[1], key.shape[1], query.shape[-1]
    if max(n, m) * c >= 2**31:
        reasons.append(f"N={n}, N'={m}, C={c} (supported: N·C, N'·C < 2**31)")
    return reasons


@contextlib.contextmanager
def force_triton_knn(enabled: bool = True) -> Iterator[None]:
    """Within the block, ``KNN``'s exact search takes the fused kernel on CPU tensors too
    (where :func:`triton_knn_available`: Triton's interpreter), or never with ``False``.

    Example:
        >>> from nlgraph.graphs._triton_knn import force_triton_knn
        >>> with force_triton_knn():
        ...     pass  # KNN(k).build(query, key) runs the kernel on CPU under TRITON_INTERPRET=1
    """
    global _forced
    before = _forced
    _forced = enabled
    try:
        yield
    finally:
        _forced = before


def use_triton_knn(query: Tensor, key: Tensor, k: int) -> bool:
    """Whether ``KNN``'s exact search takes the fused kernel: inside :func:`force_triton_knn`
    only (CUDA or, under the interpreter, CPU tensors), and only for supported inputs.

    Not yet by default on CUDA: the kernel has run in Triton's interpreter only (no GPU was
    available to validate the compiled kernel and measure it); ``benchmarks/gpu_check.sh`` does
    both on a GPU, after which the default can follow the measurement.
    """
    if not _forced:
        return False
    return not triton_knn_unsupported(query, key, k)


def _next_pow2(x: int) -> int:
    return 1 << max(x - 1, 0).bit_length()


def triton_knn(query: Tensor, key: Tensor, k: int, *, metric: str = "logit") -> Tensor:
    """Indices of every query's k best keys, fused (the scores are never stored).

    Args:
        query (Tensor): (B, N, C) query embeddings.
        key (Tensor): (B, N', C) key embeddings, same dtype and device.
        k (int): neighbours per query, 1 <= k <= min(N', :data:`MAX_K`).
        metric (str): ``"logit"`` (largest q·k), ``"l2"`` (smallest distance) or ``"cosine"``
            (largest cosine: the inputs are normalised here with ``F.normalize``, as the torch
            path does, so pass them raw). (default: ``"logit"``)

    Returns:
        Tensor: (B, N, k) int64 key indices, each row ascending.

    Raises:
        NotImplementedError: for inputs listed by :func:`triton_knn_unsupported`.
    """
    reasons = triton_knn_unsupported(query, key, k)
    if reasons:
        raise NotImplementedError("triton_knn: unsupported inputs: " + "; ".join(reasons))
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {', '.join(map(repr, METRICS))}, got {metric!r}")
    b, n, c = query.shape
    m = key.shape[1]
    if not 1 <= k <= m:
        raise ValueError(f"k: expected 1 <= k <= N' = {m}, got {k}")
    q, kk = query.detach(), key.detach()
    if metric == "cosine":
        q, kk = F.normalize(q, dim=-1), F.normalize(kk, dim=-1)
    q, kk = q.contiguous(), kk.contiguous()
    # |k_j|^2 as the torch path computes it (same dtype and reduction): exact agreement.
    sq = (kk * kk).sum(-1).contiguous() if metric == "l2" else kk.new_empty(1)
    out = torch.empty(b, n, k, dtype=torch.long, device=q.device)
    if n == 0 or b == 0:
        return out
    block_c = min(max(16, _next_pow2(c)), MAX_BLOCK_C)
    grid = (-(-n // BLOCK_M), b)
    _kernel()[grid](
        q,
        kk,
        sq,
        out,
        n,
        m,
        K=k,
        KP=_next_pow2(k),
        L2=metric == "l2",
        ROUND={torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}[q.dtype],
        # The interpreter's bfloat16 tl.dot is wrong (Triton 3.5); float32 products of
        # bfloat16 values are exact, so upcasting there gives the compiled kernel's scores.
        UPCAST=q.dtype == torch.bfloat16 and _interpreting(),
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_C=block_c,
        CHANNELS=c,
        num_warps=NUM_WARPS,
    )
    return torch.sort(out, dim=-1).values


def _kernel() -> Any:
    """The jitted kernel, built at first use (one per interpreter setting: ``triton.jit``
    returns an interpreted function when ``TRITON_INTERPRET`` is set at that moment)."""
    mode = _interpreting()
    kernel = _kernels.get(mode)
    if kernel is None:
        # import_module: triton ships no type information (and is an optional dependency).
        triton = importlib.import_module("triton")
        globals()["tl"] = importlib.import_module("triton.language")
        kernel = _kernels[mode] = triton.jit(_knn_kernel)
    return kernel


tl: Any = None  # triton.language, bound by _kernel() before the first launch


def _knn_kernel(
    q_ptr,
    k_ptr,
    sq_ptr,
    out_ptr,
    n_query,
    n_key,
    K: tl.constexpr,
    KP: tl.constexpr,
    L2: tl.constexpr,
    ROUND: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    CHANNELS: tl.constexpr,
):
    """Program (i, b): the k best keys of queries [i·BLOCK_M, (i+1)·BLOCK_M) of sample b.

    q (B, N, C), k (B, N', C) contiguous; sq (B, N') = |k_j|^2 (read only when L2);
    out (B, N, K) int64, each row's indices in no particular order. Ranking keys: see the module docstring. ``DEAD`` (-2**63 + 1) marks
    out-of-range and already-taken tile entries; the free list slots hold DEAD + slot (distinct,
    below every real key, whose high half is >= -2**31 + 2**23 - 1), the padding slots
    (slot >= K) 2**63 - 1, so they are never a row's worst.
    """
    # Reductions are ``tl.reduce`` with Triton's own max/min combine functions, which is what
    # ``tl.max``/``tl.min`` do for int64. ``tl.max`` itself is a ``triton.jit`` function, fixed
    # as compiled or interpreted when triton is first imported (torch_geometric imports it),
    # so it fails in an interpreter switched on later; the builtin ``tl.reduce`` is patched at
    # launch, and the interpreter runs these combine functions as NumPy reductions.
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_query
    q_base = q_ptr + b * n_query * CHANNELS
    k_base = k_ptr + b * n_key * CHANNELS
    slots = tl.arange(0, KP)
    dead = -9223372036854775807
    top = 9223372036854775807
    free = tl.full([BLOCK_M, KP], 0, tl.int64) + slots[None, :].to(tl.int64) + dead
    run = tl.where(slots[None, :] < K, free, top)
    worst = tl.reduce(run, 1, tl.standard._elementwise_min)
    # A while loop over the key tiles: Triton's interpreter hands scalar arguments over as
    # 1-element arrays, which ``range`` rejects under NumPy >= 2.4 (a scalar ``<`` is fine).
    start = 0
    while start < n_key:
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < n_key
        acc = tl.full([BLOCK_M, BLOCK_N], 0.0, tl.float32)
        for c0 in tl.static_range(0, CHANNELS, BLOCK_C):
            cc = c0 + tl.arange(0, BLOCK_C)
            c_ok = cc < CHANNELS
            q_tile = tl.load(
                q_base + rows[:, None] * CHANNELS + cc[None, :],
                mask=row_ok[:, None] & c_ok[None, :],
                other=0.0,
            )
            k_tile = tl.load(
                k_base + cols[None, :] * CHANNELS + cc[:, None],
                mask=c_ok[:, None] & col_ok[None, :],
                other=0.0,
            )
            if UPCAST:
                q_tile = q_tile.to(tl.float32)
                k_tile = k_tile.to(tl.float32)
            acc = tl.dot(q_tile, k_tile, acc, input_precision="ieee")
        score = acc
        if L2:
            sq = tl.load(sq_ptr + b * n_key + cols, mask=col_ok, other=0.0).to(tl.float32)
            score = 2.0 * acc - sq[None, :]
        if ROUND == 1:  # float16 scores, as the torch path's half bmm (round to nearest even)
            score = score.to(tl.float16).to(tl.float32)
        if ROUND == 2:  # bfloat16, rounded to nearest even on the bits (the interpreter's cast
            # truncates): add half a bfloat16 ulp less one, plus one if the kept part is odd,
            # then cut the low 16 bits.
            bits = score.to(tl.int32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
            score = tl.where(score != score, score, bits.to(tl.float32, bitcast=True))
        score = tl.where(score == 0.0, 0.0, score)  # -0.0 ranks as 0.0
        score = tl.where(score != score, float("-inf"), score)  # NaN ranks last, as -inf
        bits = score.to(tl.int32, bitcast=True)
        rank = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: reversed magnitude bits
        low = (n_key - 1 - cols).to(tl.int64)
        packed = (rank.to(tl.int64) << 32) | low[None, :]
        packed = tl.where(col_ok[None, :], packed, dead)
        best = tl.reduce(packed, 1, tl.standard._elementwise_max)
        while tl.reduce((best > worst).to(tl.int32), 0, tl.standard._elementwise_max) > 0:
            take = best > worst
            run = tl.where(take[:, None] & (run == worst[:, None]), best[:, None], run)
            packed = tl.where(packed == best[:, None], dead, packed)
            worst = tl.reduce(run, 1, tl.standard._elementwise_min)
            best = tl.reduce(packed, 1, tl.standard._elementwise_max)
        start += BLOCK_N
    index = (n_key - 1) - (run - ((run >> 32) << 32))  # the low half
    tl.store(
        out_ptr + (b * n_query + rows[:, None]) * K + slots[None, :],
        index,
        mask=row_ok[:, None] & (slots[None, :] < K),
    )
