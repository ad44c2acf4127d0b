"""``vaegen.load``: a trained run, made generative by a recipe where asked.

    run = vaegen.load("runs/ae")                      # the run as trained
    gen = vaegen.load("runs/ae", density="gmm")       # with the mixture fitted to its codes as p(z)

``density`` names any registered recipe (:data:`vaegen.runs.recipes.RECIPES`; ``vaegen config
--components recipe`` lists them); a recipe that is fitted (``vaegen expost --density NAME``) is read
from its fit, never fitted here.
"""

from __future__ import annotations

import os
import pathlib

from vaegen.runs import recipes as recipes_lib
from vaegen.runs import run as run_lib
from vaegen.runs.recipes.base import EXPOST_DIR
from vaegen.runs.recipes.store import read_json, write_json
from vaegen.runs.run import Run


def load(workdir: str | os.PathLike, *, density: str | None = None, epoch: int | None = None,
         best: bool | None = None) -> Run:
    """The run in ``workdir`` (:func:`vaegen.runs.run.restore`: its best checkpoint under early stopping,
    else its latest, or ``epoch``), with the recipe ``density`` applied: ``gmm``, ``flow``, ``two_stage``,
    ``diffusion`` and ``code_prior`` read the fit made before (``vaegen expost --density NAME``);
    ``standard_normal`` attaches N(0, I); ``own``, ``none``, ``chain`` and ``exact`` are the run as trained.
    The result samples, evaluates and answers ``log_px`` like any run with a prior (an autoencoder's q is
    then the proposal around the code).

    Raises:
      FileNotFoundError: no run in ``workdir``, or the recipe's fit was not made.
      vaegen.errors.ConfigError: an unknown recipe (with the registered names).
      vaegen.errors.RecipeError: the recipe does not fit the run, or its fit is unfinished.
    """
    run = run_lib.restore(workdir, epoch=epoch, best=best)
    if density is None:
        return run
    if isinstance(density, str) and density not in recipes_lib.RECIPES:
        import_user_recipes(workdir)      # a recipe of the user's own, fitted to this run before
    recipe = recipes_lib.selected(density)
    fit = recipe.load_fit(run)
    return recipe.as_fitted(fit).attach(run, fit)


# --- recipes of the user's own ----------------------------------------------------------------------

USER_RECIPES_FILE = "recipes.json"
"""``<workdir>/expost/recipes.json``: the user's recipes fitted to the run, by name: their module and file."""


def record_user_recipe(workdir: str | os.PathLike, recipe: recipes_lib.Recipe) -> None:
    """Records where a recipe of the user's own (not vaegen's) was registered, so that loading the run
    with it later imports its module from that file (as a run records its user components)."""
    component = recipe.component
    if component.builtin:
        return
    path = pathlib.Path(workdir) / EXPOST_DIR / USER_RECIPES_FILE
    records = read_json(path, remedy="delete it and fit your recipe again") if path.exists() else {}
    records[component.name] = {"module": component.module, "file": str(pathlib.Path(component.file).resolve())}
    write_json(path, records)


def import_user_recipes(workdir: str | os.PathLike) -> list[str]:
    """Imports the module of every user recipe recorded in ``workdir`` (:func:`record_user_recipe`) that is
    not registered yet; returns their names.  A recorded file that is gone or fails to import: one line."""
    path = pathlib.Path(workdir) / EXPOST_DIR / USER_RECIPES_FILE
    if not path.is_file():
        return []
    records = read_json(path, remedy="delete it and fit your recipe again", what="record of the recipes of your own")
    imported = []
    for name, entry in records.items():
        if name in recipes_lib.RECIPES:
            continue
        run_lib.import_user_components(pathlib.Path(workdir), {"user_components": [
            {"kind": "recipe", "name": name, "config_key": "--density", **entry}]})
        imported.append(name)
    return imported
