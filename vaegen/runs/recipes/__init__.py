"""Ways a trained run gets p(x): registered recipes (:mod:`vaegen.runs.recipes.base`).

Importing this package registers the built-in recipes: ``own``, ``none``, ``standard_normal``,
``chain``, ``exact`` (:mod:`~vaegen.runs.recipes.trained`), ``gmm``
(:mod:`~vaegen.runs.recipes.mixture`), ``flow``, ``two_stage``, ``diffusion``
(:mod:`~vaegen.runs.recipes.learned`) and ``code_prior`` (:mod:`~vaegen.runs.recipes.code_prior`).
"""

from vaegen.runs.recipes import code_prior, learned, mixture, trained
from vaegen.runs.recipes.base import (CAPABILITIES, RECIPES, Estimate, Fit, LogPx, Recipe, as_trained, codes_kind,
                                      recipe, register_recipe, selected)

__all__ = ["CAPABILITIES", "RECIPES", "Estimate", "Fit", "LogPx", "Recipe", "as_trained", "code_prior", "codes_kind", "learned", "mixture",
           "recipe", "register_recipe", "selected", "trained"]
