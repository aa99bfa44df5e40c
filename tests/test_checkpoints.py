"""Every public module survives the ways PyTorch users save and copy models.

For each module of ``nlgraph.nn`` (the blocks with every graph kind, NonLocalConv,
ObjectRelation, GlobalReasoning): ``state_dict`` → ``torch.save`` → ``torch.load(...,
weights_only=True)`` → ``load_state_dict`` into a freshly built module, ``pickle`` and
``copy.deepcopy`` all give a module that computes bitwise the same outputs (eval mode, random
non-trivial weights). The reference is the original module's own output: what is checked is the
round trip, not the numbers (those are checked against the fp64 references elsewhere).
"""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from nlgraph import (
    GlobalReasoning,
    NonLocalBlock1d,
    NonLocalBlock2d,
    NonLocalBlock3d,
    NonLocalConv,
    ObjectRelation,
)
from nlgraph.graphs import KNN, Latent, Window, knn_graph

Case = tuple[Callable[[], nn.Module], Callable[[], tuple[Any, ...]]]


def _boxes(n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(n)
    xy = 50 * torch.rand(n, 2, generator=gen)
    wh = 5 + 20 * torch.rand(n, 2, generator=gen)
    return torch.cat([xy, xy + wh], 1)


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


CASES: dict[str, Case] = {
    "block1d-full": (lambda: NonLocalBlock1d(8, 4), lambda: (_x(2, 8, 10),)),
    "block2d-knn": (
        lambda: NonLocalBlock2d(8, 4, sub_sample=False, graph=KNN(3)),
        lambda: (_x(2, 8, 5, 6),),
    ),
    "block2d-ivf": (
        lambda: NonLocalBlock2d(8, 4, sub_sample=False, graph=KNN(3, search="ivf")),
        lambda: (_x(2, 8, 6, 6),),
    ),
    "block2d-window": (
        lambda: NonLocalBlock2d(8, 4, mode="dot_product", graph=Window(1)),
        lambda: (_x(2, 8, 6, 6),),
    ),
    "block2d-latent": (
        lambda: NonLocalBlock2d(8, 4, sub_sample=False, latent=Latent(5)),
        lambda: (_x(2, 8, 6, 6),),
    ),
    "block3d-concat": (
        lambda: NonLocalBlock3d(8, 4, mode="concatenation"),
        lambda: (_x(1, 8, 2, 4, 4),),
    ),
    "conv": (
        lambda: NonLocalConv(8, 4),
        lambda: (_x(20, 8), knn_graph(_x(20, 3), 4)),
    ),
    "relation": (
        lambda: ObjectRelation(16, num_heads=4, key_channels=8, geo_channels=8),
        lambda: (_x(7, 16), _boxes(7)),
    ),
    "glore": (lambda: GlobalReasoning(8, 4), lambda: (_x(2, 8, 5, 5),)),
}


def _randomise(module: nn.Module) -> nn.Module:
    """Non-trivial weights and running statistics (the zero-initialised ones would make every
    block the identity, hiding a lost tensor)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.copy_(0.5 + 0.3 * torch.rand(t.shape, generator=gen, dtype=t.dtype))
    return module.eval()


@pytest.mark.parametrize("name", list(CASES))
def test_state_dict_weights_only_pickle_and_deepcopy(name: str) -> None:
    build, inputs = CASES[name]
    module = _randomise(build())
    args = inputs()
    with torch.no_grad():
        want = module(*args)
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = build().eval()
    fresh.load_state_dict(state)
    for clone in (fresh, pickle.loads(pickle.dumps(module)), copy.deepcopy(module)):
        with torch.no_grad():
            got = clone(*args)
        assert torch.equal(got, want), name
