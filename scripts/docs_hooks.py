"""MkDocs hook of the documentation site (mkdocs.yml: ``hooks``): pages are written once, and
the site needs nothing from outside itself.

* The components page is generated from the registry when the site is built: wherever a page has
  the two markers ``<!-- components:begin -->`` and ``<!-- components:end -->``, what lies between
  them is replaced by :func:`components_page`, the tables of ``vaegen config --components
  --markdown`` (``vaegen.cli.components_markdown``) followed by, for each registry, the traits it
  declares (name, type, default, meaning) and every component with its traits and its settings
  (defaults, valid ranges and documentation).  Nothing of it is committed, so it cannot drift.
* The math (``$...$`` and ``$$...$$``, pymdownx.arithmatex) is typeset in the browser by MathJax,
  served from the site itself: :data:`MATHJAX_FILES` are copied at build time from the MathJax
  distribution that the PyPI package ``django-static-mathjax`` installs (the ``docs`` extra), so
  the pages render offline and no copy of MathJax is committed.
* The notebook page shows ``docs/why_vae_generative.ipynb`` as executed by ``make notebook``
  (``runs/notebook/``, not committed; ``make docs`` runs it first): between the markers
  ``<!-- notebook:begin -->`` and ``<!-- notebook:end -->`` the hook writes its cells as Markdown,
  its code and printed output as code blocks, its figures as images of the site
  (:func:`notebook_markdown`).  An executed copy whose cells are not the notebook's as committed
  fails the build (run ``make notebook``).
"""

from __future__ import annotations

import base64
import importlib.util
import os
import pathlib
import re

from vaegen import cli, registry

ROOT = pathlib.Path(__file__).resolve().parents[1]

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


# --- MathJax, from the site itself ---------------------------------------------------------------

MATHJAX_PACKAGE = "mathjax"  # the import name of PyPI's django-static-mathjax (MathJax 3's distribution)
MATHJAX_SITE_DIR = "assets/mathjax"  # where the files go in the site; mkdocs.yml's extra_javascript names it
# MathJax's combined TeX-to-CommonHTML component, its fonts (found relative to the script) and the
# TeX extensions its autoloader may fetch, as paths under the distribution's es5/ directory.
MATHJAX_FILES = ("tex-chtml.js", "output/chtml/fonts/woff-v2/*.woff", "input/tex/extensions/*.js")


def mathjax_source() -> pathlib.Path:
    """The es5/ directory of the installed MathJax distribution; a clear error when it is missing."""
    spec = importlib.util.find_spec(MATHJAX_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the site serves MathJax itself, from the PyPI package django-static-mathjax: "
                           "install the docs extra (pip install -e '.[docs]', which `make docs` does)")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax" / "es5"


def mathjax_files() -> dict[str, pathlib.Path]:
    """``{path in the site: file}`` of every MathJax file the site serves."""
    es5 = mathjax_source()
    out = {}
    for pattern in MATHJAX_FILES:
        matches = sorted(es5.glob(pattern))
        if not matches:
            raise RuntimeError(f"{es5} has no {pattern}: the MathJax distribution is not the one this site expects")
        out.update({f"{MATHJAX_SITE_DIR}/{m.relative_to(es5).as_posix()}": m for m in matches})
    return out


# --- the executed notebook --------------------------------------------------------------------------

NOTEBOOK = "why_vae_generative.ipynb"  # in docs/
NB_BEGIN, NB_END = "<!-- notebook:begin -->", "<!-- notebook:end -->"
_NB_BLOCK = re.compile(re.escape(NB_BEGIN) + r".*?" + re.escape(NB_END), re.S)
NOTEBOOK_IMAGES = "notebook"  # the figures' folder in the site, beside notebook.md


def executed_notebook_path() -> pathlib.Path:
    """Where ``make notebook`` writes the executed copy (``VAEGEN_EXECUTED_NOTEBOOK`` overrides it)."""
    return pathlib.Path(os.environ.get("VAEGEN_EXECUTED_NOTEBOOK", ROOT / "runs" / "notebook" / NOTEBOOK))


