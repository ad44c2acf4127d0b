"""MkDocs hook of the documentation site (mkdocs.yml: ``hooks``): pages are written once.

The components page is generated from the registry when the site is built: wherever a page has
the two markers ``<!-- components:begin -->`` and ``<!-- components:end -->``, what lies between
them is replaced by :func:`components_page`, the tables of ``vaegen config --components
--markdown`` (``vaegen.cli.components_markdown``) followed by every component's settings with their
defaults, valid ranges and documentation.  Nothing of it is committed, so it cannot drift.
"""

from __future__ import annotations

import re

from vaegen import cli, registry

BEGIN, END = "<!-- components:begin -->", "<!-- components:end -->"
_BLOCK = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)


def _cell(value) -> str:
    return str(value).replace("|", r"\|").replace("\n", " ")


def settings_markdown(kinds) -> str:
    """Every component of ``kinds`` with a table of its settings: name, type, default, range, doc."""
    out = []
    for kind in kinds:
        reg = registry.registry(kind)
        out += [f"### {reg.kind}: {reg.title}", ""]
        for c in reg:
            alias = f" (also `{'`, `'.join(c.aliases)}`)" if c.aliases else ""
            out += [f"#### `{c.name}`{alias} {{ #{reg.kind}-{c.name} }}", "", c.summary.replace("``", "`"), ""]
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
