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


# ------------------------------------------------------------------ every kernel, every dtype
HALF_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("kind", ["full", "regular", "coo"])
@pytest.mark.parametrize("kernel", KERNEL_LIST, ids=[k.NAME for k in KERNEL_LIST])
@pytest.mark.parametrize(
    ("mode", "bias"), MODE_BIAS, ids=[m + ("-bias" if b else "") for m, b in MODE_BIAS]
)
def test_kernels_dtypes_against_fp64(dtype, kind, kernel, mode, bias) -> None:
    """Each kernel (``triton`` included when registered) on CUDA in float32/float16/bfloat16
    against the fp64 CPU result of ``coo`` on the same (rounded) inputs, output and gradients,
    at the kernel's declared ATOL/RTOL for the dtype."""
    n, m = 40, 30
    graph = _graphs(n, m)[kind]
    gen = torch.Generator().manual_seed(2)
    # Rounded to the dtype first, so the reference sees exactly the kernel's inputs.
    q, k, v = (torch.randn(2, s, 8, generator=gen).to(dtype).double() for s in (n, m, m))
    cw = torch.randn(16, generator=gen).to(dtype).double() if mode == "concatenation" else None
    scale = 0.3 if mode == "embedded_gaussian" else 1.0
    shape = {"full": (2, n, m), "regular": (2, n, 6), "coo": (2, 90)}[kind]
    eb = torch.randn(shape, generator=gen).to(dtype).double() if bias else None
    grad_out = torch.randn(2, n, 8, generator=gen).to(dtype).double()
    leaves = [q, k, v] + ([eb] if bias else [])

    def run(device, dt, backend):
        ts = [t.to(device, dt).requires_grad_(True) for t in leaves]
        pw = Pairwise(mode, scale=scale, concat_weight=None if cw is None else cw.to(device, dt))
        inp = AggregateInputs(*ts[:3], pw, _to(graph, device), edge_bias=ts[3] if bias else None)
        if backend is not None:
            reasons = KERNELS[backend].not_supported_reasons(inp)
            if reasons:
                pytest.skip(f"{backend} on {device} {dt}: {'; '.join(reasons)}")
        y = nonlocal_aggregate(*ts[:3], pw, graph=inp.graph, backend=backend or "coo",
                               edge_bias=inp.edge_bias)  # fmt: skip
        grads = torch.autograd.grad(y, ts, grad_out.to(device, dt))
        return y, grads

    y_gpu, g_gpu = run(CUDA, dtype, kernel.NAME)
    y_ref, g_ref = run("cpu", F64, None)
    atol, rtol = kernel.ATOL[dtype], kernel.RTOL[dtype]
    torch.testing.assert_close(y_gpu.cpu().double(), y_ref, atol=atol, rtol=rtol)
    if mode == "concatenation" and dtype != torch.float32:
        return  # ReLU kinks: a pre-activation near 0 rounds to the other side in half precision
    for name, a, b in zip(("q", "k", "v", "edge_bias"), g_gpu, g_ref):
        torch.testing.assert_close(
            a.cpu().double(), b, atol=atol, rtol=rtol, msg=lambda s, name=name: f"d{name}: {s}"
        )


# ------------------------------------------------------------------ no host synchronisation
def _sync_free(step) -> None:
    """One warm call (caches, lazy imports, kernel compilation), then one under
    ``set_sync_debug_mode("error")``: any synchronising CUDA call raises."""
    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


@pytest.mark.parametrize("graph", ["full", "window", "knn", "prebuilt"])
def test_block_forward_backward_is_sync_free(graph) -> None:
    """Forward+backward of NonLocalBlock2d with no host synchronisation: the full graph, a
    Window, KNN(8) rebuilt per call (exact search) and a prebuilt RegularGraph passed as
    ``forward(x, graph=g)``."""
    spec = {"full": "full", "window": Window(2), "knn": KNN(8, search="exact"),
            "prebuilt": KNN(8, search="exact")}[graph]  # fmt: skip
    block = NonLocalBlock2d(16, mode="embedded_gaussian", graph=spec, zero_init=False).to(CUDA)
    x = torch.randn(2, 16, 24, 20, device=CUDA, requires_grad=True)
    grad = torch.randn_like(x)
    given = None
    if graph == "prebuilt":
        given = block.build_graph(x)
        assert isinstance(given, RegularGraph)

    def step() -> None:
        x.grad = None
        block(x, graph=given).backward(grad)

    _sync_free(step)