def _fence(text: str, lang: str) -> str:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def notebook_markdown(executed, source, *, image_dir: str = NOTEBOOK_IMAGES,
                      stem: str = "cell") -> tuple[str, dict[str, bytes]]:
    """The executed notebook ``executed`` (an ``nbformat`` v4 notebook) as Markdown, and its figures
    ``{path relative to the page: PNG bytes}``.

    Markdown cells are kept as written; code cells become ```python blocks, followed by what they
    printed (```text blocks; standard error too, so a warning shows) and their figures.  Raises
    ValueError when ``executed`` is not ``source`` (the notebook as committed) with outputs: other
    cells, a cell never run, or a cell that failed.
    """
    code = lambda nb: [(c.cell_type, c.source) for c in nb.cells]
    if code(executed) != code(source):
        raise ValueError("its cells differ from the notebook's")
    parts, images = [], {}
    for i, cell in enumerate(executed.cells):
        if cell.cell_type == "markdown":
            parts.append(cell.source)
            continue
        if cell.cell_type != "code":
            continue
        if cell.source.strip() and cell.get("execution_count") is None:
            raise ValueError(f"cell {i} was not executed")
        parts.append(_fence(cell.source, "python"))
        for j, out in enumerate(cell.get("outputs", [])):
            kind = out.get("output_type")
            if kind == "error":
                raise ValueError(f"cell {i} failed: {out.get('ename')}: {out.get('evalue')}")
            if kind == "stream":
                parts.append(_fence(out.get("text", ""), "text"))
                continue
            data = out.get("data", {})
            if "image/png" in data:
                name = f"{image_dir}/{stem}_{i}_{j}.png"
                images[name] = base64.b64decode(data["image/png"])
                parts.append(f"![figure of cell {i}]({name})")
            elif "text/plain" in data:
                parts.append(_fence(data["text/plain"], "text"))
    return "\n\n".join(parts), images


_notebook: dict = {}  # the rendered notebook of this build: markdown, images


def on_config(config):  # MkDocs' hook signature
    _notebook.clear()
    return config


def on_files(files, config):  # MkDocs' hook signature
    """Adds MathJax's files and the executed notebook's figures to the site."""
    from mkdocs.exceptions import PluginError
    from mkdocs.structure.files import File

    try:
        served = mathjax_files()
    except RuntimeError as error:
        raise PluginError(str(error)) from error
    for uri, path in served.items():
        files.append(File.generated(config, uri, abs_src_path=str(path)))

    pages = [f for f in files if f.src_uri.endswith(".md") and f.abs_src_path and NB_BEGIN in f.content_string]
    if not pages:
        return files
    page = pages[0]
    import nbformat

    executed_path = executed_notebook_path()
    if not executed_path.exists():
        raise PluginError(f"{page.src_uri} shows the executed notebook, and {executed_path} does not exist: run "
                          "`make notebook` (`make docs` runs it when it is missing or older than the notebook)")
    source = nbformat.read(pathlib.Path(config.docs_dir) / NOTEBOOK, as_version=4)
    try:
        markdown, images = notebook_markdown(nbformat.read(executed_path, as_version=4), source,
                                             stem=pathlib.Path(NOTEBOOK).stem)
    except ValueError as error:
        raise PluginError(f"{executed_path} is not an executed copy of docs/{NOTEBOOK} as it is now ({error}): "
                          "run `make notebook`") from error
    page_dir = pathlib.PurePosixPath(page.src_uri).parent
    for name, content in images.items():
        files.append(File.generated(config, str(page_dir / name), content=content))
    _notebook.update(markdown=markdown, page=page.src_uri)
    return files


def on_page_markdown(markdown, page, config, files):  # MkDocs' hook signature
    if BEGIN in markdown:
        markdown = fill(markdown)
    if NB_BEGIN in markdown and page.file.src_uri == _notebook.get("page"):
        markdown = _NB_BLOCK.sub(lambda _: f"{NB_BEGIN}\n{_notebook['markdown']}\n{NB_END}", markdown)
    return markdown
