"""A griffe extension for the docs site: nlgraph's docstrings use a little reST inside the
Google style (as PyTorch and PyG do); this turns it into the Markdown mkdocstrings renders.

- ``.. math::`` blocks become ``$$ ... $$`` and :math:`x` becomes ``$x$`` (MathJax through
  ``pymdownx.arithmatex``);
- cross-reference roles (:class:`~nlgraph.Attention`, :func:`.knn`, :meth:`to_dense`...) become
  autorefs links when the target is a documented nlgraph object (resolved absolutely, then
  relative to the object's own module and class), plain code otherwise (torch, PyG...); a role
  naming an ``nlgraph`` target that does not exist is a warning, so ``mkdocs build --strict``
  fails on a stale reference;
- double-backquote literals become single-backquote code; reST simple tables become Markdown
  tables.

Only the docs build loads this module (mkdocs.yml, ``extensions:``); the package never does.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

import griffe

_logger = griffe.get_logger("nlgraph.docs")

_ROLE_RE = re.compile(r":(math|class|func|meth|mod|attr|data|obj|exc):`([^`]+)`")
_RULE_RE = re.compile(r"^\s*=+( +=+)+\s*$")


def _lookup(root: griffe.Object, path: str, depth: int = 0) -> griffe.Object | None:
    """The object at dotted ``path`` under ``root``, aliases followed to their targets (without
    griffe's own resolution, which would try to load torch)."""
    parts = path.split(".")
    if parts[0] != root.name or depth > 10:
        return None
    found: griffe.Object | griffe.Alias = root
    for i, part in enumerate(parts[1:], start=1):
        if found.is_alias:
            target = _lookup(root, found.target_path, depth + 1)
            if target is None:
                return None
            found = target
        member = found.members.get(part)
        if member is None:
            return None
        found = member
        if i == len(parts) - 1 and found.is_alias:
            return _lookup(root, found.target_path, depth + 1)
    return found  # type: ignore[return-value]


#: The modules the API pages render (docs/api/*.md), most specific first: an object exported
#: by several is linked to its first one, under its public name (``nlgraph.nn.NonLocalConv``).
DOCUMENTED = (
    "nlgraph.nn",
    "nlgraph.graphs",
    "nlgraph.nodes",
    "nlgraph.transforms",
    "nlgraph.ops",
    "nlgraph.pairwise",
    "nlgraph.compat",
    "nlgraph.attention",
    "nlgraph.viz",
    "nlgraph",
)


def public_names(root: griffe.Object) -> dict[str, str]:
    """Canonical path -> the public path the API pages render it under, for every name in the
    ``__all__`` of a documented module (and the documented modules themselves)."""
    public: dict[str, str] = {}
    for module_path in DOCUMENTED:
        module = _lookup(root, module_path)
        if module is None:
            continue
        public.setdefault(module.path, module_path)
        for name in module.exports or ():
            target = _lookup(root, f"{module_path}.{name}")
            if target is not None:
                public.setdefault(target.path, f"{module_path}.{name}")
    return public


def _resolve(
    root: griffe.Object, public: dict[str, str], obj: griffe.Object, target: str
) -> tuple[bool, str | None]:
    """Whether ``target``, seen from ``obj``, is an nlgraph object, and its public path when the
    API pages render it (a documented name or a member of one)."""
    target = target.lstrip(".")
    scopes: list[griffe.Object] = []
    scope: griffe.Object | None = obj
    while scope is not None:
        scopes.append(scope)
        scope = scope.parent
    for path in [target] + [f"{s.path}.{target}" for s in scopes]:
        found = _lookup(root, path)
        if found is None:
            continue
        canonical = found.path
        if canonical in public:
            return True, public[canonical]
        owner, member = found.parent, found.name
        if owner is not None and owner.is_class and owner.path in public:
            if not member.startswith("_"):  # a method or attribute of a documented class
                return True, f"{public[owner.path]}.{member}"
        return True, None
    return False, None


def _roles(text: str, root: griffe.Object, public: dict[str, str], obj: griffe.Object) -> str:
    def sub(match: re.Match[str]) -> str:
        role, body = match[1], match[2]
        if role == "math":
            return f"${body.strip()}$"
        title_match = re.match(r"^(.*?)\s*<(.+)>$", body)  # :class:`text <target>`
        title, target = (title_match[1], title_match[2]) if title_match else (None, body)
        short = target.startswith("~")
        target = target.lstrip("~").rstrip("()")
        shown = title or (target.rsplit(".", 1)[-1] if short else target.lstrip("."))
        if role in ("func", "meth"):
            shown = shown if shown.endswith(")") or title else f"{shown}()"
        exists, path = _resolve(root, public, obj, target)
        if path is None:
            if not exists and (target.startswith(f"{root.name}.") or target == root.name):
                _logger.warning(f"{obj.path}: the reference :{role}:`{body}` names no object")
            return f"`{shown}`"
        return f"[`{shown}`][{path}]"

    return _ROLE_RE.sub(sub, text)


def _table(rows: list[str]) -> list[str]:
    """A reST simple table (``===`` rules; the first block is the header) as Markdown."""
    rule = next(r for r in rows if _RULE_RE.match(r))
    spans = [m.span() for m in re.finditer(r"=+", rule)]
    spans = [(a, spans[i + 1][0] if i + 1 < len(spans) else None) for i, (a, _) in enumerate(spans)]
    body = [r for r in rows if not _RULE_RE.match(r)]
    cells = []
    for r in body:  # cells are 2+ spaces apart; slice by the rule's columns when that fails
        parts = re.split(r"\s{2,}", r.strip())
        if len(parts) != len(spans):
            parts = [r[a:b].strip() if b else r[a:].strip() for a, b in spans]
        cells.append(parts)
    # A "|" inside math becomes \vert (an escaped "\|" would reach MathJax as a double bar).
    math_bar = [
        [re.sub(r":math:`[^`]*`", lambda m: m[0].replace("|", "\\vert "), c) for c in row]
        for row in cells
    ]
    escape = [[c.replace("|", "\\|") for c in row] for row in math_bar]
    lines = ["| " + " | ".join(escape[0]) + " |", "|" + "---|" * len(spans)]
    return lines + ["| " + " | ".join(row) + " |" for row in escape[1:]]


def rest_to_markdown(
    text: str, root: griffe.Object, public: dict[str, str], obj: griffe.Object
) -> str:
    """Convert the reST parts of one docstring (see the module docstring) to Markdown."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line, stripped = lines[i], lines[i].strip()
        indent = line[: len(line) - len(line.lstrip())]
        if stripped.startswith(".. math::"):
            math = [stripped[len(".. math::") :].strip()]
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(indent + " ")):
                math.append(lines[i].strip())
                i += 1
            body = "\n".join(m for m in math if m)
            out += ["", f"{indent}$$", *[f"{indent}{m}" for m in body.splitlines()], f"{indent}$$"]
            out.append("")
            continue
        if _RULE_RE.match(line):
            rows = []
            while i < len(lines) and lines[i].strip():
                rows.append(lines[i][len(indent) :])
                i += 1
            table = [_roles(r, root, public, obj).replace("``", "`") for r in _table(rows)]
            out += ["", *[indent + r for r in table], ""]
            continue
        out.append(_roles(line, root, public, obj).replace("``", "`"))
        i += 1
    return "\n".join(out)


def _comment_doc(obj: griffe.Object) -> str:
    """The ``#:`` comment lines right above an attribute's assignment (Sphinx's convention for
    documenting data, which griffe does not read)."""
    if obj.lineno is None or obj.filepath is None or isinstance(obj.filepath, list):
        return ""
    lines = obj.filepath.read_text(encoding="utf-8").splitlines()
    doc, i = [], obj.lineno - 1
    while i > 0 and lines[i - 1].lstrip().startswith("#:"):
        i -= 1
        doc.insert(0, lines[i].lstrip()[2:].strip())
    return " ".join(doc)


def _runtime_doc(obj: griffe.Object) -> str:
    """The docstring Python sees, for a class or function whose ``__doc__`` is built at import
    time (``NonLocalBlock2d`` extends its base's docstring), which static analysis misses."""
    try:
        value: Any = importlib.import_module(obj.module.path)
        for part in obj.path[len(obj.module.path) + 1 :].split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError):
        return ""
    return inspect.cleandoc(getattr(value, "__doc__", None) or "")


