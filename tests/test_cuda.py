"""CUDA parity: every kernel and module on the GPU against the same call on the CPU.

Skipped without a CUDA device (CI has none); run on a GPU machine with
``python -m pytest -q tests/test_cuda.py``. The CPU results are themselves checked against the
fp64 references elsewhere in the suite, so agreement here pins the CUDA paths to them.
"""

from __future__ import annotations

import pytest
import torch

from nlgraph import NonLocalBlock2d, Pairwise, nonlocal_aggregate
from nlgraph.graphs import KNN, COOGraph, Latent, RegularGraph, Window, knn
from nlgraph.nn import GlobalReasoning, ObjectRelation
from nlgraph.nodes import roi_features
from nlgraph.ops import KERNELS, AggregateInputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

F64 = torch.float64
CUDA = "cuda"


def _close(cuda_out: torch.Tensor, cpu_out: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(cuda_out.cpu(), cpu_out, atol=tol, rtol=tol)


def _graphs(n: int, m: int):
    gen = torch.Generator().manual_seed(0)
    index = torch.randint(0, m, (1, n, 6), generator=gen)
    mask = torch.rand(1, n, 6, generator=gen) > 0.2
    edge_index = torch.stack([torch.randint(0, m, (90,), generator=gen),
                              torch.randint(0, n, (90,), generator=gen)])  # fmt: skip
    return {
        "full": "full",
        "regular": RegularGraph(index, m, mask),
        "coo": COOGraph(edge_index, n, m),
    }


def _to(graph, device):
    if isinstance(graph, RegularGraph):
        return RegularGraph(graph.index.to(device), graph.num_keys, graph.mask.to(device))
    if isinstance(graph, COOGraph):
        return COOGraph(graph.edge_index.to(device), graph.num_queries, graph.num_keys)
    return graph


KERNEL_LIST = list(KERNELS.values())
#: (mode, with edge_bias): edge_bias is an additive logit, so only a softmax mode takes one.
MODE_BIAS = [
    ("embedded_gaussian", False),
    ("embedded_gaussian", True),
    ("dot_product", False),
    ("concatenation", False),
]


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", ["full", "regular", "coo"])
@pytest.mark.parametrize("kernel", KERNEL_LIST, ids=[k.NAME for k in KERNEL_LIST])
@pytest.mark.parametrize(
    ("mode", "bias"), MODE_BIAS, ids=[m + ("-bias" if b else "") for m, b in MODE_BIAS]
)
def test_kernels(dtype, kind, kernel, mode, bias) -> None:
    """Each registered kernel on CUDA against itself on the CPU, at its declared tolerance."""
    n, m = 40, 30
    graph = _graphs(n, m)[kind]
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, s, 8, generator=gen, dtype=dtype) for s in (n, m, m))
    cw = torch.randn(16, generator=gen, dtype=dtype) if mode == "concatenation" else None
    pw = Pairwise(mode, scale=0.3 if mode == "embedded_gaussian" else 1.0, concat_weight=cw)
    shape = {"full": (2, n, m), "regular": (2, n, 6), "coo": (2, 90)}[kind]
    eb = torch.randn(shape, generator=gen, dtype=dtype) if bias else None
    leaves = [t.requires_grad_(True) for t in (q, k, v)] + (
        [eb.requires_grad_(True)] if bias else []
    )

    def inputs(device):
        ts = [t.detach().to(device).requires_grad_(True) for t in leaves]
        pwd = Pairwise(mode, scale=pw.scale, concat_weight=None if cw is None else cw.to(device))
        inp = AggregateInputs(*ts[:3], pwd, _to(graph, device),
                              edge_bias=ts[3] if bias else None)  # fmt: skip
        return ts, inp

    for device in ("cpu", CUDA):
        reasons = kernel.not_supported_reasons(inputs(device)[1])
        if reasons:
            pytest.skip(f"{kernel.NAME} on {device}: {'; '.join(reasons)}")

    def run(device):
        ts, inp = inputs(device)
        y = nonlocal_aggregate(*ts[:3], inp.pairwise, graph=inp.graph, backend=kernel.NAME,
                               edge_bias=inp.edge_bias)  # fmt: skip
        grads = torch.autograd.grad(y.square().sum(), ts)
        return y, grads

    y_cpu, g_cpu = run("cpu")
    y_gpu, g_gpu = run(CUDA)
    atol, rtol = kernel.ATOL[dtype], kernel.RTOL[dtype]
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, atol=atol, rtol=rtol)
    for a, b in zip(g_gpu, g_cpu):
        torch.testing.assert_close(a.cpu(), b, atol=atol, rtol=rtol)


@pytest.mark.parametrize("graph", ["full", "knn", "window", "latent"])
def test_block(graph) -> None:
    spec = {"full": "full", "knn": KNN(8), "window": Window(2), "latent": Latent(6)}[graph]
    torch.manual_seed(0)
    block = NonLocalBlock2d(16, graph=spec, zero_init=False).double()
    x = torch.randn(2, 16, 12, 10, dtype=F64)
    want = block(x)
    got = block.to(CUDA)(x.to(CUDA))
    _close(got, want, 1e-9)


def test_knn_builder() -> None:
    x = torch.randn(500, 16)
    _close(knn(x.to(CUDA), x.to(CUDA), 8), knn(x, x, 8), 0)


@pytest.mark.parametrize("graph", [None, 5])
def test_object_relation(graph) -> None:
    torch.manual_seed(0)
    rel = ObjectRelation(64, num_heads=4, key_channels=16, geo_channels=32, graph=graph).double()
    xy = torch.rand(30, 2, dtype=F64) * 80
    boxes = torch.cat([xy, xy + torch.rand(30, 2, dtype=F64) * 30 + 1], 1)
    batch = torch.tensor([0] * 12 + [2] * 18)
    x = torch.randn(30, 64, dtype=F64, requires_grad=True)
    want = rel(x, boxes, batch)
    (gx_cpu,) = torch.autograd.grad(want.square().sum(), x)
    xg = x.detach().to(CUDA).requires_grad_(True)
    got = rel.to(CUDA)(xg, boxes.to(CUDA), batch.to(CUDA))
    (gx,) = torch.autograd.grad(got.square().sum(), xg)
    _close(got, want, 1e-9)
    _close(gx, gx_cpu, 1e-9)


def test_global_reasoning() -> None:
    torch.manual_seed(0)
    unit = GlobalReasoning(32, 8, 16, zero_init=False).double().eval()
    x = torch.randn(2, 32, 9, 7, dtype=F64)
    _close(unit.to(CUDA)(x.to(CUDA)), unit.cpu()(x), 1e-9)
    nodes, batch = torch.randn(25, 32, dtype=F64), torch.tensor([0] * 10 + [1] * 15)
    _close(unit.to(CUDA)(nodes.to(CUDA), batch.to(CUDA)), unit.cpu()(nodes, batch), 1e-9)


def test_roi_features() -> None:
    fmap = torch.randn(2, 8, 20, 24, dtype=F64)
    boxes = torch.tensor([[1.0, 2, 30, 25], [-5, -5, 10, 8], [40, 30, 47, 39]], dtype=F64)
    batch = torch.tensor([1, 0, 1])
    want = roi_features(fmap, boxes, batch, output_size=(3, 4), spatial_scale=0.5)
    got = roi_features(fmap.to(CUDA), boxes.to(CUDA), batch.to(CUDA), (3, 4), 0.5)
    _close(got, want, 1e-10)
