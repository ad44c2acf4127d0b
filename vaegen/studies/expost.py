"""``vaegen expost``: make a trained run generative with a fitted recipe, and show what it gives.

A recipe that is fitted to a run's codes (:mod:`vaegen.runs.recipes`: the ex-post Gaussian mixture,
flow, second-stage VAE, latent diffusion, the prior over a VQ-VAE's codes) is fitted (or its fit
reused), attached as the run's p(z), sampled (``samples.png``) and evaluated on test images
(``eval.json``, log p(x) labelled with what it is), all in the recipe's directory under
``<workdir>/expost/``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from vaegen.runs import evaluate as evaluate_lib
from vaegen.runs import loading
from vaegen.runs.recipes import Recipe
from vaegen.runs.recipes.base import proposal_of
from vaegen.runs.run import Run
from vaegen.studies import figures


def expost(run: Run, recipe: Recipe, *, n: int = 64, k: int = 100, max_examples: int = 1000, seed: int = 0,
           refit: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fits ``recipe`` to ``run`` (or reuses its fit; ``refit``: replace a fit made with other settings,
    keeping the old one beside it), writes ``samples.png`` (``n`` samples, seed ``seed``) and, with
    ``k`` > 0, ``eval.json`` (test log p(x) by importance sampling with ``k`` samples on the first
    ``max_examples`` test images, 0 = all) into ``recipe.directory(run.workdir)``.  Returns the result
    written to ``eval.json``."""
    fit = recipe.fit(run, refit=refit)
    loading.record_user_recipe(run.workdir, recipe)   # a recipe of the user's own: found again when loading
    gen = recipe.attach(run, fit)
    out_dir = recipe.directory(run.workdir)
    log(recipe.describe_fit(fit))
    _, display = recipe.sample(gen, jax.random.key(seed), n)
    path = out_dir / "samples.png"
    figures.save_grid(path, np.asarray(display), title=f"E[x | z], z ~ {recipe.trait('samples_from')} ({n} samples)")
    log(f"wrote {path}")
    result: dict[str, Any] = {"recipe": recipe.name, "fit": _json_info(fit.info)}
    if k:
        result = evaluate_lib.evaluate(gen, dataclasses.replace(gen.spec.eval, num_samples=k), split="test",
                                       max_examples=max_examples, seed=seed)
        result["fit"] = _json_info(fit.info)
        result["proposal"] = proposal_of(gen)
        log(evaluate_lib.format_table(result))
        log(f"log p(x) here is a {recipe.trait('log_px_meaning')}")
    log(evaluate_lib.save_json(out_dir / "eval.json", result).message())   # an earlier result is kept beside it
    return result


def _json_info(info: dict) -> dict:
    return {k: v for k, v in info.items() if k != "train_metrics"}
