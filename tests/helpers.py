r"""Independent float64 references and test utilities.

Everything here is written from the paper (Wang et al., "Non-local Neural Networks", CVPR 2018,
https://arxiv.org/abs/1711.07971) and ``shared/docs/reference-semantics.md``; nothing imports or
calls nlgraph's pairwise functions, kernels or blocks. It is deliberately slow and explicit:
all-pairs ``einsum`` with a boolean neighbour mask, 1x1 convolutions as ``einsum``, max pooling
by crop-and-reshape, batch norm from its definition.

.. math::
    y_i = \frac{1}{C_i} \sum_{j \in N(i)} f(q_i, k_j)\, v_j, \qquad
    z_i = x_i + \mathrm{Norm}(W_z\, y_i + b_z)
"""

from __future__ import annotations

import importlib.util
import math
import runpy
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

__all__ = [
    "DEFAULT_POOL",
    "DEVICES",
    "MODES",
    "SOFTMAX_MODES",
    "block_reference_args",
    "expected_scale",
    "needs_package",
    "randomise_block_",
    "reference_aggregate",
    "reference_block",
    "reference_scores",
    "reference_weights",
    "with_device",
]

MODES = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")
SOFTMAX_MODES = ("gaussian", "embedded_gaussian")
#: The pool window of every public implementation, per number of spatial dims (time not pooled).
DEFAULT_POOL = {1: (2,), 2: (2, 2), 3: (1, 2, 2)}

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
#: Parametrize a test over every available device (``device`` argument).
with_device = pytest.mark.parametrize("device", DEVICES)


def needs_package(name: str) -> pytest.MarkDecorator:
    """Skip the test (with a reason naming ``name``) unless the package can be imported."""
    return pytest.mark.skipif(
        importlib.util.find_spec(name) is None, reason=f"needs the optional package {name!r}"
    )


def expected_scale(scale: str | float | None, in_channels: int, inter_channels: int) -> float:
    """The logit factor of the embedded Gaussian: 1, C'^-1/2 ("inner"), C^-1/2 ("input")."""
    if scale is None:
        return 1.0
    if scale == "inner":
        return 1.0 / math.sqrt(inter_channels)
    if scale == "input":
        return 1.0 / math.sqrt(in_channels)
    return float(scale)


# --------------------------------------------------------------------------- aggregation
def reference_scores(
    q: Tensor,
    k: Tensor,
    mode: str,
    scale: float = 1.0,
    concat_u: Tensor | None = None,
    concat_w: Tensor | None = None,
) -> Tensor:
    r"""All-pairs scores (B, N, N') in float64.

    Logits :math:`s\,q_i\cdot k_j` for the softmax modes, :math:`q_i\cdot k_j` for the dot
    product and :math:`\mathrm{ReLU}(u\cdot q_i + w\cdot k_j)` for concatenation.
    """
    q, k = q.double(), k.double()
    if mode == "concatenation":
        if concat_u is None or concat_w is None:
            raise ValueError("concatenation needs concat_u and concat_w")
        a = torch.einsum("bnc,c->bn", q, concat_u.double())
        b = torch.einsum("bmc,c->bm", k, concat_w.double())
        return torch.relu(a[:, :, None] + b[:, None, :])
    dots = torch.einsum("bnc,bmc->bnm", q, k)
    if mode in SOFTMAX_MODES:
        return dots * scale
    if mode == "dot_product":
        return dots
    raise ValueError(f"unknown mode {mode!r}")


def reference_weights(scores: Tensor, mode: str, mask: Tensor | None = None) -> Tensor:
    """Normalise (B, N, N') scores over the neighbours of each query; an empty row gives 0.

    Softmax over ``mask``-ed keys for the Gaussians, division by the neighbour count otherwise.
    ``mask`` is a boolean (N, N') or (B, N, N') tensor (default: every pair).
    """
    if mask is None:
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device)
    mask = mask.expand_as(scores)
    count = mask.sum(-1, keepdim=True)
    if mode in SOFTMAX_MODES:
        masked = scores.masked_fill(~mask, -math.inf)
        row_max = masked.amax(-1, keepdim=True)
        row_max = torch.where(count > 0, row_max, torch.zeros_like(row_max))
        e = torch.exp(masked - row_max).masked_fill(~mask, 0.0)
        total = e.sum(-1, keepdim=True)
        return torch.where(count > 0, e / total.clamp_min(1e-300), torch.zeros_like(e))
    f = scores.masked_fill(~mask, 0.0)
    return torch.where(count > 0, f / count.clamp_min(1), torch.zeros_like(f))


