"""A researcher's own component, in a module of their own: the docs' example
(docs/own-component.md) run exactly as written -- its two files and its three commands -- and then loaded
from another directory, in another process, the way `vaegen.load` finds it again."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from vaegen import cli, registry
from vaegen.config import loading
from vaegen.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _docs_example() -> tuple[dict[str, str], list[str]]:
    """The files (``# name.py`` on their first line) and the commands of the docs' example."""
    section = (ROOT / "docs" / "own-component.md").read_text()
    files, commands = {}, []
    for lang, body in re.findall(r"```(python|bash)\n(.*?)```", section, re.S):
        if lang == "python":
            name = body.splitlines()[0].removeprefix("# ").strip()
            files[name] = body
        else:
            commands += [line.split("#")[0].strip() for line in body.splitlines() if line.strip()]
    return files, commands


def _vaegen(args: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    """The vaegen command in a fresh process (what a user runs from another directory)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "vaegen.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=900)


@pytest.fixture
def isolated_registry(monkeypatch):
    """What a user's module registers in this process is taken back after the test (other tests
    compare the registry with the docs)."""
    for reg in registry.registries():
        monkeypatch.setattr(reg, "_components", dict(reg._components))
        monkeypatch.setattr(reg, "_aliases", dict(reg._aliases))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name == "my_laplace" or name.startswith("_vaegen_config_"):
            del sys.modules[name]


@pytest.mark.slow
def test_docs_example_trains_evaluates_samples_and_loads_elsewhere(tmp_path, monkeypatch, capsys,
                                                                      isolated_registry):
    files, commands = _docs_example()
    assert set(files) == {"my_laplace.py", "my_config.py"}
    assert len("".join(files.values()).splitlines()) <= 40, "the docs' example should stay short"
    assert [c.split()[:2] for c in commands] == [["vaegen", "train"], ["vaegen", "evaluate"], ["vaegen", "sample"]]
    project = tmp_path / "project"
    project.mkdir()
    for name, body in files.items():
        (project / name).write_text(body)
    monkeypatch.chdir(project)
    for command in commands:  # as the docs have them, through the command line's entry point
        assert cli.main(command.split()[1:]) == 0, f"{command}: {capsys.readouterr().err[-2000:]}"
    workdir = project / "runs" / "laplace"
    assert json.loads((workdir / "config.json").read_text())["model"]["prior"] == {"name": "laplace", "scale": 0.5}
    recorded = json.loads((workdir / "run.json").read_text())["user_components"]
    assert recorded == [{"config_key": "model.prior", "kind": "prior", "name": "laplace", "module": "my_laplace",
                         "file": str(project / "my_laplace.py")}]
    evaluation = json.loads((workdir / "eval.json").read_text())
    assert evaluation["metrics"]["elbo"]["mean"] <= evaluation["metrics"]["log_px"]["mean"] + 1.0
    assert (workdir / "samples.png").stat().st_size > 0

    # A setting of the user's component is checked like any other, and the listing shows it.
    capsys.readouterr()
    assert cli.main(["train", "--config", "my_config.py", "--workdir", "runs/bad",
                     "--config.model.prior.scale=-1.0"]) == 2
    assert capsys.readouterr().err.strip() == "vaegen: error: config.model.prior.scale=-1.0 must be > 0"
    assert not (project / "runs" / "bad").exists()
    assert cli.main(["config", "my_config.py", "--components", "prior"]) == 0
    listing = capsys.readouterr().out
    assert "laplace" in listing and "[my_laplace]" in listing

    # From elsewhere, in a fresh process: vaegen.load imports the module from the recorded file.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import vaegen, jax; run = vaegen.load(%r); "
            "print(run.spec.model.prior.name, run.spec.model.prior.settings.scale, "
            "run.sample(jax.random.key(0), 3).shape)") % str(workdir)
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[:2] == ["laplace", "0.5"]

    # The module's file gone: one line that names the component and the file, nothing written.
    shutil.move(project / "my_laplace.py", tmp_path / "moved.py")
    before = sorted(p.name for p in workdir.iterdir())
    gone = _vaegen(["evaluate", "--workdir", str(workdir), "--k", "2"], elsewhere)
    assert gone.returncode == 2 and len(gone.stderr.strip().splitlines()) == 1, gone.stderr
    assert "the prior 'laplace' (model.prior), defined in module 'my_laplace'" in gone.stderr
    assert "does not exist" in gone.stderr
    assert sorted(p.name for p in workdir.iterdir()) == before


@pytest.mark.parametrize("bad, message", [
    ("import no_such_module_for_vaegen\n", "failed to load: ModuleNotFoundError"),
    ("raise RuntimeError('broken on purpose')\n", "failed to load: RuntimeError: broken on purpose"),
])
def test_a_config_file_whose_module_fails_is_a_config_error(tmp_path, bad, message):
    path = tmp_path / "my_config.py"
    path.write_text(bad + "def get_config(arg=None):\n    return None\n")
    with pytest.raises(ConfigError, match=message):
        loading.load_config(str(path))
