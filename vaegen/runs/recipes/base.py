"""Ways a trained run becomes a model with a p(x): recipes, each declared once.

A VAE defines p(x) = E_p(z)[p(x | z)] by construction; an autoencoder defines p(x | z) at its codes
and no p(z).  What turns a trained run into a generative model is a **recipe**: its own prior, N(0, I)
attached ad hoc, a density fitted to its codes afterwards (a Gaussian mixture, a flow, a second-stage
VAE, a latent diffusion model), a prior over a VQ-VAE's discrete codes, a denoising AE's Markov
chain, or an autoregressive model's exact likelihood.  Each is a registered component of
:data:`RECIPES`, declared once where it is implemented::

    @register_recipe("gmm", settings=MixtureRecipeSettings, label="ex-post GMM", samples_from="GMM on codes",
                     tag="gmm", log_px=LogPx.STOCHASTIC_LOWER_BOUND, needs=("continuous_codes",), fitted=True)
    class GaussianMixtureRecipe(Recipe):
        '''p(z) = sum_k pi_k N(z; mu_k, Sigma_k) fitted to the codes (Ghosh et al. 2020).'''
        def fit(self, run, *, directory=None, codes=None): ...
        def load_fit(self, run, *, directory=None): ...
        def attach(self, run, fit, *, code_scale=None): ...

and everything else reads that declaration: ``vaegen.load(workdir, density=NAME)``, ``vaegen
expost``, ``vaegen sample/evaluate --density``, the comparison study's rows and their labels, the
report's wording about what each log p(x) is, and the docs' table (``vaegen config --components
recipe``).  A researcher's own recipe is a module of theirs that registers one the same way
(docs/own-recipe.md).

The declared traits:

``label``         how a table names it after the model's label ("ex-post GMM": "AE + ex-post GMM");
                  empty for recipes that are the model as trained.
``samples_from``  what its samples are drawn from ("GMM on codes").
``tag``           the suffix of its rows' names in a study (``ae+gmm``; empty: the model's name).
``log_px``        what the log p(x) reported with it is (:class:`LogPx`).
``log_px_meaning``  the sentence every table and JSON record carries about it.
``needs``         what it needs of the run (:data:`CAPABILITIES`); a run without one is refused with
                  one line (:class:`vaegen.errors.RecipeError`).
``fitted``        whether it is fitted to the run (``vaegen expost`` fits it; loading finds the fit).
``reports_elbo``  whether a study reports the ELBO of q(z|x) with this p(z) (the prior q was trained with).
``as_trained``    whether it is the run as trained (what a run is when no recipe is asked for: the one of
                  these whose needs the run meets, :func:`as_trained`).
``cannot_code``   why the model it makes cannot code images losslessly (:func:`vaegen.compress`), or empty:
                  it codes with the coder its structure admits (bits back for a q with a density or a
                  discrete q, the quantized code for a point mass, the discrete codes, pixel by pixel).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import os
import types
import pathlib
from typing import Any, Callable, Sequence

import jax
import numpy as np

from vaegen import files as files_lib
from vaegen.blocks import posteriors as posteriors_lib
from vaegen.config.schema import RunSpec
from vaegen.errors import RecipeError
from vaegen.estimators import importance as importance_lib
from vaegen.model import latent as latent_lib
from vaegen.objectives.bounds import ELBO, objective_terms
from vaegen.registry import Component, NoSettings, Registry, Selected, Settings, Trait, parse, to_mapping
from vaegen.runs.run import Run

SETTINGS_SUFFIX = ".settings.json"
"""A fit's recorded recipe settings: ``<fit directory>/<name>.settings.json``."""

EXPOST_DIR = "expost"
"""Where a run keeps what was fitted to its codes: ``<workdir>/expost/``."""



class LogPx(enum.Enum):
    """What a reported log p(x) is.  ``rankable``: whether tables rank it against the others."""

    EXACT = "exact"
    STOCHASTIC_LOWER_BOUND = "stochastic lower bound"
    LOWER_BOUND_IN_EXPECTATION = "lower bound in expectation"
    BIASED = "biased estimate, not ranked"
    INTRACTABLE = "intractable"
    UNDEFINED = "undefined"

    @property
    def rankable(self) -> bool:
        return self in (LogPx.EXACT, LogPx.STOCHASTIC_LOWER_BOUND, LogPx.LOWER_BOUND_IN_EXPECTATION)

    @property
    def mark(self) -> str:
        """The table's footnote mark: † a lower bound in expectation, ‡ a biased estimate."""
        return {LogPx.LOWER_BOUND_IN_EXPECTATION: "†", LogPx.BIASED: "‡"}.get(self, "")