def reference_aggregate(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mode: str,
    scale: float = 1.0,
    concat_u: Tensor | None = None,
    concat_w: Tensor | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``(y, weights)``: y (B, N, Cv) and the (B, N, N') weights, all in float64."""
    scores = reference_scores(q, k, mode, scale, concat_u, concat_w)
    weights = reference_weights(scores, mode, mask)
    return torch.einsum("bnm,bmc->bnc", weights, v.double()), weights


# --------------------------------------------------------------------------- block
def conv1x1(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A 1x1(x1) convolution of (B, C, *S) as an einsum over channels."""
    w = weight.double().reshape(weight.shape[0], weight.shape[1])
    out = torch.einsum("oc,bc...->bo...", w, x)
    if bias is not None:
        out = out + bias.double().reshape(1, -1, *([1] * (x.dim() - 2)))
    return out


def max_pool(x: Tensor, pool: tuple[int, ...]) -> Tensor:
    """Max pool with kernel = stride = ``pool``, no padding, floor (incomplete windows dropped)."""
    spatial = x.shape[2:]
    kept = [s // p for s, p in zip(spatial, pool)]
    x = x[(slice(None), slice(None), *(slice(0, n * p) for n, p in zip(kept, pool)))]
    shape = [x.shape[0], x.shape[1]]
    for n, p in zip(kept, pool):
        shape += [n, p]
    x = x.reshape(shape)
    window_axes = tuple(3 + 2 * d for d in range(len(pool)))
    return x.amax(dim=window_axes)


def batch_norm(z: Tensor, norm: Mapping[str, Any], training: bool) -> Tensor:
    """BatchNorm from its definition: batch statistics (biased variance) or running ones."""
    axes = (0, *range(2, z.dim()))
    view = (1, -1) + (1,) * (z.dim() - 2)
    if training:
        mean = z.mean(dim=axes, keepdim=True)
        var = ((z - mean) ** 2).mean(dim=axes, keepdim=True)
    else:
        mean = norm["running_mean"].double().reshape(view)
        var = norm["running_var"].double().reshape(view)
    gamma = norm["weight"].double().reshape(view)
    beta = norm["bias"].double().reshape(view)
    return (z - mean) / torch.sqrt(var + norm["eps"]) * gamma + beta


def reference_block(
    x: Tensor,
    params: Mapping[str, Tensor],
    *,
    dims: int,
    mode: str,
    sub_sample: bool,
    pool_size: tuple[int, ...],
    placement: str,
    scale_factor: float,
    norm: Mapping[str, Any] | None,
    training: bool,
    mask: Tensor | Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """The whole non-local block in float64 from raw weights: ``(z, weights (B, N, N'))``.

    ``mask`` restricts the neighbours: a bool (N, N') or (B, N, N') tensor, or a function of the
    flattened (query (B, N, Cq), key (B, N', Cq)) embeddings returning one (for k-NN graphs).

    ``params`` uses the block's state_dict names (``theta.weight``, ``g.bias``,
    ``w_z.weight``, ``concat_project.weight`` …); ``norm`` holds ``weight``, ``bias``,
    ``running_mean``, ``running_var`` and ``eps`` (or is ``None``). ``placement`` ``"after"``
    pools the projected φ(x), g(x); ``"before"`` pools x and projects the pooled map.
    """
    x = x.double()
    if x.dim() != dims + 2:
        raise ValueError("rank mismatch")
    batch = x.shape[0]
    before = sub_sample and placement == "before"
    x_kv = max_pool(x, pool_size) if before else x

    def proj(name: str, t: Tensor) -> Tensor:
        return conv1x1(t, params[f"{name}.weight"], params.get(f"{name}.bias"))

    def keys_side(t: Tensor) -> Tensor:
        return max_pool(t, pool_size) if sub_sample and not before else t

    value = keys_side(proj("g", x_kv))
    if mode == "gaussian":
        query = x
        key = max_pool(x, pool_size) if sub_sample else x
    else:
        query = proj("theta", x)
        key = keys_side(proj("phi", x_kv))

    def flat(t: Tensor) -> Tensor:
        return t.reshape(batch, t.shape[1], -1).transpose(1, 2)

    u = w = None
    if mode == "concatenation":
        cw = params["concat_project.weight"].double().reshape(-1)
        u, w = cw[: cw.numel() // 2], cw[cw.numel() // 2 :]
    q_flat, k_flat = flat(query), flat(key)
    if callable(mask):
        mask = mask(q_flat.detach(), k_flat.detach())
    y, weights = reference_aggregate(q_flat, k_flat, flat(value), mode, scale_factor, u, w, mask)
    y = y.transpose(1, 2).reshape(batch, y.shape[-1], *x.shape[2:])
    out = proj("w_z", y)
    if norm is not None:
        out = batch_norm(out, norm, training)
    return x + out, weights


# --------------------------------------------------------------------------- block utilities
def block_reference_args(block: torch.nn.Module, scale: str | float | None = None) -> dict:
    """Keyword arguments of :func:`reference_block` for ``block``, read from its state_dict-named
    parameters and buffers (not detached, so gradients flow) and its public attributes.

    ``scale`` is the option the block was built with; the factor is recomputed here.
    """
    params = dict(block.named_parameters())
    buffers = dict(block.named_buffers())
    norm = None
    if block.norm is not None:
        norm = {
            "weight": params["norm.weight"],
            "bias": params["norm.bias"],
            "running_mean": buffers["norm.running_mean"],
            "running_var": buffers["norm.running_var"],
            "eps": block.norm.eps,
        }
    return dict(
        params=params,
        dims=block.dims,
        mode=block.mode,
        sub_sample=block.sub_sample,
        pool_size=block.pool_size,
        placement=block.pool_placement,
        scale_factor=expected_scale(scale, block.in_channels, block.inter_channels),
        norm=norm,
        training=block.training,
    )


@torch.no_grad()
def randomise_block_(block: torch.nn.Module, std: float = 0.4) -> torch.nn.Module:
    """Give every parameter and BN statistic a random value, so the block is far from identity."""
    for name, p in block.named_parameters():
        p.copy_(torch.randn_like(p) * std)
        if name == "norm.weight":
            p.add_(1.0)
    if block.norm is not None:
        block.norm.running_mean.copy_(torch.randn_like(block.norm.running_mean) * 0.3)
        block.norm.running_var.copy_(torch.rand_like(block.norm.running_var) + 0.5)
    return block


def randomise_state_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every floating tensor of the state_dict N(0, 0.3²) and running variances U(0.5, 1.5),
    from a seeded generator: works on any module (nlgraph's or a reference's), so W_z and the
    norm are not zero and a comparison of two modules means something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen, dtype=t.dtype) + 0.5)
            elif t.is_floating_point():
                t.copy_(0.3 * torch.randn(t.shape, generator=gen, dtype=t.dtype))
    return module


#: The example scripts (not a package: their shared helpers import as ``_example_utils``).
EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> dict[str, Any]:
    """The namespace of ``examples/<name>.py``, run as a module (not as ``__main__``), with
    ``examples/`` on ``sys.path`` while it imports (``python examples/x.py`` puts it there)."""
    sys.path.insert(0, str(EXAMPLES_DIR))
    try:
        return runpy.run_path(str(EXAMPLES_DIR / f"{name}.py"), run_name=f"example_{name}")
    finally:
        sys.path.remove(str(EXAMPLES_DIR))


#: (kernel, graph kind) pairs that every aggregation kernel runs on in the precision checks
#: (tests/ops/test_amp.py, benchmarks/amp.py): dense on the full graph, the sparse kernels on a
#: masked RegularGraph, coo and triton also on a COOGraph.
KERNEL_GRAPH_RUNS: tuple[tuple[str, str], ...] = (
    ("dense", "full"),
    ("regular", "regular"),
    ("coo", "regular"),
    ("coo", "coo"),
    ("csr", "regular"),
    ("triton", "regular"),
    ("triton", "coo"),
)


def masked_graph(kind: str, n: int, m: int, k: int, gen: torch.Generator) -> tuple[Any, Tensor]:
    """A ``kind`` graph (``"full"``, ``"regular"`` or ``"coo"``) over n queries and m keys with
    k distinct neighbours per query, and its exact (n, m) neighbour mask. The RegularGraph masks
    about a quarter of the slots and every slot of query 0; the COOGraph leaves query 0 without
    edges and lists its edges unsorted."""
    from nlgraph.graphs import COOGraph, RegularGraph

    if kind == "full":
        return "full", torch.ones(n, m, dtype=torch.bool)
    index = torch.rand(n, m, generator=gen).argsort(-1)[:, :k]
    mask = torch.zeros(n, m, dtype=torch.bool)
    if kind == "regular":
        valid = torch.rand(n, k, generator=gen) > 0.25
        valid[0] = False
        mask[torch.arange(n).unsqueeze(1).expand(n, k)[valid], index[valid]] = True
        return RegularGraph(index.unsqueeze(0), m, valid.unsqueeze(0)), mask
    rows, cols = torch.arange(1, n).repeat_interleave(k), index[1:].reshape(-1)
    perm = torch.randperm(rows.numel(), generator=gen)  # unsorted
    mask[rows, cols] = True
    return COOGraph(torch.stack([cols[perm], rows[perm]]), n, m), mask


def graph_to(graph: Any, device: str | torch.device) -> Any:
    """``graph`` with its index tensors on ``device`` (the graph classes have no ``.to``)."""
    from nlgraph.graphs import COOGraph, RegularGraph

    if isinstance(graph, RegularGraph):
        mask = None if graph.mask is None else graph.mask.to(device)
        return RegularGraph(graph.index.to(device), graph.num_keys, mask)
    if isinstance(graph, COOGraph):
        return COOGraph(graph.edge_index.to(device), graph.num_queries, graph.num_keys)
    return graph
