"""The documentation's examples run: every ```python block of README.md and docs/*.md is executed,
so the docs cannot drift from the code.

A block that is not meant to run says so on the line before it, with the reason:
``<!-- no-run: a module of your own; ... -->``.  The blocks of one page run in order in one
namespace (a page reads as one session), in a directory whose ``runs/`` holds the runs the pages
name: tiny runs on the bundled ``digits`` data (the ``tiny`` and ``tiny:ae`` presets) stand in for
the Fashion-MNIST runs of the text.  Sizes meant for a real evaluation (k = 5000, AIS with 1000
steps) are scaled down by the substitutions below, each of which must still match its page.

Also checked: every public module of the package is on a page of the API reference, and the
site's configuration names every page under docs/.
"""

import base64
import importlib.util
import pathlib
import re
import shutil

import numpy as np
import pytest

import vaegen

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^(?P<mark><!-- no-run:(?P<why>[^>]*)-->\n)?```python\n(?P<code>.*?)^```", re.S | re.M)

# (page, text in a block, what the test runs instead): sizes only, never what is computed.
TINY = [
    ("docs/usage.md", "run.log_px(x, k=1000)", "run.log_px(x, k=100)"),  # compiled once, for getting-started.md
    ("docs/usage.md", "num_samples=1000), max_examples=1000)", "num_samples=20), max_examples=1000)"),  # compiled once, for the workspace
    ("docs/usage.md", "(8, 28, 28, 1)", "(8, 8, 8, 1)"),  # the building blocks: Fashion-MNIST's shapes, smaller nets
    ("docs/usage.md", "event_shape=(28, 28, 1)", "event_shape=(8, 8, 1)"),
    ("docs/usage.md", "MLPSettings(hidden=(200, 200))", "MLPSettings(hidden=(16,))"),
    ("docs/usage.md", "latent_dim=50", "latent_dim=4"),
    ("docs/usage.md", "IWAESettings(num_samples=50)", "IWAESettings(num_samples=5)"),
    ("docs/expost.md", "num_samples=1000)", "num_samples=50)"),
    ("docs/expost.md", "components=10)", "components=3)"),
    ("docs/evaluation.md", "num_samples=5000", "num_samples=100"),
    ("docs/evaluation.md", "AISSettings(num_steps=1000, num_chains=16, num_leapfrog=10)",
     "AISSettings(num_steps=10, num_chains=2, num_leapfrog=2)"),
    ("docs/evaluation.md", "num_examples=100)", "num_examples=20)"),  # as many as xs: AIS compiled once
]


def _blocks(path: pathlib.Path) -> list[tuple[int, str | None, str]]:
    """(line, reason it does not run or None, code) of every ```python block of a page."""
    text = path.read_text()
    return [(text[: m.start()].count("\n") + 1, m.group("why"), m.group("code")) for m in BLOCK.finditer(text)]


def _runnable(path: pathlib.Path) -> list[tuple[int, str]]:
    rel = str(path.relative_to(ROOT))
    out = []
    for line, why, code in _blocks(path):
        if why is not None:
            continue
        for page, old, new in TINY:
            if page == rel and old in code:
                code = code.replace(old, new)
        out.append((line, code))
    return out


RUNNABLE = {str(p.relative_to(ROOT)): _runnable(p) for p in PAGES if _runnable(p)}


