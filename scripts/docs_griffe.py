"""Griffe extension of the documentation site (mkdocs.yml, mkdocstrings ``extensions``).

vaegen's docstrings are Google style with Sphinx cross-reference roles (``:func:`fit_local```,
``:class:`~vaegen.config.schema.RunSpec```).  Each role is resolved here against the package as
griffe reads it -- absolute names as they are, other names from the scope of the object whose
docstring holds them -- and becomes a cross-reference of the site (``[`fit_local`][vaegen.inference.svi.fit_local]``),
which the strict build checks.  A name that resolves to nothing is a warning, so a reference to
a renamed or removed object fails the build.  A name outside vaegen (``tarfile``) or one the
reference does not show (a private name) becomes plain code.  RST's simple tables become
Markdown tables, and its ``::`` before a literal block becomes ``:``.
"""

from __future__ import annotations

import importlib.util
import re

import griffe

_BORDER = re.compile(r"^(?P<indent> *)=+(?: +=+)+ *$")
_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")
_LITERAL = re.compile(r"(\S)::$", re.M)
_logger = griffe.get_logger("vaegen.docs")


def _cell(text: str) -> str:
    """Bars escaped outside code spans (a table cell)."""
    parts = re.split(r"(`+[^`]*`+)", text)
    return "".join(p if p.startswith("`") else p.replace("|", r"\|") for p in parts)


def _tables(text: str) -> str:
    """RST simple tables (two ``=== ===`` borders around the rows, no header) as Markdown tables.

    A row starts where the first column has text; lines that leave it blank continue the row
    above.  Text is assigned to the column whose border starts at or before it, so an entry may
    run past its column's border as long as two spaces separate it from the next one.
    """
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        border = _BORDER.match(lines[i])
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() and _BORDER.match(lines[j])), None) \
            if border else None
        if border is None or end is None:
            out.append(lines[i])
            i += 1
            continue
        starts = [m.start() for m in re.finditer(r"=+", lines[i])]
        rows: list[list[str]] = []
        for line in lines[i + 1:end]:
            if not line.strip():
                continue
            pieces = [(m.start(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", line)]
            if pieces[0][0] <= starts[0]:
                rows.append([""] * len(starts))
            for pos, piece in pieces:
                col = max(k for k, s in enumerate(starts) if s <= pos + 1) if pos + 1 >= starts[0] else 0
                rows[-1][col] = f"{rows[-1][col]} {piece}".strip()
        indent = border.group("indent")
        out += [indent + "|" + " |" * len(starts), indent + "|" + "---|" * len(starts)]
        out += [indent + "| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
        i = end + 1
    return "\n".join(out)


def _public(path: str) -> bool:
    return not any(part.startswith("_") for part in path.split("."))


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring of the package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        if pkg.path != "vaegen":
            return
        self._loader = loader
        self._visit(pkg)

    def _visit(self, obj: griffe.Object) -> None:
        if obj.docstring is not None:
            obj.docstring.value = self._rewrite(obj, obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias and member.parent is obj:
                self._visit(member)

    def _lookup(self, path: str) -> griffe.Object | None:
        try:
            found = self._loader.modules_collection.get_member(path)
        except (KeyError, ValueError, AttributeError):
            return None
        try:
            return found.final_target if found.is_alias else found
        except griffe.AliasResolutionError:
            return None

    def _resolve(self, obj: griffe.Object, name: str) -> tuple[str | None, bool]:
        """(canonical path, inside vaegen) of ``name`` seen from ``obj``, or (None, False)."""
        head, _, rest = name.partition(".")
        if head == "vaegen":
            target = self._lookup(name)
            return (target.path, True) if target is not None else (None, False)
        scope = obj if obj.is_module or obj.is_class else obj.parent
        try:
            base = scope.resolve(head)
        except (griffe.NameResolutionError, AttributeError):
            # A module outside vaegen named as such (``:mod:`tarfile```) is plain code.
            return (name, False) if head != "vaegen" and importlib.util.find_spec(head) else (None, False)
        full = f"{base}.{rest}" if rest else base
        if not full.startswith("vaegen"):
            return full, False
        target = self._lookup(full)
        return (target.path, True) if target is not None else (None, False)

    def _rewrite(self, obj: griffe.Object, text: str) -> str:
        def role(match: re.Match) -> str:
            tilde, name = match.groups()
            shown = name.rsplit(".", 1)[-1] if tilde else name
            path, inside = self._resolve(obj, name)
            if path is None:
                where = obj.relative_filepath if obj.is_module else obj.parent.relative_filepath
                _logger.warning(f"{where}: {obj.path}: the reference {match.group(0)} names nothing in vaegen")
                return f"`{shown}`"
            if not inside or not _public(path):
                return f"`{shown}`"
            return f"[`{shown}`][{path}]"

        return _LITERAL.sub(r"\1:", _ROLE.sub(role, _tables(text)))