RECIPES = Registry("recipe", "ways a trained run gets p(x) (vaegen.load(W, density=NAME), --density NAME)",
                   "none: a recipe is built from its settings alone", traits=[
    Trait("label", str, "", "how a table names it after the model's label (\"ex-post GMM\": \"AE + ex-post GMM\"); "
          "empty: the model as trained"),
    Trait("samples_from", str, "", "what its samples are drawn from (a table's column)"),
    Trait("tag", str, "", "the suffix of its rows' names in a study (ae+gmm); empty: the model's name"),
    Trait("log_px", LogPx, LogPx.STOCHASTIC_LOWER_BOUND, "what the log p(x) reported with it is"),
    Trait("log_px_meaning", str, "", "the sentence every table and record carries about its log p(x)"),
    Trait("needs", tuple, (), "what it needs of the run: capabilities (vaegen.runs.recipes.base.CAPABILITIES)"),
    Trait("fitted", bool, False, "it is fitted to the run (vaegen expost fits it; loading reads the fit)"),
    Trait("reports_elbo", bool, False, "a study reports the ELBO of q(z|x) with this p(z) (the prior q was trained "
          "with)"),
    Trait("as_trained", bool, False, "it is the run as trained (what a run is when no recipe is asked for)"),
    Trait("cannot_code", str, "", "why the model it makes cannot code images losslessly (empty: it codes)"),
])


# --- what a run offers, what a recipe needs ----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Capability:
    """Something a recipe may need of a run: ``test(run)``, and the reason a run lacks it."""

    name: str
    meaning: str
    test: Callable[[Run], bool]
    missing: Callable[[Run], str]


def _kind(run: Run) -> str:
    return run.spec.model.kind.name


def codes_kind(run: Run) -> str:
    """What the run's latent codes are: ``continuous``, ``discrete`` (a VQ-VAE's codebook indices, or a
    discrete latent variable's values) or ``none``."""
    if not run.has_latents:
        return "none"
    discrete = run.spec.model.kind.trait("latents") == "discrete" or run.spec.inference.posterior.trait("discrete")
    return "discrete" if discrete else "continuous"


CAPABILITIES: dict[str, Capability] = {c.name: c for c in (
    Capability("latents", "a latent variable z", lambda r: r.has_latents,
               lambda r: f"has no latent variable (model.kind={_kind(r)!r}: it defines p(x) directly)"),
    Capability("prior", "a p(z) of its own", lambda r: r.has_latents and r.has_prior,
               lambda r: "has no p(z) of its own (an autoencoder); attach one: --density standard_normal, or fit one "
                         "with `vaegen expost`"),
    Capability("no_prior", "no p(z) of its own", lambda r: r.has_latents and not r.has_prior,
               lambda r: "has a p(z) of its own: use --density own"),
    Capability("continuous_codes", "continuous codes z in R^D", lambda r: codes_kind(r) == "continuous",
               lambda r: ("has discrete codes (points of its codebook): use --density code_prior" if codes_kind(r) == "discrete"
                          else f"has no codes (model.kind={_kind(r)!r}: no latent variable)")),
    Capability("discrete_codes", "discrete codes (a VQ-VAE's codebook indices, a discrete latent variable)",
               lambda r: codes_kind(r) == "discrete", lambda r: f"has no discrete codes (model.kind={_kind(r)!r})"),
    Capability("codebook", "discrete codes (a VQ-VAE's codebook indices)",
               lambda r: r.spec.model.kind.trait("latents") == "discrete",
               lambda r: f"has no discrete codes (model.kind={_kind(r)!r}; a prior over codes needs a VQ-VAE: "
                         "`vaegen train --config vq_mlp_fmnist`)"),
    Capability("markov_chain", "a denoising Markov chain (an objective that defines one)",
               lambda r: r.spec.objective.trait("markov_chain"),
               lambda r: f"defines no Markov chain (objective {r.spec.objective.name!r}; the denoising AE's is dae)"),
    Capability("exact_likelihood", "an exact log p(x) (an autoregressive model)",
               lambda r: r.spec.model.kind.trait("exact_log_likelihood"),
               lambda r: f"has no exact log p(x) (model.kind={_kind(r)!r})"),
)}
"""Everything a recipe may declare in ``needs``."""