def test_every_python_block_runs_or_says_why_not():
    fences = 0
    for path in PAGES:
        text = path.read_text()
        fences += len(re.findall(r"^```python\n", text, re.M))
        for line, why, _ in _blocks(path):
            assert why is None or why.strip(), f"{path}:{line}: a no-run block needs its reason"
    assert fences == sum(len(_blocks(p)) for p in PAGES)
    assert len(RUNNABLE) >= 5, RUNNABLE.keys()  # the pattern finds the examples
    for page, old, _ in TINY:  # each substitution still applies to its page
        assert any(old in block for _, _, block in _blocks(ROOT / page)), (page, old)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A directory whose ``runs/`` holds what the pages load: a tiny VAE and a tiny AE, trained
    here, under each name the pages use, and per-example test log-likelihoods of two runs."""
    root = tmp_path_factory.mktemp("docs")
    trained = {}
    for preset, name, estimators in (("tiny", "tiny", "elbo,is"), ("tiny:ae", "tiny-ae", "is")):
        # the runs' own evaluation settings are small too (`run.log_px(x, method="ais")` uses them)
        config = vaegen.load_config(preset, ["train.num_epochs=1", f"eval.estimators={estimators!r}",
                                             "eval.num_samples=20", "eval.ais.num_steps=10", "eval.ais.num_chains=2",
                                             "eval.ais.num_leapfrog=2"])
        vaegen.train_and_evaluate(config, str(root / "runs" / name))
        trained[name] = root / "runs" / name
    per_example = {}
    run = vaegen.load(str(trained["tiny"]))
    vaegen.evaluate(run, per_example=per_example)
    np.savez(trained["tiny"] / "test.npz", **per_example)
    for alias, name in (("demo/vae", "tiny"), ("vae", "tiny"), ("vamp", "tiny"), ("ae", "tiny-ae")):
        shutil.copytree(trained[name], root / "runs" / alias)
    return root


@pytest.mark.parametrize("page", sorted(RUNNABLE))
@pytest.mark.slow
def test_the_examples_of_the_page_run(page, workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    namespace = {"__name__": f"docs_example_{page}"}
    for line, code in RUNNABLE[page]:
        try:
            exec(compile(code, f"{page}:{line}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"the example at {page}:{line} fails: {type(error).__name__}: {error}") from error


def test_every_public_module_is_in_the_api_reference():
    documented = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        documented |= set(re.findall(r"^::: (\S+)", page.read_text(), re.M))
    modules = set()
    for path in (ROOT / "vaegen").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(p.startswith("_") for p in parts):
            modules.add(".".join(parts))
    missing = sorted(modules - documented)
    assert not missing, f"add these modules to a page of docs/api/: {missing}"


def test_readme_links_resolve():
    """README is read on its own (the site checks the links of docs/ when it is built)."""
    text = (ROOT / "README.md").read_text()
    targets = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t]
    assert targets
    for target in targets:
        assert (ROOT / target.split("#")[0]).exists(), f"README links to {target}, which does not exist"


def test_the_site_names_every_page():
    config = (ROOT / "mkdocs.yml").read_text()
    for path in (ROOT / "docs").rglob("*.md"):
        assert str(path.relative_to(ROOT / "docs")) in config, f"{path} is not in mkdocs.yml's nav"


def test_every_table_ends_where_it_ends():
    """A line right after a table's last row joins the table as a row of its own (a stray ``{``
    under README's comparison table once did): a table is followed by a blank line."""
    for path in PAGES:
        lines, fenced = path.read_text().splitlines(), False
        for i, line in enumerate(lines):
            fenced ^= line.startswith("```")
            if not fenced and i and lines[i - 1].startswith("|") and line.strip() and not line.startswith("|"):
                raise AssertionError(f"{path.relative_to(ROOT)}:{i + 1}: {line!r} follows a table without a blank line")


_CODE = re.compile(r"^(`{3,}).*?^\1\s*$|`+[^`\n]*`+|<!--.*?-->", re.S | re.M)
_MATH = re.compile(r"\$\$.+?\$\$|\$[^$\n]+\$", re.S)
_LATEX = re.compile(r"_\{|\^\{|\\(?:mathbb|mathrm|mathcal|frac|sum|int|log|mid|le|ge|Vert)\b")