def fill_docstring(obj: griffe.Object, loader: Any = None) -> None:
    """Give ``obj`` the documentation that static analysis missed: the ``#:`` comment of data,
    the runtime ``__doc__`` of a class or function."""
    if obj.docstring is not None:
        return
    if obj.is_attribute:
        text = _comment_doc(obj)
    elif obj.is_class or obj.is_function:
        text = _runtime_doc(obj)
        if (
            obj.is_class
            and text
            and any(
                text == inspect.cleandoc(base.docstring.value)
                for base in _bases(obj)
                if base.docstring is not None
            )
        ):
            text = ""  # inherited unchanged: no docstring of its own
    else:
        text = ""
    if text:
        obj.docstring = griffe.Docstring(
            text,
            parent=obj,
            parser=getattr(loader, "docstring_parser", None),
            parser_options=getattr(loader, "docstring_options", None),
        )


def _bases(obj: griffe.Object) -> list[griffe.Object]:
    try:
        return [b for b in obj.mro() if isinstance(b, griffe.Object)]  # type: ignore[attr-defined]
    except Exception:
        return []


class RestToMarkdown(griffe.Extension):
    """Rewrite every docstring of the loaded package once it is fully loaded."""

    def on_package(self, *, pkg: griffe.Module, loader: Any = None, **kwargs: Any) -> None:  # noqa: D102
        seen: set[str] = set()
        public = public_names(pkg)

        def walk(obj: griffe.Object) -> None:
            if obj.path in seen:
                return
            seen.add(obj.path)
            fill_docstring(obj, loader)
            if obj.docstring is not None:
                obj.docstring.value = rest_to_markdown(obj.docstring.value, pkg, public, obj)
            for member in obj.members.values():
                if not member.is_alias:
                    walk(member)  # type: ignore[arg-type]

        walk(pkg)
