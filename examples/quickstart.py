"""nlgraph quick start: the four non-local modes, presets, and a weight round trip.

Run with ``python examples/quickstart.py`` (about a second on a laptop CPU). Everything here is
generated: no download.
"""

from __future__ import annotations

import torch

from nlgraph import NonLocalBlock2d, NonLocalBlock3d, from_reference
from nlgraph.pairwise import MODES


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 32, 12, 16)  # (B, C, H, W): N = 192 positions

    print("mode               |z - x| at init   |z - x| after a weight change   attn rows sum to")
    for mode in MODES:
        block = NonLocalBlock2d(32, mode=mode).eval()  # identity at construction
        identity_gap = (block(x) - x).abs().max().item()
        torch.nn.init.normal_(block.norm.weight)  # leave the identity
        z, attn = block(x, return_attention=True)
        weights = attn.to_dense()  # (B, N, N') with N' = 6 * 8 keys after 2x2 max-pooling
        print(
            f"{mode:18s} {identity_gap:14.1e} {(z - x).abs().max().item():24.3f}"
            f"     {weights.sum(-1).mean().item():.3f}  (attn {tuple(weights.shape)})"
        )

    # A block with the defaults of the official SlowFast implementation, its weights written in
    # SlowFast's key layout, and loaded back: the same numbers.
    video = torch.randn(1, 16, 4, 8, 8)
    slowfast = NonLocalBlock3d.from_preset("slowfast", 16).eval()
    state = slowfast.to_reference("slowfast")
    print("\nSlowFast keys:", ", ".join(list(state)[:6]), "...")
    again = from_reference(state, "slowfast", mode="embedded_gaussian").eval()
    print("round trip max |difference|:", (again(video) - slowfast(video)).abs().max().item())


if __name__ == "__main__":
    main()
