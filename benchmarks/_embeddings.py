"""Query and key embeddings for the k-NN graph benchmarks: three kinds of data, deterministic.

Every generator takes the number of queries N (or the side of a square map, N = side²), the
embedding width C′ and a seed (an ``int`` or a :class:`torch.Generator`), and returns float32
``(query, key)`` tensors of shape (1, N, C′) — the (B, N, C′) layout that
:meth:`nlgraph.graphs.KNN.build` takes. The same seed gives the same tensors; nothing touches
torch's global random state. The kinds, from the easiest for a clustered (IVF) search to the
hardest:

- ``"feature_map"`` (:func:`feature_map_embeddings`): what a non-local block sees. A synthetic
  natural-image-like scene (a smooth two-colour gradient with low-frequency colour noise, a
  dozen soft-edged coloured ellipses and rectangles, some of them striped, a few textured
  patches and fine grain) goes through a small fixed random conv net (3×3 convolutions with
  ReLU and per-channel standardisation, dilations 1, 1, 2, 4, a 3×3 average after the first
  one, Kaiming-normal weights from the seed; no training) to C=64 channels, then through the θ and φ 1×1 projections of a seeded
  ``NonLocalBlock2d(64, C′, sub_sample=False)`` (:meth:`~nlgraph.NonLocalBlock2d.embed`).
  Spatially smooth and clustered by region, like the features of a real network.
- ``"mixture"`` (:func:`mixture_embeddings`): a Gaussian mixture in C′ dimensions
  (64 components, means N(0, I), per-component scales log-uniform in [0.15, 0.6], mixing
  weights from a Dirichlet(1)); queries and keys are independent draws from the same mixture.
- ``"noise"`` (:func:`noise_embeddings`): isotropic Gaussian queries and keys, independent —
  no structure at all, the worst case for any clustered search.

At N=262144 each generator takes a few seconds at most (the feature map: a handful of 3×3
convolutions at 512×512) and allocates a few hundred MiB at most, freed on return.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from nlgraph import NonLocalBlock2d

__all__ = [
    "KINDS",
    "embeddings",
    "feature_map_embeddings",
    "mixture_embeddings",
    "noise_embeddings",
    "scene",
]

#: The three data kinds, easiest first.
KINDS: tuple[str, ...] = ("feature_map", "mixture", "noise")
#: Channels of the random conv net's output (the block's input width C).
FEATURE_CHANNELS = 64
#: (out channels, dilation) of each 3×3 conv layer of the random feature net.
FEATURE_LAYERS: tuple[tuple[int, int], ...] = ((32, 1), (64, 1), (64, 2), (64, 4))
#: Components of the Gaussian mixture.
MIXTURE_COMPONENTS = 64


def _generator(seed: int | torch.Generator) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(int(seed))


def _uniform(gen: torch.Generator, *shape: int, low: float = 0.0, high: float = 1.0) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen)


def _smooth_noise(gen: torch.Generator, channels: int, side: int, cells: int) -> Tensor:
    """(channels, side, side) low-frequency noise: a cells×cells grid, bicubically upsampled."""
    grid = torch.randn(1, channels, cells, cells, generator=gen)
    return F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=True)[0]


def scene(side: int, seed: int | torch.Generator = 0, shapes: int = 12) -> Tensor:
    """A (1, 3, side, side) natural-image-like RGB scene with values in about [0, 1].

    A smooth gradient between two random colours (random direction) with low-frequency colour
    noise, ``shapes`` soft-edged ellipses and rectangles of random colours (every third one
    striped), three patches of oriented texture and fine grain. Shapes are placed in relative
    coordinates, so the same seed draws the same scene at every resolution.

    Args:
        side (int): height and width in pixels.
        seed (int or torch.Generator): the random source. (default: ``0``)
        shapes (int): number of shapes. (default: ``12``)
    """
    gen = _generator(seed)
    axis = torch.linspace(0.0, 1.0, side)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    angle = float(_uniform(gen, 1, high=2 * math.pi))
    t = math.cos(angle) * xx + math.sin(angle) * yy
    t = (t - t.min()) / (t.max() - t.min())
    c0, c1 = _uniform(gen, 3, 1, 1), _uniform(gen, 3, 1, 1)
    img = c0 * (1 - t) + c1 * t + 0.12 * _smooth_noise(gen, 3, side, 5)
    edge = 1.5 / side  # soft edges about 1.5 pixels wide
    for i in range(shapes):
        cy, cx, ry, rx, rot, ellipse = _uniform(gen, 6).tolist()
        ry, rx = 0.04 + 0.2 * ry, 0.04 + 0.2 * rx
        rot *= math.pi
        u = math.cos(rot) * (xx - cx) + math.sin(rot) * (yy - cy)
        v = -math.sin(rot) * (xx - cx) + math.cos(rot) * (yy - cy)
        if ellipse < 0.5:
            dist = (torch.sqrt((u / rx) ** 2 + (v / ry) ** 2) - 1) * min(rx, ry)
        else:
            dist = torch.maximum(u.abs() - rx, v.abs() - ry)
        mask = torch.sigmoid(-dist / edge)
        colour = _uniform(gen, 3, 1, 1)
        if i % 3 == 2:  # striped shape
            freq = float(_uniform(gen, 1, low=20.0, high=60.0))
            colour = colour * (0.75 + 0.25 * torch.sin(2 * math.pi * freq * u))
        img = img * (1 - mask) + colour * mask
    for _ in range(3):  # patches of oriented texture
        cy, cx, r, rot = _uniform(gen, 4).tolist()
        r, rot = 0.05 + 0.1 * r, rot * math.pi
        freq = float(_uniform(gen, 1, low=30.0, high=90.0))
        wave = torch.sin(2 * math.pi * freq * (math.cos(rot) * xx + math.sin(rot) * yy))
        weight = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img = img + 0.12 * weight * wave * _uniform(gen, 3, 1, 1, low=0.5, high=1.0)
    img = img + 0.02 * torch.randn(3, side, side, generator=gen)
    return img.clamp(0.0, 1.0).unsqueeze(0)


@torch.no_grad()
def feature_net(image: Tensor, seed: int | torch.Generator = 0) -> Tensor:
    """(1, 64, H, W) features of ``image`` (1, 3, H, W) through a fixed random conv net.

    3×3 convolutions (:data:`FEATURE_LAYERS`: widths 32, 64, 64, 64, dilations 1, 1, 2, 4,
    zero padding that keeps the size), Kaiming-normal weights and small biases drawn from
    ``seed``, each followed by ReLU and per-channel standardisation over the map. A 3×3 average
    after the first layer stands in for a real network's early pooling: without it, random
    zero-mean filters pass mostly the fine grain and texture, and neighbouring positions embed
    about half as far apart as random pairs; with it about a fifth (at 128×128), closer to
    the features of a trained network.
    """
    gen = _generator(seed)
    x = (image - image.mean(dim=(2, 3), keepdim=True)) / 0.25
    channels = x.shape[1]
    for layer, (width, dilation) in enumerate(FEATURE_LAYERS):
        weight = torch.randn(width, channels, 3, 3, generator=gen) * math.sqrt(2 / (9 * channels))
        bias = 0.1 * torch.randn(width, generator=gen)
        x = F.relu(F.conv2d(x, weight, bias, padding=dilation, dilation=dilation))
        if layer == 0:
            x = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = x.std(dim=(2, 3), keepdim=True)
        x = (x - mean) / (std + 1e-5)
        channels = width
    return x


def _side(n: int) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"n: expected a square number of positions (side²), got {n}")
    return side


@torch.no_grad()
def feature_map_embeddings(
    n: int, channels: int, seed: int | torch.Generator = 0
) -> tuple[Tensor, Tensor]:
    """Queries θ(x) and keys φ(x), each (1, n, channels), of a random-net feature map x.

    ``x`` is :func:`feature_net` of :func:`scene` at side √n (64 channels); θ and φ are the 1×1
    projections of a ``NonLocalBlock2d(64, channels, sub_sample=False)`` initialised from the
    seed (torch's global random state is saved and restored around it).

    Args:
        n (int): positions, a square number (side²).
        channels (int): the embedding width C′.
        seed (int or torch.Generator): the random source. (default: ``0``)
    """
    side = _side(n)
    gen = _generator(seed)
    features = feature_net(scene(side, gen), gen)
    block_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(block_seed)
        block = NonLocalBlock2d(FEATURE_CHANNELS, channels, sub_sample=False).eval()
    query, key, _ = block.embed(features)
    return query.contiguous(), key.contiguous()


@torch.no_grad()
def mixture_embeddings(
    n: int, channels: int, seed: int | torch.Generator = 0, components: int = MIXTURE_COMPONENTS
) -> tuple[Tensor, Tensor]:
    """Queries and keys, each (1, n, channels), drawn independently from one Gaussian mixture.

    ``components`` means from N(0, I), isotropic scales log-uniform in [0.15, 0.6], mixing
    weights from a flat Dirichlet.
    """
    gen = _generator(seed)
    means = torch.randn(components, channels, generator=gen)
    scales = torch.exp(_uniform(gen, components, low=math.log(0.15), high=math.log(0.6)))
    weights = -torch.log(_uniform(gen, components, low=1e-12))  # Dirichlet(1) up to scale

    def draw() -> Tensor:
        comp = torch.multinomial(weights, n, replacement=True, generator=gen)
        noise = torch.randn(n, channels, generator=gen)
        return (means[comp] + scales[comp, None] * noise).unsqueeze(0)

    return draw(), draw()


@torch.no_grad()
def noise_embeddings(
    n: int, channels: int, seed: int | torch.Generator = 0
) -> tuple[Tensor, Tensor]:
    """Independent isotropic Gaussian queries and keys, each (1, n, channels)."""
    gen = _generator(seed)
    return (
        torch.randn(1, n, channels, generator=gen),
        torch.randn(1, n, channels, generator=gen),
    )


def embeddings(
    kind: str, n: int, channels: int, seed: int | torch.Generator = 0
) -> tuple[Tensor, Tensor]:
    """``(query, key)`` of one of :data:`KINDS`, each (1, n, channels) float32."""
    makers = {
        "feature_map": feature_map_embeddings,
        "mixture": mixture_embeddings,
        "noise": noise_embeddings,
    }
    if kind not in makers:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    return makers[kind](n, channels, seed)
