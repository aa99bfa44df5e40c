"""from_reference against the recorded outputs of the real public modules (tests/data/golden).

Each case holds a reference module's state_dict, an input and that module's outputs in eval and
train mode (float64); the block loaded by :func:`nlgraph.compat.from_reference` must reproduce
both to 1e-10, and :func:`nlgraph.compat.to_reference` must give the state_dict back exactly.
The data ships with the repository (format: ``tests/data/golden/README.md``), so these tests
never skip: a missing file is a broken checkout and fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from nlgraph.compat import from_reference, to_reference

#: The golden data, inside the repository (relative to this file, never ../shared).
GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden"
FILES = ("alexhex7", "mmcv", "slowfast", "timm")
NUM_CASES = 118
ATOL = 1e-10


def require_golden() -> None:
    """Fail when the golden data is absent: it is part of the repository."""
    missing = [f"{name}.pt" for name in FILES if not (GOLDEN / f"{name}.pt").is_file()]
    if missing:
        pytest.fail(f"golden data missing under {GOLDEN}: {', '.join(missing)}")


def load_golden(name: str) -> list[dict[str, Any]]:
    """The cases of ``<name>.pt`` (after :func:`require_golden`)."""
    require_golden()
    return torch.load(GOLDEN / f"{name}.pt", weights_only=True)


def case_id(config: dict[str, Any]) -> str:
    """A readable test id, e.g. ``mmcv-2d-dot_product-sub-bn-scale``."""
    layout, mode = config["layout"], config["mode"]
    if layout == "slowfast":
        pool = config["pool_size"]
        return f"slowfast-{config['instantiation']}-pool{''.join(map(str, pool or [])) or 'none'}"
    if layout == "timm":
        return f"timm-c{config['in_channels']}-{'scale' if config['use_scale'] else 'noscale'}"
    sub = "sub" if config["sub_sample"] else "nosub"
    if layout == "alexhex7":
        return f"alexhex7-{config['dims']}d-{mode}-{sub}-{'bn' if config['bn_layer'] else 'nobn'}"
    norm = "bn" if config["norm_cfg"] else "nonorm"
    scale = "scale" if config["use_scale"] else "noscale"
    return f"mmcv-{config['dims']}d-{mode}-{sub}-{norm}-{scale}"


def reference_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """from_reference arguments reproducing a golden case's module configuration."""
    kwargs: dict[str, Any] = {"mode": config["mode"]}
    if config["layout"] in ("mmcv", "timm") and config["mode"] == "embedded_gaussian":
        # use_scale is not in the state_dict: say it (a warning otherwise)
        scaled = "inner" if config["layout"] == "mmcv" else "input"
        kwargs["scale"] = scaled if config["use_scale"] else None
    if config["layout"] == "slowfast":
        if config["pool_size"] is None:
            kwargs["sub_sample"] = False
        else:
            kwargs["pool_size"] = tuple(config["pool_size"])
    return kwargs


def _params() -> list[Any]:
    if not all((GOLDEN / f"{name}.pt").is_file() for name in FILES):
        return [pytest.param(None, id="golden-missing")]
    out = []
    for name in FILES:
        for index, case in enumerate(torch.load(GOLDEN / f"{name}.pt", weights_only=True)):
            out.append(pytest.param((name, index, case), id=case_id(case["config"])))
    return out


PARAMS = _params()


def test_case_count() -> None:
    require_golden()
    assert len(PARAMS) == NUM_CASES
    assert len({p.id for p in PARAMS}) == NUM_CASES  # ids are unique


@pytest.mark.parametrize("golden", PARAMS)
def test_matches_reference_outputs(golden: Any) -> None:
    require_golden()
    layout, _, case = golden
    kwargs = reference_kwargs(case["config"])
    block = from_reference(case["state_dict"], layout, **kwargs).double().eval()
    with torch.no_grad():
        out = block(case["x"])
    err = (out - case["out_eval"]).abs().max().item()
    assert err <= ATOL, f"eval: max abs error {err:.3e}"

    block = from_reference(case["state_dict"], layout, **kwargs).double().train()
    with torch.no_grad():
        out = block(case["x"])
    err = (out - case["out_train"]).abs().max().item()
    assert err <= ATOL, f"train: max abs error {err:.3e}"


@pytest.mark.parametrize("golden", PARAMS)
def test_round_trip_is_exact(golden: Any) -> None:
    require_golden()
    layout, _, case = golden
    state = case["state_dict"]
    back = to_reference(from_reference(state, layout, **reference_kwargs(case["config"])), layout)
    assert list(back) == list(state)  # same keys, in the reference's registration order
    for key, value in state.items():
        assert back[key].dtype == value.dtype, key
        assert back[key].shape == value.shape, key
        assert torch.equal(back[key], value), key
