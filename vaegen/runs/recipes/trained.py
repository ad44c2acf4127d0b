"""Recipes that fit nothing: the run as trained, N(0, I) attached ad hoc, a denoising AE's chain, an
autoregressive model's exact likelihood.

=====================  ===================================================================================
``own``                the model's own p(z) (a VAE's; the N(0, I) a WAE or an AAE matched its codes to)
``none``               an autoencoder as trained: no p(z), hence no p(x) and nothing to sample
``standard_normal``    N(0, I) attached to a model's codes ad hoc, whatever it was trained with
``chain``              the denoising AE's corruption–reconstruction Markov chain (Bengio et al. 2013):
                       samples, no tractable density
``exact``              an autoregressive model (MADE): exact log p(x), samples pixel by pixel
=====================  ===================================================================================
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np

from vaegen.blocks import posteriors as posteriors_lib
from vaegen.blocks import priors as priors_lib
from vaegen.config.schema import RunSpec
from vaegen.errors import NO_PRIOR_MESSAGE, NoPriorError, RecipeError
from vaegen.objectives import denoising
from vaegen.objectives.bounds import objective_terms
from vaegen.objectives.exact import ExactLogLikelihood
from vaegen.registry import Settings, setting
from vaegen.runs import codes as codes_lib
from vaegen.runs.recipes.base import Estimate, Fit, LogPx, Recipe, register_recipe, with_prior
from vaegen.runs.run import Run

EXACT_P_Z = "stochastic lower bound on log p(x) (importance sampling; exact p(z))"
CODE_SCALE_EXAMPLES = 5000
"""Training images whose codes give sigma of the proposal around an autoencoder's code, when not given."""


def code_scale_of(run: Run, *, max_codes: int = CODE_SCALE_EXAMPLES, seed: int = 0) -> np.ndarray:
    """sigma ``[D]`` of the proposal around the code: the per-dimension standard deviation of the
    codes of the first ``max_codes`` training images (one binarization draw with ``seed``)."""
    x = codes_lib.training_images(run, max_examples=max_codes, seed=seed)
    return codes_lib.encode_codes(run.model, run.variables, x, jax.random.key(seed)).std(0)


@register_recipe("own", label="", samples_from="its own p(z)", log_px=LogPx.STOCHASTIC_LOWER_BOUND,
                 log_px_meaning=EXACT_P_Z, needs=("prior",), reports_elbo=True, as_trained=True)
class OwnPrior(Recipe):
    """The model's own p(z): a VAE's prior, or the N(0, I) a WAE or an AAE matched its codes to in
    training (whose point-mass q is replaced by the proposal around the code for importance sampling)."""

    def samples_from(self, spec: RunSpec) -> str:
        """Its prior's label; "matched in training" where the objective matched the codes to it."""
        label = spec.model.prior.trait("label") or spec.model.prior.name
        return f"{label}, matched in training" if spec.objective.trait("matches_prior") else label

    def attach(self, run: Run, fit: Fit, *, code_scale: np.ndarray | None = None) -> Run:
        self.check(run)
        if not run.is_autoencoder:
            return dataclasses.replace(run, recipe=self.selected)
        prior = run.model.prior
        if code_scale is None:
            code_scale = code_scale_of(run)
        model, variables = with_prior(run, prior, run.variables["params"].get("prior"), code_scale=code_scale)
        return dataclasses.replace(run, model=model, variables=variables, recipe=self.selected)

    def log_px(self, gen: Run, x: Any, key: jax.Array, *, k: int, with_elbo: bool = False) -> Estimate:
        # A point-mass q has no ELBO (its KL to p(z) is +inf): only the importance-sampled log p(x).
        return super().log_px(gen, x, key, k=k, with_elbo=with_elbo and not _around_code(gen))


def _around_code(gen: Run) -> bool:
    """Whether ``gen``'s q(z|x) is the proposal around a point-mass code (no ELBO exists)."""
    return isinstance(gen.model.posterior, posteriors_lib.CodeProposal)


@register_recipe("none", label="", samples_from="nothing (no p(z))", log_px=LogPx.UNDEFINED,
                 log_px_meaning="undefined: the autoencoder has no p(z), hence no p(x) = E_p(z)[p(x|z)]",
                 needs=("no_prior",), as_trained=True,
                 cannot_code="the autoencoder has no p(z), so there is nothing to code z with, and no p(x): it is not "
                             "a generative model (fit a density to its codes first: vaegen expost)")