def test_math_is_written_as_math():
    """Formulas in LaTeX notation are inside $...$ or $$...$$, which the site typesets (and GitHub
    too); outside them ``E_{p(z)}`` would show as those characters."""
    for path in PAGES:
        text = _MATH.sub("", _CODE.sub("", path.read_text()))
        for m in _LATEX.finditer(text):
            line = text[max(0, m.start() - 40): m.end() + 40].replace("\n", " ")
            raise AssertionError(f"{path.relative_to(ROOT)}: LaTeX outside $...$: ...{line}...")
    assert _MATH.search((ROOT / "docs" / "concepts.md").read_text())  # the pattern finds the math


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts" / "docs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_loads_nothing_from_elsewhere():
    """Scripts, styles and fonts are the site's own: MathJax is copied from an installed package
    when the site is built, and the theme's web font (fetched from another site) is off."""
    config = (ROOT / "mkdocs.yml").read_text()
    assert re.search(r"^theme:\n(?:  .*\n)*?  font: false$", config, re.M), "theme.font must be false"
    assets = re.findall(r"^extra_(?:javascript|css):\n((?:  - .*\n)+)", config, re.M)
    entries = [e.strip()[2:] for block in assets for e in block.splitlines()]
    hooks = _hooks()
    assert f"{hooks.MATHJAX_SITE_DIR}/tex-chtml.js" in entries and "tex-chtml.js" in hooks.MATHJAX_FILES
    for entry in entries:
        assert "://" not in entry and not entry.startswith("/"), f"mkdocs.yml loads {entry} from elsewhere"
        assert entry.startswith(hooks.MATHJAX_SITE_DIR + "/") or (ROOT / "docs" / entry).is_file(), entry
    for path in [*PAGES, *(ROOT / "docs").rglob("*.js"), *(ROOT / "docs").rglob("*.css")]:
        text = path.read_text()
        assert not re.search(r"<script[^>]+src=[\"']?(https?:)?//|@import\s+url\([\"']?(https?:)?//|<link[^>]+href=[\"']?(https?:)?//",
                             text), f"{path} loads something from another site"
    if importlib.util.find_spec(hooks.MATHJAX_PACKAGE) is not None:  # the docs extra is installed
        served = hooks.mathjax_files()
        assert f"{hooks.MATHJAX_SITE_DIR}/tex-chtml.js" in served
        assert sum(uri.endswith(".woff") for uri in served) >= 10  # the CommonHTML fonts, beside the script
        assert all(path.is_file() for path in served.values())


def test_the_notebook_page_shows_cells_outputs_and_figures():
    import nbformat

    hooks = _hooks()
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n not really").decode()
    source = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Title\n\n$p(z)$ text"),
                                             nbformat.v4.new_code_cell("print('hi')\nplot()")])
    executed = nbformat.reads(nbformat.writes(source), 4)
    executed.cells[1].execution_count = 1
    executed.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi\n"),
                                 nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"})]
    markdown, images = hooks.notebook_markdown(executed, source, stem="nb")
    assert markdown.startswith("# Title\n\n$p(z)$ text\n\n```python\nprint('hi')\nplot()\n```\n\n```text\nhi\n```")
    assert markdown.endswith("![figure of cell 1](notebook/nb_1_1.png)")
    assert images == {"notebook/nb_1_1.png": base64.b64decode(png)}
    stale = nbformat.reads(nbformat.writes(executed), 4)
    stale.cells[1].source = "print('an older version')"
    with pytest.raises(ValueError, match="differ"):
        hooks.notebook_markdown(stale, source)
    failed = nbformat.reads(nbformat.writes(executed), 4)
    failed.cells[1].outputs = [nbformat.v4.new_output("error", ename="NameError", evalue="plot", traceback=[])]
    with pytest.raises(ValueError, match="cell 1 failed: NameError"):
        hooks.notebook_markdown(failed, source)
    unrun = nbformat.reads(nbformat.writes(source), 4)
    with pytest.raises(ValueError, match="cell 1 was not executed"):
        hooks.notebook_markdown(unrun, source)
