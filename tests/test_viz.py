"""nlgraph.viz: the drawn heatmaps and line segments against independently computed weights."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator

import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from nlgraph import Attention, NonLocalBlock2d  # noqa: E402
from nlgraph.graphs import KNN, COOGraph, Window  # noqa: E402
from nlgraph.viz import attention_map, plot_graph  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def no_show(*args: object, **kwargs: object) -> None:  # pragma: no cover - must not run
        raise AssertionError("nlgraph.viz called plt.show()")

    monkeypatch.setattr(plt, "show", no_show)
    yield
    plt.close("all")


def _attention(graph: object = "full", sub_sample: bool = False, shape=(6, 6), b: int = 2):
    block = NonLocalBlock2d(8, graph=graph, sub_sample=sub_sample)  # type: ignore[arg-type]
    _, attn = block(torch.randn(b, 8, *shape), return_attention=True)
    return attn


def _drawn(im) -> torch.Tensor:
    """The array an AxesImage shows (matplotlib may hand back a masked array)."""
    arr = im.get_array()
    return torch.as_tensor(arr.filled(0.0) if hasattr(arr, "filled") else arr)


def _segments(ax) -> list:
    lines = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(lines) == 1
    return lines[0]


# --------------------------------------------------------------------------- attention_map


@pytest.mark.parametrize("query", [(0, 0), (2, 3), (5, 4)])
@pytest.mark.parametrize("sample", [0, 1, -1])
def test_heatmap_is_the_attention_row(query, sample) -> None:
    attn = _attention()
    dense = attn.to_dense()[sample].detach()  # (36, 36)
    row = dense[query[0] * 6 + query[1]]
    _, ax = plt.subplots()
    im = attention_map(attn, query, sample=sample, ax=ax)
    drawn = _drawn(im)
    assert drawn.shape == (6, 6)
    torch.testing.assert_close(drawn.float(), row.view(6, 6).float())
    assert divmod(int(drawn.argmax()), 6) == divmod(int(row.argmax()), 6)
    assert im.axes is ax


def test_subsampled_keys_upsampled_to_the_image() -> None:
    attn = _attention(sub_sample=True, shape=(6, 8))  # 48 queries, 3x4 pooled keys
    assert (attn.num_queries, attn.num_keys) == (48, 12)
    row = attn.to_dense()[0, 1 * 8 + 5].detach().float()
    image = torch.rand(3, 12, 16)
    im = attention_map(attn, (1, 5), image=image)
    drawn = _drawn(im).float()
    assert drawn.shape == (12, 16)  # the image's size
    # nearest upsampling: key cell (a, b) covers image pixels [4a, 4a + 4) x [4b, 4b + 4)
    expected = row.view(3, 4).repeat_interleave(4, 0).repeat_interleave(4, 1)
    torch.testing.assert_close(drawn, expected)
    y, x = divmod(int(drawn.argmax()), 16)
    assert (y // 4, x // 4) == divmod(int(row.argmax()), 4)
    # the same image channels-last, as a numpy array, draws the same heatmap
    im2 = attention_map(attn, (1, 5), image=image.permute(1, 2, 0).numpy(), ax=plt.figure().gca())
    torch.testing.assert_close(_drawn(im2).float(), expected)


def test_bilinear_upsampling_has_the_image_size() -> None:
    attn = _attention(sub_sample=True, shape=(6, 6))
    im = attention_map(
        attn, (0, 0), image=torch.rand(20, 30), upsample="bilinear", query_shape=(6, 6)
    )
    assert _drawn(im).shape == (20, 30)


def test_map_smaller_than_the_image_infers_the_stride() -> None:
    attn = _attention(shape=(4, 6))  # 24 positions, image 4x larger: stride 4 gives 4x6
    im = attention_map(attn, (3, 5), image=torch.rand(16, 24, 3))
    drawn = _drawn(im).float()
    row = attn.to_dense()[0, 3 * 6 + 5].detach().float()
    expected = row.view(4, 6).repeat_interleave(4, 0).repeat_interleave(4, 1)
    torch.testing.assert_close(drawn, expected)


def test_window_graph_is_zero_outside_the_window() -> None:
    attn = _attention(graph=Window(1))
    for qy, qx in [(0, 0), (3, 2), (5, 3)]:
        drawn = _drawn(attention_map(attn, (qy, qx), sample=1, ax=plt.figure().gca()))
        inside = torch.zeros(6, 6, dtype=torch.bool)
        inside[max(qy - 1, 0) : qy + 2, max(qx - 1, 0) : qx + 2] = True  # Chebyshev distance <= 1
        assert torch.equal(drawn > 0, inside)
        assert float(drawn.sum()) == pytest.approx(1.0, abs=1e-5)  # softmax over the window


def test_knn_graph_is_zero_outside_the_k_neighbours() -> None:
    attn = _attention(graph=KNN(5))
    dense = attn.to_dense().detach()
    for sample in (0, 1):
        drawn = _drawn(attention_map(attn, (4, 1), sample=sample, ax=plt.figure().gca()))
        assert int((drawn > 0).sum()) == 5
        torch.testing.assert_close(drawn.float().flatten(), dense[sample, 4 * 6 + 1].float())


def test_edge_index_graph_shows_only_its_keys() -> None:
    # query 7 = (1, 1) listens to keys 0, 8 and 35; query 0 to key 1 only
    edge_index = torch.tensor([[0, 8, 35, 1], [7, 7, 7, 0]])
    attn = _attention(graph=edge_index)
    drawn = _drawn(attention_map(attn, (1, 1)))
    assert sorted(torch.nonzero(drawn.flatten() > 0).flatten().tolist()) == [0, 8, 35]
    drawn0 = _drawn(attention_map(attn, (0, 0), ax=plt.figure().gca()))
    assert torch.nonzero(drawn0.flatten()).flatten().tolist() == [1]
    assert float(drawn0.flatten()[1]) == pytest.approx(1.0)


def test_explicit_key_shape_for_a_non_square_grid() -> None:
    attn = Attention(torch.softmax(torch.randn(1, 10, 10), -1))  # 10 positions: no square
    with pytest.raises(ValueError, match="query_shape: cannot infer"):
        attention_map(attn, (0, 0))
    im = attention_map(attn, (1, 3), query_shape=(2, 5))
    assert _drawn(im).shape == (2, 5)
    im = attention_map(attn, (1, 3), query_shape=(2, 5), key_shape=(5, 2), ax=plt.figure().gca())
    assert _drawn(im).shape == (5, 2)


def test_current_axes_by_default() -> None:
    plt.figure()
    ax = plt.gca()
    assert attention_map(_attention(), (0, 0)).axes is ax


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"attn": torch.rand(1, 4, 4)}, TypeError, "attn: expected an nlgraph.Attention"),
        ({"query": (6, 0)}, IndexError, r"query: .*0 <= y < 6.*got \(6, 0\)"),
        ({"query": (0, -1)}, IndexError, r"query: .*got \(0, -1\)"),
        ({"query": (1.0, 2)}, TypeError, "query: expected a"),
        ({"query": 3}, TypeError, "query: expected a"),
        ({"sample": 2}, IndexError, r"sample: expected an index in \[-2, 2\), got 2"),
        ({"sample": "0"}, TypeError, "sample: expected an int"),
        ({"key_shape": (4, 4)}, ValueError, r"key_shape: expected \(h, w\) with h \* w = 36"),
        ({"query_shape": (6, 0)}, ValueError, "query_shape: expected"),
        ({"image": torch.rand(2, 5, 6, 7)}, ValueError, "image: expected an"),
        ({"image": "cat.png"}, (TypeError, ValueError), "image: expected"),
        ({"upsample": "cubic"}, ValueError, "upsample: expected one of"),
        ({"alpha": 1.5}, ValueError, r"alpha: expected a float in \[0, 1\], got 1.5"),
    ],
)
def test_attention_map_errors(kwargs, error, message) -> None:
    args = {"attn": _attention(), "query": (0, 0)}
    args.update(kwargs)
    with pytest.raises(error, match=message):
        attention_map(**args)


# --------------------------------------------------------------------------- plot_graph


def test_plot_graph_one_segment_per_edge_weighted() -> None:
    attn = _attention(graph=Window(1))
    queries = [(0, 0), (2, 3), (5, 5)]
    ax = plot_graph(attn, queries, sample=1, linewidth=4.0)
    lines = _segments(ax)
    segs = lines.get_segments()
    assert len(segs) == 4 + 9 + 4  # corner, interior, corner windows
    dense = attn.to_dense()[1].detach()
    # without an image the frame is the (shared) grid: segment = (key x, y) -> (query x, y)
    weights = []
    for seg in segs:
        (kx, ky), (qx, qy) = seg
        assert (round(qy), round(qx)) in queries
        assert max(abs(kx - qx), abs(ky - qy)) <= 1
        weights.append(float(dense[round(qy) * 6 + round(qx), round(ky) * 6 + round(kx)]))
    w = torch.tensor(weights)
    widths = torch.as_tensor(lines.get_linewidths(), dtype=torch.float32)
    torch.testing.assert_close(widths, 4.0 * w / w.max())
    alphas = torch.as_tensor(lines.get_colors()[:, 3], dtype=torch.float32)
    torch.testing.assert_close(alphas, w / w.max())


def test_plot_graph_full_attention_over_an_image_with_pooled_keys() -> None:
    attn = _attention(sub_sample=True, shape=(6, 8))  # 3x4 keys
    ax = plot_graph(attn, (2, 5), image=torch.rand(3, 12, 16))  # a single (y, x) is accepted
    segs = _segments(ax).get_segments()
    assert len(segs) == 12  # every key
    # query cell (2, 5) of the 6x8 grid is 2x2 pixels of the 12x16 image: centre y 4.5, x 10.5
    for seg in segs:
        assert tuple(seg[1]) == pytest.approx((10.5, 4.5))
    # key cell (a, b) of the 3x4 grid covers 4x4 pixels: centre (4b + 1.5, 4a + 1.5)
    starts = sorted((float(s[0][1]), float(s[0][0])) for s in segs)
    assert starts == sorted((4 * a + 1.5, 4 * b + 1.5) for a in range(3) for b in range(4))


def test_plot_graph_edge_index_is_uniform() -> None:
    edge_index = torch.tensor([[0, 1, 5, 5, 2, 3], [5, 5, 5, 0, 2, 7]])
    ax = plot_graph(edge_index, [(1, 1), (0, 2)], query_shape=(3, 4), linewidth=1.5)
    lines = _segments(ax)
    assert len(lines.get_segments()) == 4  # query 5 = (1, 1): 3 edges (one self-loop); 2: 1
    assert set(lines.get_linewidths()) == {1.5}
    # an image of the grid's size stands for query_shape
    ax = plot_graph(edge_index, [(0, 0)], image=torch.rand(3, 4), ax=plt.figure().gca())
    assert len(_segments(ax).get_segments()) == 1


def test_plot_graph_built_graphs() -> None:
    ax = plot_graph(Window(1).build((4, 4)), [(0, 0), (2, 2)], query_shape=(4, 4))
    assert len(_segments(ax).get_segments()) == 4 + 9
    coo = COOGraph(torch.tensor([[0, 1, 2], [3, 3, 1]]), num_queries=4, num_keys=4)
    ax = plot_graph(coo, [(1, 1)], ax=plt.figure().gca())
    assert len(_segments(ax).get_segments()) == 2


@pytest.mark.parametrize(
    ("source", "kwargs", "error", "message"),
    [
        ("list", {}, TypeError, "attn_or_graph: expected an Attention"),
        ("float_ei", {"query_shape": (3, 3)}, ValueError, "attn_or_graph: expected a .2, E. int64"),
        ("ei", {}, ValueError, "query_shape: expected .h, w. for a plain edge_index"),
        ("ei", {"query_shape": (2, 2)}, IndexError, r"edge_index\[0\] \(keys\) in \[0, 4\)"),
        ("attn", {"queries": []}, ValueError, "queries: expected a non-empty sequence"),
        ("attn", {"queries": [(0, 0), (9, 9)]}, IndexError, r"queries\[1\]: .*got \(9, 9\)"),
        ("attn", {"sample": -3}, IndexError, "sample: expected an index"),
        ("attn", {"linewidth": 0}, ValueError, "linewidth: expected a positive float, got 0"),
    ],
)
def test_plot_graph_errors(source, kwargs, error, message) -> None:
    sources = {
        "list": [[0, 1], [1, 0]],
        "float_ei": torch.zeros(2, 3),
        "ei": torch.tensor([[0, 8], [1, 2]]),
        "attn": _attention(),
    }
    args = {"attn_or_graph": sources[source], "queries": [(0, 0)]}
    args.update(kwargs)
    with pytest.raises(error, match=message):
        plot_graph(**args)


# --------------------------------------------------------------------------- object graphs (boxes)

BOXES = torch.tensor(
    [
        [0.0, 0.0, 8.0, 8.0],
        [10.0, 0.0, 20.0, 6.0],
        [4.0, 12.0, 12.0, 20.0],
        [30.0, 30.0, 34.0, 40.0],
    ]
)


def _box_attention(heads: int = 3):
    from nlgraph import ObjectRelation

    module = ObjectRelation(12, num_heads=heads, key_channels=8, geo_channels=8)
    _, attn = module(torch.randn(4, 12), BOXES, return_attention=True)
    return attn


def test_plot_graph_over_boxes_joins_centres_weighted_by_the_head() -> None:
    attn = _box_attention()
    ax = plot_graph(attn, [1, 3], sample=2, linewidth=3.0, boxes=BOXES)
    lines = _segments(ax)
    centres = ((BOXES[:, :2] + BOXES[:, 2:]) / 2).tolist()
    dense = attn.to_dense()[2].detach()  # head 2: (R queries, R keys)
    weights = []
    for (kx, ky), (qx, qy) in lines.get_segments():
        key, query = centres.index([kx, ky]), centres.index([qx, qy])
        assert query in (1, 3)
        weights.append(float(dense[query, key]))
    assert len(weights) == 2 * 3  # the full box graph: every other box into each query box
    w = torch.tensor(weights)
    widths = torch.as_tensor(lines.get_linewidths(), dtype=torch.float32)
    torch.testing.assert_close(widths, 3.0 * w / w.max())
    # every box is a rectangle with the box's corner and size; the query boxes are red
    rects = ax.patches
    assert [(p.get_x(), p.get_y(), p.get_width(), p.get_height()) for p in rects] == [
        (x1, y1, x2 - x1, y2 - y1) for x1, y1, x2, y2 in BOXES.tolist()
    ]
    red = [i for i, p in enumerate(rects) if p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    assert red == [1, 3]


def test_plot_graph_over_boxes_with_an_edge_index_and_an_image() -> None:
    edge_index = torch.tensor([[0, 2, 3, 1], [1, 1, 0, 1]])  # 0, 2 -> box 1; 3 -> box 0; a loop
    image = torch.rand(3, 48, 48)
    ax = plot_graph(edge_index, 1, image, boxes=BOXES, color="blue")
    segs = _segments(ax).get_segments()
    assert [s.tolist() for s in segs] == [[[4.0, 4.0], [15.0, 3.0]], [[8.0, 16.0], [15.0, 3.0]]]
    assert ax.get_images()[0].get_array().shape == (48, 48, 3)


@pytest.mark.parametrize(
    ("source", "kwargs", "error", "message"),
    [
        (
            "attn",
            {"queries": [4]},
            IndexError,
            r"queries\[0\]: expected a box index in \[0, 4\), got 4",
        ),
        ("attn", {"queries": [(0, 0)]}, TypeError, r"queries\[0\]: expected a box index \(int\)"),
        ("attn", {"queries": []}, ValueError, "queries: expected a box index or a non-empty"),
        ("attn", {"boxes": BOXES[:3]}, ValueError, r"boxes: expected one box per node \(4 queries"),
        ("attn", {"boxes": BOXES[:, :3]}, ValueError, "boxes: expected a 2-D .R, 4. tensor"),
        ("ei", {}, IndexError, r"expected edge_index values in \[0, 4\) \(the boxes\)"),
        ("attn", {"sample": 5}, IndexError, "sample: expected an index"),
    ],
)
def test_plot_graph_over_boxes_errors(source, kwargs, error, message) -> None:
    sources = {"attn": _box_attention(), "ei": torch.tensor([[0, 7], [1, 2]])}
    args = {"attn_or_graph": sources[source], "queries": [0], "boxes": BOXES}
    args.update(kwargs)
    with pytest.raises(error, match=message):
        plot_graph(**args)


# --------------------------------------------------------------------------- optional matplotlib


def test_import_without_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]
    monkeypatch.delitem(sys.modules, "nlgraph.viz")
    viz = importlib.import_module("nlgraph.viz")  # imports without matplotlib
    attn = Attention(torch.rand(1, 4, 4))
    with pytest.raises(ImportError, match=r"nlgraph\[viz\]"):
        viz.attention_map(attn, (0, 0))
    with pytest.raises(ImportError, match=r"nlgraph\[viz\]"):
        viz.plot_graph(attn, [(0, 0)])
    # arguments are checked before matplotlib is needed
    with pytest.raises(IndexError, match="query"):
        viz.attention_map(attn, (5, 0))
