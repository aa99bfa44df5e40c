"""ObjectRelation against an fp64 loop reference written from Hu et al. (CVPR 2018)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from nlgraph.graphs import BoxKNN
from nlgraph.nn import ObjectRelation

F64 = torch.float64


def _boxes(r: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(r, 2, generator=g, dtype=F64) * 60
    wh = torch.rand(r, 2, generator=g, dtype=F64) * 20 + 2
    return torch.cat([xy, xy + wh], 1)


def _embed(feats: list[float], dim: int) -> torch.Tensor:
    out = []
    for f in feats:
        angles = [100.0 * f / 1000.0 ** (8.0 * t / dim) for t in range(dim // 8)]
        out += [math.sin(a) for a in angles] + [math.cos(a) for a in angles]
    return torch.tensor(out, dtype=F64)


def _geometry(bm: torch.Tensor, bn: torch.Tensor) -> list[float]:
    """Hu et al. eq. (5) for key box m and query box n, offsets clamped at 1e-3 (official)."""
    xm, ym = (bm[0] + bm[2]).item() / 2, (bm[1] + bm[3]).item() / 2
    xn, yn = (bn[0] + bn[2]).item() / 2, (bn[1] + bn[3]).item() / 2
    wm, hm = (bm[2] - bm[0]).item(), (bm[3] - bm[1]).item()
    wn, hn = (bn[2] - bn[0]).item(), (bn[3] - bn[1]).item()
    return [
        math.log(max(abs(xm - xn) / wm, 1e-3)),
        math.log(max(abs(ym - yn) / hm, 1e-3)),
        math.log(wn / wm),
        math.log(hn / hm),
    ]


def reference(rel: ObjectRelation, x, boxes, neighbours) -> torch.Tensor:
    """f_n + concat_h Σ_m w^{mn}_h W_V^h f_m with w ∝ w_G·exp(w_A) (the chosen floor on w_G)."""
    p = {k: v.detach().to(F64) for k, v in rel.state_dict().items()}
    h, dk = rel.num_heads, rel.key_channels
    dv = rel.in_channels // h
    q = x @ p["query.weight"].T + p["query.bias"]
    k = x @ p["key.weight"].T + p["key.bias"]
    v = x @ p["value.weight"].T + p["value.bias"]
    out = x.clone()
    for n in range(x.shape[0]):
        ms = neighbours[n]
        if not ms:
            continue
        for head in range(h):
            sl = slice(head * dk, (head + 1) * dk)
            weights = []
            for m in ms:
                w_a = (k[m, sl] @ q[n, sl]) / math.sqrt(dk)
                if rel.geometry is None:
                    w_g = torch.tensor(1.0, dtype=F64)
                else:
                    emb = _embed(_geometry(boxes[m], boxes[n]), rel.geo_channels)
                    w_g = torch.relu(emb @ p["geo.weight"][head] + p["geo.bias"][head])
                    floor = 1e-6 if rel.geometry == "official" else torch.finfo(F64).tiny
                    w_g = torch.clamp(w_g, min=floor)
                weights.append(w_g * torch.exp(w_a))
            w = torch.stack(weights)
            w = w / w.sum()
            vs = torch.stack([v[m, head * dv : (head + 1) * dv] for m in ms])
            out[n, head * dv : (head + 1) * dv] += (w[:, None] * vs).sum(0)
    return out


def _module(geometry="official", graph=None, c=24, heads=3, seed=0) -> ObjectRelation:
    torch.manual_seed(seed)
    rel = ObjectRelation(
        c, num_heads=heads, key_channels=5, geo_channels=16, graph=graph, geometry=geometry
    ).double()
    if rel.geo is not None:  # some heads' geometric weights cut by the ReLU, some not
        torch.nn.init.normal_(rel.geo.weight, std=0.5)
    return rel


@pytest.mark.parametrize("geometry", ["official", "paper", None])
@pytest.mark.parametrize("backend", ["auto", "coo", "csr", "regular"])
def test_full_graph_matches_reference(geometry, backend) -> None:
    rel = _module(geometry)
    rel.backend = backend
    batch = torch.tensor([0, 0, 0, 0, 2, 2, 2, 0, 3])  # image 1 empty, image 3 a single box
    x, boxes = torch.randn(9, 24, dtype=F64), _boxes(9)
    want = reference(
        rel, x, boxes, {n: [m for m in range(9) if batch[m] == batch[n]] for n in range(9)}
    )
    if backend == "regular":
        with pytest.raises(ValueError, match="'regular' cannot run"):
            rel(x, boxes, batch)
        return
    torch.testing.assert_close(rel(x, boxes, batch), want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("metric", ["center", "iou"])
def test_knn_graph_matches_reference(metric) -> None:
    rel = _module("official", graph=BoxKNN(3, metric))
    batch = torch.tensor([0] * 5 + [1] * 6)
    x, boxes = torch.randn(11, 24, dtype=F64), _boxes(11, seed=2)
    ei = rel.build_graph(boxes, batch)
    neighbours = {n: ei[0][ei[1] == n].tolist() for n in range(11)}
    assert all(len(v) == 3 and all(batch[m] == batch[n] for m in v) for n, v in neighbours.items())
    torch.testing.assert_close(rel(x, boxes, batch), reference(rel, x, boxes, neighbours))


def test_int_graph_is_center_knn() -> None:
    assert _module(graph=4).graph == BoxKNN(4, "center")


def test_user_edge_index_and_attention() -> None:
    rel = _module()
    x, boxes = torch.randn(6, 24, dtype=F64), _boxes(6)
    ei = torch.tensor([[1, 2, 0, 5, 4], [0, 0, 3, 3, 5]])  # boxes 1, 2, 4 receive nothing
    neighbours = {n: ei[0][ei[1] == n].tolist() for n in range(6)}
    out, attn = rel(x, boxes, edge_index=ei, return_attention=True)
    torch.testing.assert_close(out, reference(rel, x, boxes, neighbours))
    dense = attn.to_dense()
    assert dense.shape == (3, 6, 6)
    torch.testing.assert_close(dense.sum(-1)[:, [0, 3, 5]], torch.ones(3, 3, dtype=F64))
    assert float(dense[:, [1, 2, 4]].detach().abs().sum()) == 0.0


def test_per_image_lists_equal_concatenated() -> None:
    rel = _module()
    xs = [torch.randn(r, 24, dtype=F64) for r in (4, 0, 3)]
    bs = [_boxes(r, seed=r) for r in (4, 0, 3)]
    out = rel(xs, bs)
    assert isinstance(out, list) and [o.shape[0] for o in out] == [4, 0, 3]
    joint = rel(torch.cat(xs), torch.cat(bs), torch.tensor([0] * 4 + [2] * 3))
    torch.testing.assert_close(torch.cat(out), joint)
    for xi, bi, oi in zip(xs, bs, out):  # and each image alone
        if xi.shape[0]:
            torch.testing.assert_close(rel(xi, bi), oi)


def test_one_box_and_no_box() -> None:
    rel = _module()
    x, boxes = torch.randn(1, 24, dtype=F64), _boxes(1)
    torch.testing.assert_close(rel(x, boxes), reference(rel, x, boxes, {0: [0]}))
    empty = rel(torch.zeros(0, 24, dtype=F64), torch.zeros(0, 4, dtype=F64))
    assert empty.shape == (0, 24)


def test_gradcheck() -> None:
    rel = _module(c=6, heads=2)
    x = torch.randn(4, 6, dtype=F64, requires_grad=True)
    boxes = _boxes(4)
    batch = torch.tensor([0, 0, 1, 1])
    assert gradcheck(lambda t: rel(t, boxes, batch), (x,))
    params = [p for p in rel.parameters()]
    out = rel(x, boxes, batch)
    grads = torch.autograd.grad(out.square().sum(), params)
    assert all(float(g.abs().sum()) > 0 for g in grads)  # every weight is used


def test_float32_matches_float64() -> None:
    rel = _module()
    x, boxes = torch.randn(7, 24, dtype=F64), _boxes(7)
    want = rel(x, boxes)
    got = rel.float()(x.float(), boxes.float())
    # The sinusoids of 100·log(offset) reach angles of a few hundred radians: float32 keeps
    # about 3e-5 of them.
    torch.testing.assert_close(got, want.float(), atol=1e-4, rtol=1e-4)


def test_errors() -> None:
    with pytest.raises(ValueError, match="in_channels: expected a multiple of num_heads=16"):
        ObjectRelation(100)
    with pytest.raises(ValueError, match="geo_channels: expected a multiple of 8"):
        ObjectRelation(64, geo_channels=12)
    with pytest.raises(ValueError, match="geometry: expected one of"):
        ObjectRelation(64, geometry="both")
    with pytest.raises(TypeError, match="graph: expected None"):
        ObjectRelation(64, graph="knn")
    # Regression: graph=0 used to be reported as a bad "k".
    with pytest.raises(ValueError, match="^graph: expected None .*a positive int k.*got 0"):
        ObjectRelation(64, graph=0)
    rel = _module()
    x, boxes = torch.randn(3, 24, dtype=F64), _boxes(3)
    bad = boxes.clone()
    bad[2, 3] = bad[2, 1] - 5
    with pytest.raises(ValueError, match="boxes: expected x1 <= x2 and y1 <= y2.*row 2.*y2 < y1"):
        rel(x, bad)
    nan = boxes.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="boxes: expected finite coordinates, got row 0"):
        rel(x, nan)
    with pytest.raises(ValueError, match=r"boxes: expected a 2-D \(R, 4\)"):
        rel(x, boxes.T)
    with pytest.raises(ValueError, match="boxes: expected 3 boxes"):
        rel(x, boxes[:2])
    with pytest.raises(ValueError, match=r"x: expected box features of shape \(R, 24\)"):
        rel(x[:, :5], boxes)
    with pytest.raises(TypeError, match="x: expected dtype torch.float64"):
        rel(x.float(), boxes.float())
    with pytest.raises(
        IndexError,
        match=r"^edge_index: expected indices in \[0, 3\), got values in \[0, 3\] \(both rows index the 3 boxes\)",
    ):
        rel(x, boxes, edge_index=torch.tensor([[0, 3], [0, 0]]))
    with pytest.raises(ValueError, match="batch: expected None with per-image lists"):
        rel([x], [boxes], torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("geometry", ["official", "paper"])
def test_gradcheck_geometry_weights(geometry, monkeypatch) -> None:
    import nlgraph.nn.object_relation as mod

    monkeypatch.setattr(mod, "GEOMETRY_CHUNK", 5)  # several chunks in forward and backward
    rel = _module(geometry, c=6, heads=2)
    x, boxes = torch.randn(5, 6, dtype=F64), _boxes(5)
    names = ("geo.weight", "geo.bias", "query.weight", "key.bias")
    params = tuple(rel.get_parameter(n).detach().clone().requires_grad_(True) for n in names)

    def run(*ps):
        return torch.func.functional_call(rel, dict(zip(names, ps)), (x, boxes))

    assert gradcheck(run, params)
    # and the chunked gradient equals the autograd gradient of the loop reference
    got = torch.autograd.grad(run(*params).square().sum(), params[:2])
    want_out = reference_with(rel, x, boxes, params[0], params[1])
    want = torch.autograd.grad(want_out.square().sum(), params[:2])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def reference_with(rel, x, boxes, geo_weight, geo_bias) -> torch.Tensor:
    """The loop reference, differentiable in the geometric weights."""
    h, dk, dv, r = rel.num_heads, rel.key_channels, rel.in_channels // rel.num_heads, x.shape[0]
    p = {k: v.detach() for k, v in rel.state_dict().items()}
    q = x @ p["query.weight"].T + p["query.bias"]
    k = x @ p["key.weight"].T + p["key.bias"]
    v = x @ p["value.weight"].T + p["value.bias"]
    floor = 1e-6 if rel.geometry == "official" else torch.finfo(F64).tiny
    rows = []
    for n in range(r):
        heads = []
        for head in range(h):
            sl = slice(head * dk, (head + 1) * dk)
            logits = []
            for m in range(r):
                emb = _embed(_geometry(boxes[m], boxes[n]), rel.geo_channels)
                w_g = torch.relu(emb @ geo_weight[head] + geo_bias[head]).clamp(min=floor)
                logits.append((k[m, sl] @ q[n, sl]) / math.sqrt(dk) + torch.log(w_g))
            w = torch.softmax(torch.stack(logits), 0)
            heads.append((w[:, None] * v[:, head * dv : (head + 1) * dv]).sum(0))
        rows.append(torch.cat(heads))
    return x + torch.stack(rows)


def test_many_images_take_the_block_diagonal_path() -> None:
    import nlgraph.nn.object_relation as mod

    rel = _module()
    batch = torch.arange(mod.DENSE_MAX_IMAGES + 4).repeat_interleave(2)  # 2 boxes per image
    r = batch.numel()
    x, boxes = torch.randn(r, 24, dtype=F64), _boxes(r, seed=5)
    assert rel._dense_images(batch) is None and rel._dense_images(batch[:6]) is not None
    neighbours = {n: [m for m in range(r) if batch[m] == batch[n]] for n in range(r)}
    torch.testing.assert_close(rel(x, boxes, batch), reference(rel, x, boxes, neighbours))
