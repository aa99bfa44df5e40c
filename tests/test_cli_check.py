"""Tests of ``nlgraph check``: a checkpoint imported with from_reference, compared with the real
mmcv module where installed, the round trip and the naive block; exit codes 0, 1 and 2."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

import nlgraph._check
from nlgraph import NonLocalBlock2d, NonLocalBlock3d, cli
from tests.helpers import randomise_state_

NORMS = {1: "BN1d", 2: "BN", 3: "BN3d"}
SHAPES = {1: (9,), 2: (5, 7), 3: (3, 4, 5)}


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def mmcv_module(dims: int = 2, mode: str = "embedded_gaussian", **kwargs: Any) -> torch.nn.Module:
    """A real mmcv ``NonLocal{dims}d`` with random weights (skips without mmcv)."""
    mmcv_cnn = pytest.importorskip("mmcv.cnn")
    return randomise_state_(getattr(mmcv_cnn, f"NonLocal{dims}d")(16, mode=mode, **kwargs))


def rows(out: str) -> dict[str, list[str]]:
    """The comparison table: first cell -> the other cells."""
    table = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == 4 and cells[3] in ("PASS", "FAIL"):
            table[cells[0]] = cells[1:]
    return table


def assert_passed(out: str, layout: str = "mmcv") -> None:
    table = rows(out)
    for label, (diff, _, verdict) in table.items():
        assert verdict == "PASS", (label, diff)
    assert table[f"round trip: to_reference({layout!r}) == checkpoint"][0] == "0.00e+00"
    assert out.rstrip().endswith("check passed")


@pytest.mark.parametrize(
    ("dims", "mode", "sub_sample", "norm"),
    [(2, "embedded_gaussian", False, False), (1, "concatenation", True, True),
     (3, "gaussian", True, False), (2, "dot_product", True, True)],
    ids=["2d-eg", "1d-concat-sub-bn", "3d-gaussian-sub", "2d-dot-sub-bn"],
)  # fmt: skip
def test_check_matches_the_mmcv_module(capsys, tmp_path, dims, mode, sub_sample, norm):
    norm_cfg = {"type": NORMS[dims]} if norm else None
    module = mmcv_module(dims, mode, sub_sample=sub_sample, norm_cfg=norm_cfg)
    path = tmp_path / "mmcv.pt"
    torch.save(module.state_dict(), path)
    assert cli.main(["check", str(path), "--layout", "mmcv", "--mode", mode]) == 0
    out = capsys.readouterr().out
    assert_passed(out)
    diff, tolerance, _ = rows(out)["mmcv module, same weights: z vs z_ref"]
    assert float(diff) <= 1e-12 and tolerance == "1e-10"
    assert f"mmcv.cnn.NonLocal{dims}d(16, reduction=2, mode={mode!r}" in out
    assert f"block      : mode {mode!r}, C = 16, C' = 8, {dims}-D" in out  # dims from the rank
    assert "built      : NonLocalBlock" in out and "float64" in out


def test_check_notes_what_the_keys_do_not_record(capsys, tmp_path):
    """Without --mode and --scale, the mode and mmcv's use_scale are assumed, and said so."""
    path = tmp_path / "mmcv.pt"
    torch.save(mmcv_module().state_dict(), path)
    assert cli.main(["check", str(path), "--layout", "mmcv"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note")]
    assert any("loaded as 'embedded_gaussian'" in n for n in notes)
    assert any("does not record use_scale" in n for n in notes)


def test_check_without_use_scale(capsys, tmp_path):
    """--scale none: mmcv's use_scale=False; the default (use_scale=True) must then differ."""
    path = tmp_path / "mmcv.pt"
    torch.save(mmcv_module(use_scale=False).state_dict(), path)
    assert cli.main(["check", str(path), "--layout", "mmcv", "--scale", "none"]) == 0
    out = capsys.readouterr().out
    assert_passed(out)
    assert "use_scale=False" in out


def test_check_nested_state_dict_with_prefix(capsys, tmp_path):
    module = mmcv_module(sub_sample=True, norm_cfg={"type": "BN"})
    state = {f"backbone.layer3.nl.{k}": v for k, v in module.state_dict().items()}
    state["head.fc.weight"] = torch.randn(10, 16)
    path = tmp_path / "model.pth"
    torch.save({"state_dict": state, "meta": {"epoch": 12}, "optimizer": {}}, path)
    argv = ["check", str(path), "--layout", "mmcv", "--prefix", "backbone.layer3.nl"]
    assert cli.main([*argv, "--key", "state_dict", "--mode", "embedded_gaussian"]) == 0
    out = capsys.readouterr().out
    assert_passed(out)
    assert f"checkpoint : {path}['state_dict'], prefix 'backbone.layer3.nl' (12 tensors" in out
    assert float(rows(out)["mmcv module, same weights: z vs z_ref"][0]) <= 1e-12


def test_check_finds_the_only_nested_state_dict(capsys, tmp_path):
    module = mmcv_module()
    path = tmp_path / "model.pth"
    torch.save({"model": module.state_dict(), "epoch": 3}, path)
    assert cli.main(["check", str(path), "--layout", "mmcv", "--mode", "dot_product"]) == 0
    out = capsys.readouterr().out
    assert_passed(out)
    assert f"{path}['model']" in out


def test_check_without_the_reference_module_says_so(capsys, tmp_path):
    """SlowFast is not pip-installable: the output says its module was not compared and
    reports the round trip and the naive block instead."""
    block = randomise_state_(NonLocalBlock3d.from_preset("slowfast", 16))
    path = tmp_path / "slowfast.pt"
    torch.save(block.to_reference("slowfast"), path)
    assert cli.main(["check", str(path), "--layout", "slowfast", "--mode", "dot_product"]) == 0
    out = capsys.readouterr().out
    assert_passed(out, "slowfast")
    reference = next(line for line in out.splitlines() if line.startswith("reference"))
    assert "not installed" in reference and "not compared" in reference
    assert set(rows(out)) == {
        "round trip: to_reference('slowfast') == checkpoint",
        "naive block*: z vs z_naive",
    }
    assert float(rows(out)["naive block*: z vs z_naive"][0]) <= 1e-10


def test_check_fails_when_the_conversion_disagrees_with_mmcv(capsys, tmp_path, monkeypatch):
    """A converter that swaps θ and φ still round-trips exactly (the same map both ways) and
    agrees with the naive block built from it, but not with mmcv: exit 1."""
    from nlgraph.compat import mmcv as mmcv_layout

    original = mmcv_layout.key_map

    def swapped(structure: Any) -> dict[str, str]:
        swap = {"theta": "phi", "phi": "theta"}
        out = {}
        for ref, ours in original(structure).items():
            head, dot, tail = ours.partition(".")
            out[ref] = swap.get(head, head) + dot + tail
        return out

    path = tmp_path / "mmcv.pt"
    torch.save(mmcv_module().state_dict(), path)
    monkeypatch.setattr(mmcv_layout, "key_map", swapped)
    assert cli.main(["check", str(path), "--layout", "mmcv", "--mode", "embedded_gaussian"]) == 1
    out = capsys.readouterr().out
    table = rows(out)
    assert table["mmcv module, same weights: z vs z_ref"][2] == "FAIL"
    assert float(table["mmcv module, same weights: z vs z_ref"][0]) > 1e-3
    assert table["round trip: to_reference('mmcv') == checkpoint"][2] == "PASS"
    assert "check FAILED: mmcv module" in out


def test_check_fails_above_the_tolerance(capsys, tmp_path, monkeypatch):
    block = randomise_state_(NonLocalBlock2d.from_preset("alexhex7", 16))
    path = tmp_path / "alexhex7.pt"
    torch.save(block.to_reference("alexhex7"), path)
    monkeypatch.setattr(nlgraph._check, "CHECK_ATOL", -1.0)
    assert cli.main(["check", str(path), "--layout", "alexhex7"]) == 1
    out = capsys.readouterr().out
    assert "check FAILED: naive block*" in out and "not a pip package" in out


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """An mmcv-layout state_dict written by nlgraph (no mmcv needed)."""
    path = tmp_path / "nl.pt"
    block = randomise_state_(NonLocalBlock2d.from_preset("mmcv", 16, sub_sample=True))
    torch.save({"state_dict": block.to_reference("mmcv"), "epoch": 1}, path)
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.pt", "--layout", "mmcv"], "CHECKPOINT: expected an existing file, got"),
        (["{ckpt}", "--layout", "mmvc"], "--layout: expected one of 'alexhex7', 'mmcv', "),
        (["{ckpt}", "--layout", "slowfast"],
         "CHECKPOINT: expected the keys of layout 'slowfast' (mode 'embedded_gaussian', "
         "sub_sample=True, norm='batch'), got keys that do not match; it looks like layout "
         "'mmcv'; missing: [conv_theta.weight"),
        (["{ckpt}", "--layout", "mmcv", "--mode", "concatenation"],
         "the keys match mode 'embedded_gaussian'"),
        (["{ckpt}", "--layout", "mmcv", "--mode", "bogus"], "--mode ('mmcv'): expected one of"),
        (["{ckpt}", "--layout", "mmcv", "--key", "model"], "--key: expected one of ['state_dict']"),
        (["{ckpt}", "--layout", "mmcv", "--prefix", "backbone"],
         "--prefix: no key of state_dict starts with 'backbone.'"),
        (["{ckpt}", "--layout", "mmcv", "--dims", "3"], "--dims: expected 2 (the state_dict"),
        (["{ckpt}", "--layout", "mmcv", "--dims", "4"], "--dims: expected one of 1, 2, 3, got 4"),
        (["{ckpt}", "--layout", "mmcv", "--scale", "input"],
         "--scale: expected scale None or 'inner' for layout 'mmcv', got 'input'"),
        (["{ckpt}", "--layout", "mmcv", "--scale", "big"], "--scale: expected one of inner, "),
        (["{ckpt}", "--layout", "mmcv", "--size", "1"], "--size: expected an int >= 2"),
        (["{ckpt}", "--layout", "mmcv", "--bogus"], "unrecognized arguments: --bogus"),
        (["{ckpt}"], "the following arguments are required: --layout"),
    ],
)  # fmt: skip
def test_check_bad_arguments_exit_2_with_the_check_usage(capsys, checkpoint, args, message):
    argv = ["check", *(a.replace("{ckpt}", str(checkpoint)) for a in args)]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing printed before the error
    assert captured.err.startswith("usage: nlgraph check")
    error = captured.err.splitlines()[-1]
    assert error.startswith("nlgraph check: error: ") and message in error, error
    assert len([line for line in captured.err.splitlines() if "error" in line]) == 1


def test_check_unreadable_file(capsys, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["check", str(path), "--layout", "mmcv"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "CHECKPOINT: expected a file that torch.load(weights_only=True) reads" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_check_cuda_without_cuda(capsys, checkpoint):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["check", str(checkpoint), "--layout", "mmcv", "--device", "cuda"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--device: expected cpu (no CUDA device is available here), got 'cuda'" in err


def test_check_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["check", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("CHECKPOINT", "--layout", "--dims", "--mode", "--prefix", "--key", "--scale",
                 "--device", "--seed", "--size", "slowfast", "caffe2"):  # fmt: skip
        assert flag in out, flag
    assert re.search(r"Exit 0: all pass", " ".join(out.split()))