def test_nonlocal_conv_is_sync_free() -> None:
    """NonLocalConv forward+backward on the same edge_index each step: no host sync."""
    from nlgraph import NonLocalConv

    conv = NonLocalConv(16).to(CUDA)
    x = torch.randn(300, 16, device=CUDA, requires_grad=True)
    edges = torch.stack([torch.randint(0, 300, (2400,)), torch.arange(2400) // 8]).to(CUDA)
    grad = torch.randn_like(x)

    def step() -> None:
        x.grad = None
        conv(x, edges).backward(grad)

    _sync_free(step)


# ------------------------------------------------------------------ CUDA graphs, torch.compile
def _fixed_k_block(backend: str):
    """An eval-mode block, a prebuilt k=8 RegularGraph and inputs; skips unsupported kernels."""
    if backend != "auto" and backend not in KERNELS:
        pytest.skip(f"{backend}: not registered (KERNELS: {', '.join(KERNELS)})")
    torch.manual_seed(0)
    block = NonLocalBlock2d(
        16, mode="embedded_gaussian", graph=KNN(8, search="exact"), zero_init=False,
        backend=backend,
    ).to(CUDA).eval()  # fmt: skip
    x = torch.randn(2, 16, 24, 20, device=CUDA)
    graph = block.build_graph(x)
    assert isinstance(graph, RegularGraph)
    if backend != "auto":
        with torch.no_grad():
            q, k, v = block.embed(x)
        reasons = KERNELS[backend].not_supported_reasons(
            AggregateInputs(q, k, v, block.pairwise(), graph)
        )
        if reasons:
            pytest.skip(f"{backend}: {'; '.join(reasons)}")
    return block, graph, x


FIXED_K_BACKENDS = ["auto", "regular", "triton"]


@pytest.mark.parametrize("backend", FIXED_K_BACKENDS)
def test_cuda_graph_capture_replays_fixed_k_block(backend) -> None:
    """A forward of a fixed-k block (prebuilt RegularGraph) captured in a CUDA graph: replays
    on new inputs copied into the static buffer equal eager calls."""
    block, graph, x = _fixed_k_block(backend)
    static_x = x.clone()
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: caches, lazy init, kernel compilation
            for _ in range(3):
                block(static_x, graph=graph)
        torch.cuda.current_stream().wait_stream(side)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
            static_out = block(static_x, graph=graph)
        for seed in (1, 2):
            new = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(CUDA)
            static_x.copy_(new)
            cuda_graph.replay()
            torch.testing.assert_close(static_out, block(new, graph=graph), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", FIXED_K_BACKENDS)
def test_torch_compile_fixed_k_block_equals_eager(backend) -> None:
    """torch.compile of the fixed-k block's forward equals eager; ``fullgraph=True`` for the
    pure-PyTorch ``regular`` kernel, graph breaks allowed otherwise."""
    block, graph, x = _fixed_k_block(backend)
    compiled = torch.compile(lambda t: block(t, graph=graph), fullgraph=backend == "regular")
    with torch.no_grad():
        want = block(x, graph=graph)
        got = compiled(x)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        x2 = torch.randn_like(x)
        torch.testing.assert_close(compiled(x2), block(x2, graph=graph), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("metric", ["logit", "l2", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_knn_search_on_cuda_equals_the_cpu_exact_graph(metric, dtype) -> None:
    """The fused Triton k-NN search (opt-in: ``force_triton_knn``) compiled for the GPU gives
    the CPU exact builder's graph; integer features, so the scores are exact and ties are
    decided by index on both sides. Also sync-free."""
    pytest.importorskip("triton")
    from nlgraph.graphs._triton_knn import force_triton_knn

    gen = torch.Generator().manual_seed(0)
    q = torch.randint(-3, 4, (2, 300, 16), generator=gen).to(dtype)
    k = torch.randint(-3, 4, (2, 257, 16), generator=gen).to(dtype)
    if metric == "cosine":
        q, k = q + 0.01 * torch.randn(q.shape, generator=gen, dtype=dtype), k
    want = KNN(12, metric=metric, search="exact").build(q.float(), k.float()).index
    with force_triton_knn():
        torch.cuda.set_sync_debug_mode("error")
        try:
            got = KNN(12, metric=metric, search="exact").build(q.to(CUDA), k.to(CUDA)).index
        finally:
            torch.cuda.set_sync_debug_mode(0)
    if metric == "cosine":  # normalised vectors round differently on the two devices
        agree = (got.cpu().unsqueeze(-1) == want.unsqueeze(-2)).any(-1).float().mean()
        assert float(agree) >= 0.99
    else:
        assert torch.equal(got.cpu(), want)
