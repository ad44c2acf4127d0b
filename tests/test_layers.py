"""The package's architecture: its layers import only downward (the import-linter contract in
pyproject.toml), no two modules import each other in a circle, and no vaegen module is imported
inside a function (where it would hide an arrow of the graph)."""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vaegen"


def _module_name(path: pathlib.Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _imports(path: pathlib.Path):
    """(node, imported vaegen modules, at module level?) for every import in a file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        names = [n for n in names if n == "vaegen" or n.startswith("vaegen.")]
        if names:
            yield node, names, id(node) in top


def test_the_layers_contract_is_kept():
    """``lint-imports`` (import-linter, with the contract in pyproject.toml): every module imports
    only from the layers below its own."""
    out = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                          "lint_imports_command()", "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "0 broken" in out.stdout, out.stdout + out.stderr


def test_no_vaegen_module_is_imported_inside_a_function():
    local = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node, names, at_top in _imports(path):
            if not at_top:
                local.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {names[0]}")
    assert not local, "function-local imports of vaegen modules:\n" + "\n".join(local)


def test_no_import_circle():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for m, path in modules.items():
        for _, names, _ in _imports(path):
            for n in names:
                while n and n not in modules:
                    n = n.rpartition(".")[0]
                if n and n != m and n != "vaegen":
                    edges[m].add(n)
    # Depth-first search for a back edge.
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(v: str, stack: list[str]) -> bool:
        state[v] = 1
        for w in sorted(edges[v]):
            if state.get(w) == 1:
                cycle.extend(stack[stack.index(w):] + [w] if w in stack else [v, w])
                return True
            if w not in state and visit(w, stack + [w]):
                return True
        state[v] = 2
        return False

    for m in sorted(modules):
        if m not in state and visit(m, [m]):
            break
    assert not cycle, " -> ".join(cycle)


@pytest.mark.parametrize("layer, below", [("vaegen.blocks", "vaegen.model"), ("vaegen.model", "vaegen.train"),
                                          ("vaegen.train", "vaegen.config"), ("vaegen.data", "vaegen.train")])
def test_a_layer_does_not_import_the_layers_above_it(layer, below):
    """A direct check of a few floors, independent of import-linter."""
    offending = []
    for path in sorted((ROOT / layer.replace(".", "/")).rglob("*.py")):
        for node, names, _ in _imports(path):
            if any(n == below or n.startswith(below + ".") for n in names):
                offending.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offending, offending
