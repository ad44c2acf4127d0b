"""A researcher's own recipe (a way of getting p(x)), in a module of their own: the docs' example
(docs/own-recipe.md) run exactly as written -- its file and its commands, each in a fresh process --
and what each command made of it checked."""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # each test runs vaegen commands in new processes

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _docs_example() -> tuple[dict[str, str], list[str]]:
    """The file (``# name.py`` on its first line) and the commands of the docs' example."""
    page = (ROOT / "docs" / "own-recipe.md").read_text()
    files, commands = {}, []
    for lang, body in re.findall(r"```(python|bash)\n(.*?)```", page, re.S):
        if lang == "python":
            files[body.splitlines()[0].removeprefix("# ").strip()] = body
        else:
            commands += [line.split(" #")[0].strip() for line in body.splitlines() if line.strip()]
    return files, commands


def _vaegen(args: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "vaegen.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=900)


def test_the_docs_recipe_fits_evaluates_samples_and_joins_a_study(tmp_path):
    files, commands = _docs_example()
    assert set(files) == {"my_kde.py"} and len(commands) == 5
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    outputs = []
    for command in commands:
        args = shlex.split(command)
        assert args[0] == "vaegen"
        done = _vaegen(args[1:], tmp_path)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    run = tmp_path / "runs" / "ae-kde"
    # expost: fitted, sampled, evaluated, labelled as the recipe declares; the module's file recorded.
    result = json.loads((run / "expost" / "kde" / "eval.json").read_text())
    assert result["recipe"] == "kde" and result["fit"]["num_codes"] == 500
    assert result["log_px_meaning"].startswith("stochastic lower bound") and np.isfinite(result["metrics"]["log_px"]["mean"])
    recorded = json.loads((run / "expost" / "recipes.json").read_text())
    assert pathlib.Path(recorded["kde"]["file"]) == tmp_path / "my_kde.py"
    # evaluate and sample found the recipe without --import.
    evaluated = json.loads((run / "eval_kde.json").read_text())
    assert evaluated["recipe"] == "kde" and "around the code" in evaluated["metrics"]["log_px"]["estimator"]
    assert (run / "samples_kde.png").stat().st_size > 0
    # The study's row: labelled from the declaration, measured like the built-in densities beside it.
    rows = json.loads((tmp_path / "runs" / "study-kde" / "results.json").read_text())["rows"]
    assert rows["ae+kde"]["row"]["label"] == "AE + ex-post KDE" and rows["ae+kde"]["row"]["sampled_from"] == "KDE on codes"
    assert rows["ae+kde"]["log_px_kind"] == "stochastic lower bound" and np.isfinite(rows["ae+kde"]["log_px"]["mean"])
    assert rows["ae+kde"]["row"]["recipe"]["max_codes"] == 400        # the tiny study's expost.fit.max_codes
    report = (tmp_path / "runs" / "study-kde" / "report" / "report.md").read_text()
    assert "| AE + ex-post KDE | KDE on codes |" in report


def test_a_recipe_file_that_is_gone_is_one_line(tmp_path):
    (tmp_path / "expost").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "expost" / "recipes.json").write_text(json.dumps({"kde": {"module": "my_gone_kde",
                                                                          "file": str(tmp_path / "gone.py")}}))
    done = _vaegen(["evaluate", "--workdir", str(tmp_path), "--density", "kde"], tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "defined in module 'my_gone_kde'" in done.stderr and "which does not exist" in done.stderr