# --- fitted results ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Fit:
    """What a recipe fitted to a run (or nothing, for recipes that fit nothing).

    Attributes:
      recipe: the recipe's name.
      directory: where the fit is kept (None: nothing saved).
      value: the fitted object (a :class:`vaegen.runs.recipes.mixture.FittedMixture`, a
        :class:`vaegen.runs.recipes.learned.DensityFit`, ...).
      info: JSON-able: how it was fitted and what it measured.
      code_scale: ``[D]`` standard deviation of the codes it was fitted to (sigma of the proposal
        around an autoencoder's code), where known.
    """

    recipe: str
    directory: pathlib.Path | None = None
    value: Any = None
    info: dict = dataclasses.field(default_factory=dict)
    code_scale: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Per-example values of a log p(x) estimate on images ``x [N, *event]``: ``values`` maps a
    name (``log_px``, ``elbo``, ``kl``, ...) to float ``[N]`` arrays in nats; ``estimator`` says
    how ``log_px`` was obtained; ``extra`` holds JSON-able summaries."""

    values: dict[str, np.ndarray]
    estimator: str
    extra: dict = dataclasses.field(default_factory=dict)


# --- the base class ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Recipe:
    """A way a trained run gets p(x).  Subclasses override what applies; the declaration (label,
    what log p(x) is, what it needs) is the registry's (:data:`RECIPES`), read with
    :meth:`trait`.

    Attributes:
      name: its registered name.
      settings: its typed settings.
    """

    name: str
    settings: Settings

    # --- the declaration -------------------------------------------------------------------------
    @property
    def component(self):
        return RECIPES.get(self.name)

    def trait(self, key: str) -> Any:
        return self.component.trait(key)

    @property
    def selected(self) -> Selected:
        """This recipe with its settings, as a run records it (:attr:`vaegen.Run.recipe`)."""
        return Selected(RECIPES.kind, self.name, self.settings)

    @property
    def log_px_kind(self) -> LogPx:
        return self.trait("log_px")

    @property
    def fitted(self) -> bool:
        return bool(self.trait("fitted"))

    def samples_from(self, spec: RunSpec) -> str:
        """What samples of a run of ``spec`` with this recipe are drawn from (a table's column)."""
        return self.trait("samples_from")

    def label(self, model_label: str) -> str:
        """A table's label of the model ``model_label`` with this recipe ("AE + ex-post GMM")."""
        own = self.trait("label")
        return f"{model_label} + {own}" if own else model_label

    def check(self, run: Run) -> None:
        """Raises :class:`vaegen.errors.RecipeError` (one line) if ``run`` lacks what this recipe needs."""
        for need in self.trait("needs"):
            cap = CAPABILITIES[need]
            if not cap.test(run):
                raise RecipeError(f"--density {self.name} needs {cap.meaning}, and the run in {run.workdir} "
                                  f"{cap.missing(run)}")

    # --- fitting and loading ---------------------------------------------------------------------
    def directory(self, workdir: str | os.PathLike) -> pathlib.Path:
        """Where its fit to the run in ``workdir`` is kept."""
        return pathlib.Path(workdir) / EXPOST_DIR / self.name

    def fit(self, run: Run, *, directory: str | os.PathLike | None = None, codes: np.ndarray | None = None,
            refit: bool = False) -> Fit:
        """Fits the recipe to ``run`` (its training codes; ``codes [N, D]`` where the caller has them) and
        saves the fit in ``directory`` (default :meth:`directory`); reuses a fit made with the same
        settings; ``refit`` replaces one made with other settings (the old one is kept aside)."""
        self.check(run)
        return Fit(self.name)

    def load_fit(self, run: Run, *, directory: str | os.PathLike | None = None) -> Fit:
        """The fit made before (:meth:`fit`, ``vaegen expost``), read without fitting anything.
        FileNotFoundError when there is none; :class:`vaegen.errors.RecipeError` when it is unfinished."""
        self.check(run)
        return Fit(self.name)

    def fit_seconds(self, fit: Fit) -> float | None:
        """Seconds the fit took when it was made (a reused fit reports the time it took then)."""
        return fit.info.get("fit_seconds")

    def record_settings(self, directory: str | os.PathLike) -> None:
        """Writes this recipe's settings beside its fit (``<name>.settings.json``), so that a run loaded with
        the fit later carries the settings it was fitted with (:meth:`as_fitted`)."""
        path = pathlib.Path(directory) / f"{self.name}{SETTINGS_SUFFIX}"
        files_lib.write_json(path, {"recipe": self.name, "settings": to_mapping(self.settings)}, kind="eval",
                             default=list)

    def as_fitted(self, fit: Fit) -> "Recipe":
        """This recipe with the settings its fit was made with (recorded beside it; as it is where none
        were recorded, e.g. a fit made by vaegen 0.2)."""
        if fit.directory is None:
            return self
        path = pathlib.Path(fit.directory) / f"{self.name}{SETTINGS_SUFFIX}"
        if not path.is_file():
            return self
        record = files_lib.read_json(path, what="record of a recipe's settings",
                                     fix="fit the recipe again with `vaegen expost --refit`")
        try:
            settings = parse(type(self.settings), record["settings"], self.name)
        except (ValueError, KeyError, TypeError) as e:
            raise RecipeError(f"{path} is damaged ({type(e).__name__}: {e}); fit the recipe again with `vaegen "
                              "expost --refit`") from None
        return dataclasses.replace(self, settings=settings)

    def describe_fit(self, fit: Fit) -> str:
        """One line saying what was fitted, to what, and what it measured on held-out codes."""
        return f"{self.name}: nothing to fit" if fit.directory is None else f"fitted {self.name} in {fit.directory}"

    def attach(self, run: Run, fit: Fit, *, code_scale: np.ndarray | None = None) -> Run:
        """``run`` as the generative model this recipe makes of it: a new :class:`vaegen.Run` whose model
        samples and evaluates with the recipe's p(z) (``run`` itself for recipes that are the model as
        trained).  ``code_scale [D]``: sigma of the proposal around an autoencoder's code
        (:class:`vaegen.blocks.posteriors.CodeProposal`); computed from the training codes when needed
        and not given."""
        self.check(run)
        return dataclasses.replace(run, recipe=self.selected)

    # --- measuring ----------------------------------------------------------------------------------
    def log_px(self, gen: Run, x: Any, key: jax.Array, *, k: int, with_elbo: bool = False) -> Estimate:
        """log p(x) of the generative run ``gen`` (from :meth:`attach`) on ``x [N, *event]``: importance
        sampling with ``k`` draws from q(z|x) (a point-mass q: the proposal around the code), example i
        with ``fold_in(fold_in(key, 1), i)``; ``with_elbo``: the ELBO and KL as well (with
        ``fold_in(key, 0)``).  Raises :class:`vaegen.errors.RecipeError` where log p(x) is not defined."""
        return importance_log_px(gen, x, key, k=k, with_elbo=with_elbo)

    def evaluate(self, gen: Run, xs: Any, key: jax.Array, *, k: int) -> Estimate | None:
        """What :func:`vaegen.evaluate` reports for ``gen`` on ``xs [N, *event]`` when this recipe measures
        it its own way (per-example ``log_px``, ``elbo``, ... with ``k`` samples; ``extra["meanings"]``
        says what each is), or None: the registered estimators apply (the default)."""
        return None

    def sample(self, gen: Run, key: jax.Array, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(x [n, *event], display [n, *event])``: ``n`` samples of the generative run ``gen`` and the
        images that show them (E[x | z] for a latent-variable model)."""
        x, mean = _ancestral(gen.model, int(n), gen.variables, key)
        return np.asarray(x), np.asarray(mean)



def register_recipe(name: str, *, settings: type = NoSettings, aliases: Sequence[str] = (), summary: str | None = None,
                    **traits: Any) -> Callable[[type[Recipe]], type[Recipe]]:
    """Class decorator registering a :class:`Recipe` subclass under ``name`` in :data:`RECIPES`, with its
    settings dataclass and its declared traits (``label``, ``samples_from``, ``tag``, ``log_px``,
    ``log_px_meaning``, ``needs``, ``fitted``: see the module).  One class may be registered under
    several names (each with its own ``summary``; default the class docstring's first paragraph)."""
    for need in traits.get("needs", ()):
        if need not in CAPABILITIES:
            raise TypeError(f"recipe {name!r} needs {need!r}, which is not a capability ({', '.join(CAPABILITIES)})")

    def decorate(cls: type[Recipe]) -> type[Recipe]:
        def build(settings_obj: Settings) -> Recipe:
            return cls(name, settings_obj)

        doc = summary if summary is not None else (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
        RECIPES.add(Component(kind=RECIPES.kind, name=name, settings=settings, build=build, summary=doc,
                              aliases=tuple(aliases), traits=types.MappingProxyType(dict(traits)),
                              module=cls.__module__, file=inspect.getsourcefile(cls) or ""))
        return cls

    return decorate


def recipe(name: str, /, **settings: Any) -> Recipe:
    """The recipe ``name`` with its default settings (``settings`` changed): ``recipe("gmm", components=5)``."""
    return RECIPES.select(name, **settings).build()


def as_trained(run: Run) -> Recipe:
    """The recipe that is ``run`` as trained: its own prior, no prior (an autoencoder), or an exact
    likelihood (an autoregressive model) -- the ``as_trained`` recipe whose needs the run meets."""
    if run.recipe is not None:
        return run.recipe.build()
    for component in RECIPES:
        if component.trait("as_trained"):
            r = component.build(component.settings())
            if all(CAPABILITIES[n].test(run) for n in r.trait("needs")):
                return r
    raise RecipeError(f"no recipe describes the run in {run.workdir} as trained")


def selected(value: str | Any) -> Recipe:
    """A recipe object from a name or a :class:`vaegen.registry.Selected` recipe."""
    if isinstance(value, Recipe):
        return value
    if isinstance(value, str):
        return recipe(value)
    return value.build()


# --- shared pieces --------------------------------------------------------------------------------------

STANDARD_PROPOSAL = ("scale mixture of N(f(x), (s·σ_codes)²), s ∈ {"
                     + ", ".join(f"{s:g}" for s in posteriors_lib.DEFAULT_RELATIVE_SCALES) + "}")


def proposal_of(gen: Run) -> str:
    """What importance sampling of ``gen`` draws from."""
    return STANDARD_PROPOSAL if isinstance(gen.model.posterior, posteriors_lib.CodeProposal) else "q(z|x)"


def importance_log_px(gen: Run, x: Any, key: jax.Array, *, k: int, with_elbo: bool) -> Estimate:
    """Importance-sampled log p(x) (``k`` samples from ``gen``'s q(z|x) or its proposal around the
    code) and optionally the ELBO and KL (analytic), per example over ``x [M, *event]``, nats."""
    log_joint, proposal = importance_lib.model_functions(gen.model, gen.variables)
    est = importance_lib.importance_sampling(log_joint, proposal, x, jax.random.fold_in(key, 1), num_samples=k)
    values = {"log_px": np.asarray(est["log_px"])}
    if with_elbo:
        el = objective_terms(gen.model, gen.variables, ELBO(), x, jax.random.fold_in(key, 0),
                             batch_size=min(500, x.shape[0]))
        values["elbo"] = np.asarray(el["elbo"])
        values["kl"] = np.asarray(el["kl"])
    return Estimate(values, f"IS, k={int(k)}, proposal {proposal_of(gen)}")


def with_prior(run: Run, prior: Any, prior_params: Any, *, code_scale: np.ndarray | None,
               relative_scales: Sequence[float] = posteriors_lib.DEFAULT_RELATIVE_SCALES) -> tuple[Any, Any]:
    """``(model, variables)``: ``run``'s model with the prior module ``prior`` (parameters
    ``prior_params``; None: none) as p(z).  The likelihood p(x | z) and the encoder are the run's,
    parameter for parameter; a point-mass q(z|x) is replaced by the proposal around the code
    (:class:`vaegen.blocks.posteriors.CodeProposal`, sigma = ``code_scale [D]``)."""
    params = dict(run.variables["params"])
    if prior_params is None:
        params.pop("prior", None)
    else:
        params["prior"] = prior_params
    posterior = run.model.posterior
    if posteriors_lib.is_point_mass(posterior):
        if code_scale is None:
            raise ValueError("an autoencoder needs code_scale (std of its codes) for the proposal around f(x)")
        posterior, params["posterior"] = posteriors_lib.code_proposal(posterior, params["posterior"], code_scale,
                                                                      relative_scales)
    model = latent_lib.LatentVariableModel(prior=prior, likelihood=run.model.likelihood, posterior=posterior)
    return model, {**run.variables, "params": params}


# Jitted with the (hashable) model as a static argument: models with equal structure (the VAE and
# the beta-VAEs, say) share one compilation.

@functools.partial(jax.jit, static_argnums=(0, 1))
def _ancestral(model, n: int, variables, key):
    """z ~ p(z), x ~ p(x | z): ``(x [n, *event], E[x | z] [n, *event])``."""
    def f(m):
        z, x = m.sample_with_latents(key, n)
        return x, m.p_x_given_z(z).mean()

    return model.apply(variables, method=f)
