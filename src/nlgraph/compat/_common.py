"""Machinery shared by the layout converters: key maps, checks, error messages, the public API.

Each layout module (``alexhex7``, ``mmcv``, ``timm``, ``slowfast``, ``caffe2``) describes its
state_dict as a *key map* ``{reference key: nlgraph key}`` for a given :class:`Structure` (what
the keys encode: mode, sub-sampling, norm, W_z bias) and calls :func:`load_block` /
:func:`dump_block`, which do the checking, the error messages and the copying.

The converters know the blocks only through :class:`NonLocalBlockLike`, the attributes and
methods they read, and build them through the classes that :mod:`nlgraph.nn` registers with
:func:`register_block_classes` when it is imported: ``nlgraph.nn`` imports this package, never
the other way round.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from importlib import import_module
from typing import Any, ClassVar, Protocol, cast, runtime_checkable

import torch
from torch import Tensor, nn

from .._validate import check_choice, resolve_flag
from .presets import PRESETS, check_layout_support, preset_kwargs

__all__ = [
    "LAYOUTS",
    "NonLocalBlockLike",
    "from_reference",
    "nested_sub_sample",
    "pooled_key_map",
    "register_block_classes",
    "to_reference",
]

#: The public layouts, in the order of the docs.
LAYOUTS: tuple[str, ...] = ("alexhex7", "mmcv", "timm", "slowfast", "caffe2")


@runtime_checkable
class NonLocalBlockLike(Protocol):
    """What the converters read of a non-local block (``nlgraph.nn.NonLocalBlockNd`` has it):
    its class's ``dims`` and ``default_pool_size``, its options, its 1x1 convolutions ``g`` and
    ``w_z``, its ``norm`` and ``latent_proj`` (or ``None``) and its state_dict."""

    dims: ClassVar[int]
    default_pool_size: ClassVar[tuple[int, ...]]
    in_channels: int
    inter_channels: int
    mode: str
    sub_sample: bool
    pool_size: tuple[int, ...]
    pool_placement: str
    scale: str | float | None
    scale_factor: float
    out_bias: bool

    @property
    def g(self) -> nn.Module:
        """The value projection, a 1x1 ConvNd(C, C')."""
        ...

    @property
    def w_z(self) -> nn.Module:
        """The output projection W_z, a 1x1 ConvNd(C', C)."""
        ...

    @property
    def norm(self) -> nn.Module | None:
        """The BatchNorm after W_z, or ``None``."""
        ...

    @property
    def latent_proj(self) -> nn.Module | None:
        """The latent-node projection of ``latent=Latent(M)``, or ``None``."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The block's tensors by nlgraph key (``torch.nn.Module.state_dict``)."""
        ...

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> Any:
        """Load tensors by nlgraph key (``torch.nn.Module.load_state_dict``)."""
        ...


#: The block classes by dimensionality, and their base, registered by ``nlgraph.nn``.
_BLOCKS: dict[int, Any] = {}
_BASE: list[type] = []


def register_block_classes(base: type, classes: Mapping[int, Any]) -> None:
    """Register the block base class and the 1-D/2-D/3-D classes :func:`from_reference` builds
    (called once by :mod:`nlgraph.nn.nonlocal_block`)."""
    _BASE[:] = [base]
    _BLOCKS.update(classes)


def _block_class(dims: int) -> Any:
    if dims not in _BLOCKS:  # nlgraph/__init__ imports nlgraph.nn, which registers them
        raise RuntimeError("nlgraph.compat: no block classes registered; import nlgraph first")
    return _BLOCKS[dims]


#: nlgraph keys a reference state_dict may lack (then the block keeps its own value).
OPTIONAL = frozenset({"norm.num_batches_tracked"})
#: One key pattern per layout, to tell the user which layout a mismatching state_dict is.
_FINGERPRINTS = {
    "alexhex7": re.compile(r"(^|\.)W\.(0\.)?weight$"),
    "mmcv": re.compile(r"(^|\.)(g|conv_out)(\.0)?\.conv\.weight$"),
    "timm": re.compile(r"(^|\.)[tpz]\.weight$"),
    "slowfast": re.compile(r"(^|\.)conv_(theta|phi|g|out)\.weight$"),
    "caffe2": re.compile(r"_(theta|phi|g|out)_w$"),
}

KeyMap = dict[str, str]


@dataclass(frozen=True)
class Structure:
    """What a reference state_dict's key set encodes (``mode`` None: not given, to be inferred
    from the keys by :func:`load_block`)."""

    mode: str | None
    sub_sample: bool
    norm: bool
    out_bias: bool

    def describe(self) -> str:
        norm = "'batch'" if self.norm else "None"
        return f"mode {self.mode!r}, sub_sample={self.sub_sample}, norm={norm}"


@dataclass(frozen=True)
class Request:
    """The arguments of a :func:`from_reference` call, as the layout modules receive them."""

    state_dict: Any
    dims: int | None
    mode: str | None
    sub_sample: bool | None
    prefix: str | None
    overrides: dict[str, Any]


def conv_keys(ref: str, ours: str, bias: bool = True) -> KeyMap:
    """Key map of one conv: ``ref.weight`` (and ``ref.bias``) -> ``ours.weight`` (``ours.bias``)."""
    keys = {f"{ref}.weight": f"{ours}.weight"}
    if bias:
        keys[f"{ref}.bias"] = f"{ours}.bias"
    return keys


def norm_keys(ref: str) -> KeyMap:
    """Key map of a PyTorch BatchNorm at ``ref`` -> nlgraph's ``norm``."""
    names = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    return {f"{ref}.{n}": f"norm.{n}" for n in names}


def check_mapping(state_dict: Any) -> None:
    """``TypeError`` unless ``state_dict`` is a mapping."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"state_dict: expected a mapping of names to tensors, got {type(state_dict).__name__}"
        )


def tensors_of(
    state_dict: Any,
    prefix: str | None = None,
    convert: Callable[[str, Any], Any] | None = None,
) -> dict[str, Tensor]:
    """``state_dict`` as a plain dict of tensors, restricted to module path ``prefix`` (stripped;
    every entry when ``prefix`` is None); ``TypeError`` naming the first non-tensor value."""
    check_mapping(state_dict)
    for key in state_dict:
        if not isinstance(key, str):
            raise TypeError(f"state_dict: expected str keys, got {type(key).__name__} {key!r}")
    if prefix is not None:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix: expected None or a str, got {type(prefix).__name__}")
        head = prefix.rstrip(".") + "."
        state_dict = {k[len(head) :]: v for k, v in state_dict.items() if k.startswith(head)}
        if not state_dict:
            raise ValueError(f"prefix: no key of state_dict starts with {head!r}")
    out = {}
    for key, value in state_dict.items():
        value = convert(key, value) if convert is not None else value
        if not isinstance(value, Tensor):
            raise TypeError(
                f"state_dict[{key!r}]: expected a torch.Tensor, got {type(value).__name__}"
            )
        out[key] = value
    return out


def pooled_key_map(s: Structure, conv: str, w_z: str, norm: str, concat: str) -> KeyMap:
    """Key map of AlexHex7's and mmcv's module tree, in their registration order: g (wrapped in
    ``Sequential(conv, pool)`` when sub-sampling: ``g.0``), W_z at ``w_z``, its norm at ``norm``,
    theta, phi (wrapped like g) and the concatenation weight at ``concat``; ``conv`` is the
    path of a conv inside its module (``""`` or ``".conv"``)."""
    wrap = ".0" if s.sub_sample else ""
    kmap = conv_keys(f"g{wrap}{conv}", "g") | conv_keys(w_z, "w_z", bias=s.out_bias)
    if s.norm:
        kmap |= norm_keys(norm)
    if s.mode != "gaussian":
        kmap |= conv_keys(f"theta{conv}", "theta")
        kmap |= conv_keys(f"phi{wrap}{conv}", "phi")
    if s.mode == "concatenation":
        kmap[concat] = "concat_project.weight"
    return kmap


def nested_sub_sample(keys: Any, given: bool | None, default: bool) -> bool:
    """sub_sample as recorded by AlexHex7/mmcv keys: g and phi become ``Sequential(conv, pool)``
    (keys ``g.0.*``, ``phi.0.*``) when sub-sampling; ``default`` when neither key is present."""
    heads = [k.split(".", 2)[:2] for k in keys if k.split(".", 1)[0] in ("g", "phi")]
    encoded = any(len(h) > 1 and h[1] == "0" for h in heads) if heads else None
    why = (
        "the keys 'g.0.*'/'phi.0.*' hold a pooled Sequential"
        if encoded
        else "the keys of g/phi are not wrapped in a pooled Sequential 'g.0.*'"
    )
    return bool(resolve_flag("sub_sample", given, encoded, default, why))


def add_prefix(state: dict[str, Tensor], prefix: str | None) -> dict[str, Tensor]:
    """Prepend module path ``prefix`` to every key (inverse of :func:`tensors_of`'s ``prefix``)."""
    if prefix is None:
        return state
    head = prefix.rstrip(".") + "."
    return {head + k: v for k, v in state.items()}


def pin(overrides: dict[str, Any], name: str, value: Any, why: str) -> None:
    """Set ``overrides[name] = value`` (inferred from the weights) unless the user contradicts it."""
    if name in overrides and overrides[name] != value:
        raise ValueError(f"{name}: expected {value!r} ({why}), got {overrides[name]!r}")
    overrides[name] = value


def looks_like(keys: Any, layout: str) -> str:
    """A hint naming the layout ``keys`` look like, when it is not ``layout`` ('' if unknown)."""

    def hits(name: str) -> bool:
        return any(isinstance(k, str) and _FINGERPRINTS[name].search(k) for k in keys)

    if hits(layout):
        return ""
    others = [name for name in LAYOUTS if name != layout and hits(name)]
    return f"; it looks like layout {others[0]!r}" if others else ""


def _ref_shape(ours: str, t: Tensor) -> tuple[int, ...]:
    # References store the concatenation projection as a 1x1 Conv2d (1, 2C', 1, 1).
    return (1, t.shape[1], 1, 1) if ours == "concat_project.weight" else tuple(t.shape)


def _missing(kmap: KeyMap, keys: Any) -> list[str]:
    return [k for k, ours in kmap.items() if k not in keys and ours not in OPTIONAL]


def _mismatch(
    layout: str,
    keys: list[str],
    key_map: Callable[[Structure], KeyMap],
    structure: Structure,
    wrong: list[str],
) -> ValueError:
    kmap = key_map(structure)
    missing, unexpected = _missing(kmap, keys), [k for k in keys if k not in kmap]
    hint = looks_like(keys, layout)
    if not hint:  # the right layout: perhaps another mode fits the keys
        for mode in PRESETS[layout][2]:
            other = key_map(replace(structure, mode=mode))
            if mode != structure.mode and set(keys) <= set(other) and not _missing(other, keys):
                hint = f"; the keys match mode {mode!r}"
                break
    lines = [
        f"state_dict: expected the keys of layout {layout!r} ({structure.describe()}), "
        f"got keys that do not match{hint}"
    ]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            lines.append(f"  {label}: [{', '.join(items)}]")
    return ValueError("\n".join(lines))


#: Layouts whose embedded-Gaussian temperature is a constructor flag that their state_dicts do
#: not record: flag name, the preset's assumption, how to say otherwise.
_SCALE_FLAGS: dict[str, tuple[str, str, str]] = {
    "mmcv": ("use_scale", "use_scale=True (scale='inner', logits / sqrt(C'))", "scale='inner'"),
    "timm": ("use_scale", "use_scale=True (scale='input', logits / sqrt(C))", "scale='input'"),
}


def _warn_scale(layout: str) -> None:
    """Warn that ``layout``'s softmax temperature was assumed (a flag its keys do not record)."""
    if layout not in _SCALE_FLAGS:
        return  # a fixed temperature (AlexHex7: none; SlowFast, Caffe2: C'^-1/2)
    flag, assumed, confirm = _SCALE_FLAGS[layout]
    warnings.warn(
        f"scale: a {layout} state_dict does not record {flag}; assumed {assumed}, the "
        f"reference's default. Pass {confirm} to confirm, or scale=None for {flag}=False (the "
        "two give different outputs from the same weights).",
        UserWarning,
        stacklevel=4,
    )


def _infer_mode(
    layout: str, keys: list[str], key_map: Callable[[Structure], KeyMap], structure: Structure
) -> str:
    """The pairwise mode of a state_dict, from its keys where they tell it.

    The keys give the concatenation (its projection) and the Gaussian (no θ/φ) modes away; the
    embedded Gaussian and the dot product have the same keys: then the embedded Gaussian (every
    layout's default) is assumed with a ``UserWarning``. Keys that fit no mode give the default,
    so that loading reports the mismatch.
    """
    modes = PRESETS[layout][2]
    fits = []
    for mode in modes:
        kmap = key_map(replace(structure, mode=mode))
        if set(keys) <= set(kmap) and not _missing(kmap, keys):
            fits.append(mode)
    default = "embedded_gaussian" if "embedded_gaussian" in modes else modes[0]
    if len(fits) == 1:
        return fits[0]
    if len(fits) > 1:
        chosen = default if default in fits else fits[0]
        warnings.warn(
            f"mode: the keys of this {layout} state_dict fit the modes "
            f"{', '.join(repr(m) for m in fits)} (the same weights, different outputs); loaded as "
            f"{chosen!r}. Pass mode=... to choose.",
            UserWarning,
            stacklevel=4,
        )
        return chosen
    return default


def load_block(
    layout: str,
    tensors: dict[str, Tensor],
    key_map: Callable[[Structure], KeyMap],
    structure: Structure,
    request: Request,
) -> NonLocalBlockLike:
    """Build the ``layout`` block for ``structure`` and load ``tensors`` into it exactly.

    The widths, the dimensionality, the dtype and the device come from the g weight; the keys
    and shapes must be exactly those of ``key_map(structure)`` (``num_batches_tracked`` may be
    absent), else a ``ValueError`` lists every missing, unexpected and wrongly shaped key.
    """
    keys = list(tensors)
    if structure.mode is None:
        structure = replace(structure, mode=_infer_mode(layout, keys, key_map, structure))
    mode = cast(str, structure.mode)
    if mode == "embedded_gaussian" and "scale" not in request.overrides:
        _warn_scale(layout)
    kmap = key_map(structure)
    g_key = next(k for k, ours in kmap.items() if ours == "g.weight")
    g_w = tensors.get(g_key)
    if g_w is None:
        raise _mismatch(layout, keys, key_map, structure, [])
    if g_w.dim() not in (3, 4, 5):
        raise ValueError(
            f"state_dict[{g_key!r}]: expected a 1x1 conv weight (out, in, 1[, 1[, 1]]) of rank "
            f"3, 4 or 5, got shape {tuple(g_w.shape)}"
        )
    rank_dims = g_w.dim() - 2
    dims = rank_dims if request.dims is None else request.dims
    check_choice("dims", dims, (1, 2, 3))
    check_layout_support(layout, dims, mode)
    if dims != rank_dims:
        raise ValueError(
            f"dims: expected {rank_dims} (the state_dict holds rank-{g_w.dim()} conv weights), "
            f"got {dims}"
        )
    inner, c = int(g_w.shape[0]), int(g_w.shape[1])
    overrides = {"dtype": g_w.dtype, "device": g_w.device, **request.overrides}
    pin(overrides, "inter_channels", inner, f"the width of {g_key!r}")
    pin(overrides, "norm", "batch" if structure.norm else None, f"the keys of layout {layout!r}")
    pin(overrides, "out_bias", structure.out_bias, f"the keys of layout {layout!r}")
    overrides.update(mode=structure.mode, sub_sample=structure.sub_sample)
    block = _block_class(dims)(c, **preset_kwargs(layout, c, dims, overrides))
    ours = block.state_dict()
    shapes = {
        r: (_ref_shape(n, ours[n]), tuple(tensors[r].shape))
        for r, n in kmap.items()
        if r in tensors
    }
    wrong = [f"{r}: expected {want}, got {got}" for r, (want, got) in shapes.items() if want != got]
    if wrong or _missing(kmap, tensors) or any(k not in kmap for k in keys):
        raise _mismatch(layout, keys, key_map, structure, wrong)
    new = {name: tensors[r].reshape(ours[name].shape) for r, name in kmap.items() if r in tensors}
    block.load_state_dict({**ours, **new})
    return block


def dump_block(block: NonLocalBlockLike, kmap: KeyMap) -> dict[str, Tensor]:
    """``block``'s tensors under the reference keys of ``kmap`` (copies; a W_z bias the block
    lacks is written as zeros)."""
    ours = block.state_dict()
    out = {}
    for ref, name in kmap.items():
        if name in ours:
            t = ours[name].detach().clone()
        elif name == "w_z.bias":
            w = cast(Tensor, block.w_z.weight)
            t = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        else:
            continue
        out[ref] = t.reshape(_ref_shape(name, t))
    return out


def check_block(
    block: Any,
    layout: str,
    *,
    placement: str | None,
    pool_size: tuple[int, ...] | str | None,
    scales: dict[str, float],
    norm_required: bool,
) -> None:
    """``ValueError`` unless ``layout`` can express ``block``'s configuration.

    Args:
        placement: the pool placement the layout uses when sub-sampling (None: no sub-sampling).
        pool_size: the only pool window the layout has (None: any; ``"default"``: the block
            class's default, i.e. AlexHex7's and mmcv's fixed windows).
        scales: the embedded-Gaussian temperatures the layout has, name -> factor.
        norm_required: the layout always has a BatchNorm after W_z.
    """
    check_layout_support(layout, block.dims, block.mode)
    if pool_size == "default":
        pool_size = block.default_pool_size

    def fail(expected: str, got: str) -> None:
        raise ValueError(f"block: expected {expected} for layout {layout!r}, got {got}")

    if block.sub_sample:
        if placement is None:
            fail("sub_sample=False (it never sub-samples)", "sub_sample=True")
        if block.pool_placement != placement:
            fail(f"pool_placement {placement!r}", repr(block.pool_placement))
        if pool_size is not None and block.pool_size != pool_size:
            fail(f"pool_size {pool_size}", str(block.pool_size))
    if block.mode == "embedded_gaussian" and block.scale_factor not in scales.values():
        names = " or ".join(scales)
        fail(f"scale {names}", f"{block.scale!r} (factor {block.scale_factor})")
    if norm_required and block.norm is None:
        fail("norm='batch' (it always has a BatchNorm after W_z)", "norm=None")


def inner_scales(block: Any, none: bool = True) -> dict[str, float]:
    """``{"None": 1.0, "'inner'": C'^-1/2}`` for ``block`` (without "None" if ``none`` is False)."""
    return ({"None": 1.0} if none else {}) | {"'inner'": block.inter_channels**-0.5}


def from_reference(
    state_dict: Mapping[str, Any],
    layout: str,
    *,
    dims: int | None = None,
    mode: str | None = None,
    sub_sample: bool | None = None,
    prefix: str | None = None,
    **overrides: Any,
) -> NonLocalBlockLike:
    r"""A non-local block holding the weights of a public implementation, with its semantics.

    The block is built from the layout's preset (:mod:`nlgraph.nn.presets`, same names), with
    C and C' read from the weights, and reproduces the reference's outputs (eval and train).

    Layouts (reference keys; what they record besides C and C'):

    - ``alexhex7``: ``g[.0]``, ``W`` or ``W.0``/``W.1``, ``theta``, ``phi[.0]``,
      ``concat_project.0``; sub_sample (``g.0.*``) and norm (``W.1.*``).
    - ``mmcv``: ``g[.0].conv``, ``conv_out.conv``, ``conv_out.bn``, ``theta.conv``,
      ``phi[.0].conv``, ``concat_project.conv``; sub_sample and norm (``conv_out.bn.*``).
    - ``timm`` (2-D only): ``t``, ``p``, ``g``, ``z``, ``norm``.
    - ``slowfast`` (3-D only): ``conv_{theta,phi,g,out}``, ``bn``; pooling is an argument.
    - ``caffe2`` (3-D only): ``<prefix>_{theta,phi,g,out}_{w,b}``, ``<prefix>_bn_{s,b,rm,riv}``;
      norm (no ``_bn_*`` blobs: ``norm=None``).

    Semantics: AlexHex7 has no temperature; mmcv's default ``use_scale=True`` is
    ``scale="inner"`` (pass ``scale=None`` for ``use_scale=False``); timm uses
    ``scale="input"`` (``scale=None`` for ``use_scale=False``); SlowFast and Caffe2 pool the
    input before φ and g (default ``pool_size=(1, 2, 2)``; ``sub_sample=False`` for no pooling)
    and scale the softmax logits by :math:`C'^{-1/2}`. Caffe2 blobs may be numpy arrays;
    ``norm_eps`` defaults to Caffe2's 1.0000001e-5. What the keys do not record is assumed
    with a ``UserWarning`` rather than silently: mmcv's and timm's ``use_scale`` (an
    embedded-Gaussian load without ``scale=`` warns) and the choice between the embedded
    Gaussian and the dot product (``mode=None`` with θ/φ keys warns).

    Args:
        state_dict (Mapping[str, Tensor]): the reference module's state_dict (``caffe2``: the
            blob dict, or the pickle's dict holding it under ``"blobs"``).
        layout (str): one of :data:`LAYOUTS`.
        dims (int, optional): 1, 2 or 3. (default: the conv weights' rank minus 2)
        mode (str, optional): the pairwise function. ``None``: read from the keys where they
            tell it (a concatenation projection: ``"concatenation"``; no θ/φ: ``"gaussian"``);
            the embedded Gaussian and the dot product have the same keys, so ``None`` then loads
            ``"embedded_gaussian"`` with a ``UserWarning`` (pass the mode to silence it).
            (default: ``None``)
        sub_sample (bool, optional): must agree with the keys where they encode it.
            (default: from the keys; ``True`` for slowfast/caffe2)
        prefix (str, optional): ``caffe2``: the blob prefix, e.g. ``"nonlocal_conv3_1"``
            (default: the only one present); other layouts: the block's module path in a
            larger state_dict, e.g. ``"layer3.1.nl"`` (keys outside it are ignored).
        **overrides: constructor arguments on top of the preset (``scale``, ``pool_size``,
            ``norm_eps``, ``dtype``, ``device``, ...). ``inter_channels``, ``norm`` and
            ``out_bias`` must agree with the weights. (default dtype/device: the weights')

    Returns:
        NonLocalBlock1d, NonLocalBlock2d or NonLocalBlock3d.

    Raises:
        ValueError: an unknown layout, dims or mode the layout lacks, a ``sub_sample`` or
            override that contradicts the weights, or keys that do not match (all missing,
            unexpected and wrongly shaped keys are listed, with the layout they look like).
        TypeError: a value that is not a tensor (numpy arrays too, for caffe2).
    """
    check_choice("layout", layout, LAYOUTS)
    modes = PRESETS[layout][2]
    if sub_sample is not None and not isinstance(sub_sample, bool):
        raise TypeError(f"sub_sample: expected None or a bool, got {type(sub_sample).__name__}")
    if mode is not None and not isinstance(mode, str):
        raise TypeError(f"mode: expected None or a str, got {type(mode).__name__}")
    if dims is not None:
        check_choice("dims", dims, (1, 2, 3))
        check_layout_support(layout, dims, modes[0] if mode is None else mode)
    elif mode is not None:
        check_choice(f"mode ({layout!r})", mode, modes)
    module = import_module(f"{__package__}.{layout}")
    return module.load(Request(state_dict, dims, mode, sub_sample, prefix, overrides))


def to_reference(
    block: NonLocalBlockLike, layout: str, *, prefix: str | None = None
) -> dict[str, Tensor]:
    """``block``'s weights as a state_dict of a public implementation (see
    :func:`from_reference`); ``from_reference`` then ``to_reference`` gives back the same keys,
    values and dtypes.

    Args:
        block (NonLocalBlock1d/2d/3d): the block.
        layout (str): one of :data:`LAYOUTS`.
        prefix (str, optional): ``caffe2``: the blob prefix (default: ``"nonlocal"``); other
            layouts: a module path prepended to every key (default: none).

    Returns:
        dict[str, Tensor]: copies of the tensors (tensors for ``caffe2`` too; use
        ``{k: v.numpy() for k, v in ...}`` for a Caffe2 blob dict).

    Raises:
        ValueError: the layout cannot express the block (e.g. timm: 2-D embedded Gaussian
            without sub-sampling; AlexHex7: no temperature; mmcv with a norm: no W_z bias;
            SlowFast/Caffe2: pooling before the projections, SlowFast: a BatchNorm; any
            layout: a ``graph=Latent(M)`` block).
    """
    check_choice("layout", layout, LAYOUTS)
    if not (_BASE and isinstance(block, _BASE[0])):
        raise TypeError(f"block: expected a NonLocalBlock1d/2d/3d, got {type(block).__name__}")
    if prefix is not None and not isinstance(prefix, str):
        raise TypeError(f"prefix: expected None or a str, got {type(prefix).__name__} {prefix!r}")
    if getattr(block, "latent_proj", None) is not None:
        raise ValueError(
            f"block: layout {layout!r} cannot express latent=Latent(...) (its latent projection "
            "has no counterpart in any public non-local block)"
        )
    return import_module(f"{__package__}.{layout}").dump(block, prefix)
