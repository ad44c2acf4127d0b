"""MkDocs hook of the documentation site (mkdocs.yml: ``hooks``): pages are written once.

The components page is generated from the registry when the site is built: wherever a page has
the two markers ``<!-- components:begin -->`` and ``<!-- components:end -->``, what lies between
them is replaced by :func:`components_page`, the tables of ``vaegen config --components
--markdown`` (``vaegen.cli.components_markdown``) followed by, for each registry, the traits it
declares (name, type, default, meaning) and every component with its traits and its settings
(defaults, valid ranges and documentation).  Nothing of it is committed, so it cannot drift.
"""

from __future__ import annotations

import re

from vaegen import cli, registry

BEGIN, END = "<!-- components:begin -->", "<!-- components:end -->"
_BLOCK = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)


def _cell(value) -> str:
    return str(value).replace("|", r"\|").replace("\n", " ")


def traits_markdown(reg) -> list[str]:
    """The traits a registry declares: a table of name, values, default and meaning."""
    if not reg.traits:
        return []
    out = [f"Traits of every {reg.kind} (what the other parts may ask of it):", "",
           "| trait | values | default | what it means |", "|---|---|---|---|"]
    for t in reg.traits:
        out.append(f"| `{t.name}` | {_cell(t.type_name)} | `{_cell(repr(t.default))}` | {_cell(t.doc)} |")
    return out + [""]


def _own_traits(c) -> str:
    """A component's own trait values (those its registration gives), for one line."""
    items = [f"`{k}` = `{v.__name__ if callable(v) else repr(v)}`" for k, v in sorted(c.traits.items())]
    return "Traits: " + ", ".join(items) + "." if items else ""


def settings_markdown(kinds) -> str:
    """Every registry of ``kinds`` with its declared traits, and every component with its traits and a
    table of its settings: name, type, default, range, doc."""
    out = []
    for kind in kinds:
        reg = registry.registry(kind)
        out += [f"### {reg.kind}: {reg.title}", "", *traits_markdown(reg)]
        for c in reg:
            alias = f" (also `{'`, `'.join(c.aliases)}`)" if c.aliases else ""
            out += [f"#### `{c.name}`{alias} {{ #{reg.kind}-{c.name} }}", "", c.summary.replace("``", "`"), ""]
            if _own_traits(c):
                out += [_own_traits(c), ""]
            rows = registry.describe(c.settings)
            if not rows:
                out += ["No settings.", ""]
                continue
            out += ["| setting | type | default | valid | what it is |", "|---|---|---|---|---|"]
            for r in rows:
                out.append(f"| `{r['name']}` | {_cell(r['type'])} | `{_cell(cli._default_text(r['default']))}` | "
                           f"{r['range']} | {_cell(r['doc'])} |")  # describe() escapes the range's bars itself
            out.append("")
    return "\n".join(out).rstrip()


def components_page() -> str:
    """What goes between the markers: the summary tables, then the settings of each component."""
    kinds = [r.kind for r in registry.registries()]
    return "\n\n".join([cli.components_markdown(kinds), "## Settings of each component", settings_markdown(kinds)])


def fill(markdown: str) -> str:
    """``markdown`` with every components block filled from the registry."""
    return _BLOCK.sub(lambda _: f"{BEGIN}\n{components_page()}\n{END}", markdown)


def on_page_markdown(markdown, page, config, files):  # MkDocs' hook signature
    return fill(markdown) if BEGIN in markdown else markdown