class NoPrior(Recipe):
    """An autoencoder as trained: a decoder p(x | z) and codes f(x), but no p(z) -- no p(x) to evaluate
    and nothing to sample.  The row every other recipe is measured against."""

    def log_px(self, gen: Run, x: Any, key: jax.Array, *, k: int, with_elbo: bool = False) -> Estimate:
        raise RecipeError(f"log p(x) is {self.trait('log_px_meaning')}")

    def sample(self, gen: Run, key: jax.Array, n: int) -> tuple[np.ndarray, np.ndarray]:
        raise NoPriorError(f"cannot sample from {gen.workdir}: {NO_PRIOR_MESSAGE}")


@register_recipe("standard_normal", label="N(0, I)", samples_from="N(0, I), ad hoc", tag="n01",
                 log_px=LogPx.STOCHASTIC_LOWER_BOUND, log_px_meaning=EXACT_P_Z, needs=("continuous_codes",))
class StandardNormalPrior(Recipe):
    """p(z) = N(0, I) attached to the codes ad hoc, whatever the model was trained with: the "AE sampled
    from a Gaussian", a well-defined generative model whose log p(x) and samples show what goes wrong
    without a fitted prior."""

    def attach(self, run: Run, fit: Fit, *, code_scale: np.ndarray | None = None) -> Run:
        self.check(run)
        if code_scale is None and run.is_autoencoder:
            code_scale = code_scale_of(run)
        prior = priors_lib.StandardNormal(latent_dim=int(run.spec.model.latent_dim))
        model, variables = with_prior(run, prior, None, code_scale=code_scale)
        return dataclasses.replace(run, model=model, variables=variables, recipe=self.selected)


@dataclasses.dataclass(frozen=True)
class ChainSettings(Settings):
    steps: int = setting(50, "steps of the corruption–reconstruction chain from uniform noise per sample", gt=0)


@register_recipe("chain", settings=ChainSettings, label="", samples_from="its Markov chain",
                 log_px=LogPx.INTRACTABLE,
                 log_px_meaning=("no tractable density: p(x) is the stationary distribution of the Markov chain, "
                                 "known only through its samples"),
                 needs=("markov_chain",),
                 cannot_code="its p(x) is the stationary distribution of a Markov chain, known only through its "
                             "samples: there is no probability of an image to code it with")
class MarkovChain(Recipe):
    """The denoising AE's Markov chain x~_t ~ C(x~ | x_{t-1}), x_t ~ P(x | x~_t) with the corruption it was
    trained with (Bengio et al. 2013): its stationary distribution is the model's p(x), sampled from
    uniform noise; no tractable density."""

    def log_px(self, gen: Run, x: Any, key: jax.Array, *, k: int, with_elbo: bool = False) -> Estimate:
        raise RecipeError(f"log p(x) is intractable here: {self.trait('log_px_meaning')}")

    def sample(self, gen: Run, key: jax.Array, n: int) -> tuple[np.ndarray, np.ndarray]:
        out = chain(gen, key, n, num_steps=int(self.settings.steps))
        return np.asarray(out["x"]), np.asarray(out["mean"])


def chain(run: Run, key: jax.Array, n: int, *, num_steps: int, keep_every: int = 0) -> dict[str, jax.Array]:
    """The DAE's Markov chain with the corruption it was trained with, from uniform noise
    (:func:`vaegen.objectives.denoising.sample_chain`)."""
    o = run.spec.objective.settings
    return denoising.sample_chain(run.model, run.variables, key, n, num_steps=num_steps, corruption=o.corruption,
                                  noise_level=o.noise_level, event_shape=run.event_shape, keep_every=keep_every)


@register_recipe("exact", label="", samples_from="p(x_d | x_<d), pixel by pixel", log_px=LogPx.EXACT,
                 log_px_meaning="exact log p(x) (autoregressive: the product of p(x_d | x_<d))",
                 needs=("exact_likelihood",), as_trained=True)
class ExactLikelihood(Recipe):
    """An autoregressive model (MADE): no latent variable, p(x) = prod_d p(x_d | x_<d) exactly; sampled
    pixel by pixel."""

    def log_px(self, gen: Run, x: Any, key: jax.Array, *, k: int, with_elbo: bool = False) -> Estimate:
        terms = objective_terms(gen.model, gen.variables, ExactLogLikelihood(), x, key,
                                batch_size=min(500, int(x.shape[0])))
        return Estimate({"log_px": np.asarray(terms["log_px"])}, "exact")

    def sample(self, gen: Run, key: jax.Array, n: int) -> tuple[np.ndarray, np.ndarray]:
        x, probs = _autoregressive_samples(gen.model, int(n), gen.variables, key)
        return np.asarray(x), np.asarray(probs)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _autoregressive_samples(model, n: int, variables, key):
    """x ~ p(x) pixel by pixel: ``(x [n, *event], p(x_d = 1 | x_<d) [n, *event])``."""
    return model.apply(variables, key, n, method="sample_with_probs")
