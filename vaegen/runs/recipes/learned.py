"""Learned ex-post densities: a normalizing flow, a second-stage VAE and a latent diffusion model,
each fitted to a run's codes by vaegen's own trainer and attached as its p(z).

Each density is a registered prior component (:mod:`vaegen.blocks.densities`); fitting it is a run of
model kind ``density`` whose data are the codes, in ``<workdir>/expost/<name>/fit`` (config.json,
metrics.jsonl, checkpoints: it resumes like any run and stops on non-finite steps with one line).
Its parameters, at ``params/prior``, become p(z) of the generative model.  What the reported log p(x)
then is (each recipe declares it):

* flow: p(z) exact, so importance sampling gives a stochastic lower bound on log p(x).
* second-stage VAE: p(z) is an unbiased importance-sampling estimate p^(z) (its own latent u),
  independent of the outer draws given z.  The outer average 1/K sum_k p(x | z_k) p^(z_k) / r(z_k)
  is then still unbiased for p(x), and by Jensen E[log of it] <= log p(x): a lower bound in
  expectation (not for every draw).
* diffusion: p(z) is replaced by exp(L^(z)), L^ a Monte Carlo estimate of the variational bound
  L(z) <= log p(z).  With the exact L the result would be a stochastic lower bound; with L^,
  E[exp L^] = exp(L) E[exp(L^ - L)] >= exp(L), by about exp(Var(L^) / 2), so it is a lower bound
  up to that term -- ``log_pz_mc_std`` in the fit's record gives its size.  Not ranked.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import time
from typing import Any

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from vaegen.blocks import densities as densities_lib
from vaegen.config import schema as config_schema
from vaegen.config.schema import RunSpec
from vaegen.data import checks as checks_lib
from vaegen.data import datasets
from vaegen.errors import ConfigError, DataError, RecipeError
from vaegen.model import latent as latent_lib
from vaegen.registry import Settings, setting, to_mapping
from vaegen.runs import codes as codes_lib
from vaegen.runs.recipes.store import keep_aside, read_json, write_json
from vaegen.runs.recipes.base import Fit, LogPx, Recipe, register_recipe, with_prior
from vaegen.runs.recipes.trained import EXACT_P_Z
from vaegen.runs.run import Run
from vaegen.train import checkpoint as checkpoint_lib
from vaegen.train import trainer as trainer_lib
from vaegen.train import workdir as workdir_lib

FIT_DIR = "fit"
"""The trainer's run directory of a fit, inside the recipe's directory."""


@dataclasses.dataclass(frozen=True)
class FitSettings(Settings):
    """How a density is fitted to codes with vaegen's trainer (Adam), shared by every recipe that
    fits a model of its own (the learned densities, the prior over a VQ-VAE's codes)."""

    epochs: int = setting(20, "epochs of the fit", gt=0)
    batch_size: int = setting(256, "batch of the fit", gt=0)
    learning_rate: float = setting(1e-3, "Adam's learning rate", gt=0)
    max_codes: int = setting(20000, "codes of the first max_codes training images to fit to", gt=1)
    codes: str = setting("sample", "fit to z ~ q(z|x) (sample) or E[z|x] (mean); an AE's codes are f(x) either way",
                         choices=codes_lib.CODE_KINDS)
    seed: int = setting(0, "seed of the codes, the fit and the samples", ge=0)
    grad_clip_norm: float = setting(10.0, "gradient clipping of the fit (0 = none)", ge=0)
    checkpoint_every: int = setting(5, "epochs between the fit's checkpoints (and the last)", gt=0)
    validate_every: int = setting(1, "epochs between its validation bounds in metrics.jsonl (0 = none)", ge=0)
    patience: int = setting(5, "early stopping on the validation codes' bound: validations without improvement "
                            "(0 = never); flows overfit a few thousand codes in 50-D within tens of epochs", ge=0)


@dataclasses.dataclass(frozen=True)
class FlowRecipeSettings(FitSettings):
    density: densities_lib.FlowDensitySettings = dataclasses.field(default_factory=densities_lib.FlowDensitySettings,
                                                                   metadata={"doc": "the flow's settings"})


@dataclasses.dataclass(frozen=True)
class TwoStageRecipeSettings(FitSettings):
    density: densities_lib.TwoStageSettings = dataclasses.field(default_factory=densities_lib.TwoStageSettings,
                                                                metadata={"doc": "the second-stage VAE's settings"})


@dataclasses.dataclass(frozen=True)
class DiffusionRecipeSettings(FitSettings):
    density: densities_lib.DiffusionSettings = dataclasses.field(default_factory=densities_lib.DiffusionSettings,
                                                                 metadata={"doc": "the diffusion model's settings"})


@dataclasses.dataclass(frozen=True)
class DensityFit:
    """A fitted learned density: ``spec`` (the density run's RunSpec), ``variables``
    (``{"params": {"prior": ...}}``), ``workdir`` (the density run's) and ``info`` (JSON-able:
    fit seconds, codes, held-out log p(z) on validation codes and what it is)."""

    name: str
    spec: RunSpec
    variables: Any
    workdir: pathlib.Path
    info: dict

    def with_settings(self, **settings: Any) -> "DensityFit":
        """The same fitted density with settings that do not change its parameters changed (e.g.
        ``sample_steps``, ``bound_samples`` or ``is_samples``); checked like any setting."""
        prior = self.spec.model.prior
        new = dataclasses.replace(prior.settings, **settings)
        model = dataclasses.replace(self.spec.model, prior=dataclasses.replace(prior, settings=new))
        return dataclasses.replace(self, spec=dataclasses.replace(self.spec, model=model))

    def prior_module(self):
        """The prior component (a Flax module returning p(z))."""
        return self.spec.model.prior.build(latent_dim=int(self.spec.model.latent_dim),
                                           event_shape=(int(self.spec.model.latent_dim),))

    def distribution(self) -> distrax.Distribution:
        """p(z) itself (distrax), bound to the fitted parameters."""
        return self.prior_module().apply({"params": self.variables["params"]["prior"]})

    def log_prob(self, z: np.ndarray | jax.Array) -> np.ndarray:
        """log p(z) for ``z [N, D]``, jitted in batches (exact, an estimate or a bound:
        ``info["log_pz_meaning"]``)."""
        return batched_log_prob(self, np.asarray(z, np.float32))

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        return self.distribution().sample(seed=key, sample_shape=(n,))


def batched_log_prob(fitted: DensityFit, z: np.ndarray, batch_size: int = 1000, key: jax.Array | None = None
                     ) -> np.ndarray:
    """log p(z) of ``z [N, D]`` in batches (with the Monte Carlo draws of ``key`` where given)."""
    module = fitted.prior_module()
    if key is None:
        fn = jax.jit(lambda params, z, k: module.apply({"params": params}).log_prob(z))
        key = jax.random.key(0)
    else:
        fn = jax.jit(lambda params, z, k: densities_lib.log_prob_estimate(module.apply({"params": params}), z, k))
    params = fitted.variables["params"]["prior"]
    return np.concatenate([np.asarray(fn(params, jnp.asarray(z[i:i + batch_size]), jax.random.fold_in(key, i)))
                           for i in range(0, z.shape[0], batch_size)])


# --- fitting with the trainer ---------------------------------------------------------------------------

def fit_spec(fit: FitSettings, *, num_validation: int, model: dict, objective: str, settings_of: str,
             settings_note: str, extra: dict | None = None) -> RunSpec:
    """The RunSpec of a fit to codes with the trainer: codes as real vectors given in memory, the
    ``model`` section (``kind``, ``latent_dim``, ``prior``), ``objective``, Adam and the trainer's
    settings from ``fit`` (early stopping on the validation codes when there are any), no TensorBoard.
    A bad setting of the fitted model is reported as a setting of ``settings_of`` (``settings_note``
    says how they are set)."""
    patience = int(fit.patience) if (num_validation and fit.validate_every) else 0
    mapping = {
        "seed": int(fit.seed),
        "data": {"binarization": "real", "validation_size": int(num_validation)},
        "model": {"likelihood": {"name": "gaussian"}, "init_output_bias_from_data": False, **model},
        "objective": {"name": objective},
        "optim": {"learning_rate": float(fit.learning_rate), "grad_clip_norm": float(fit.grad_clip_norm)},
        "train": {"batch_size": int(fit.batch_size), "num_epochs": int(fit.epochs), "progress": False,
                  "tensorboard": False, "keep_checkpoints": 1, "handle_signals": True,
                  "checkpoint_every_epochs": max(int(fit.checkpoint_every), 1),
                  "eval_every_epochs": int(fit.validate_every), "early_stopping_patience": patience},
        "eval": {"batch_size": 500},
        **(extra or {}),
    }
    section = "config.model.kind." if model.get("kind", {}).get("name") != "density" else "config.model.prior."
    try:
        return config_schema.to_spec(mapping)
    except ConfigError as e:
        raise ConfigError(f"{e} ({settings_note})".replace(section, f"{settings_of} setting ")) from None


def restore(spec: RunSpec, workdir: pathlib.Path, d: int) -> Any:
    """The fitted variables of the density run in ``workdir`` (its best checkpoint under early stopping)."""
    model = latent_lib.build_model(spec.model, spec.inference, (d,))
    template = jax.eval_shape(lambda: latent_lib.init_params(model, jax.random.key(0), (d,)))
    best = workdir / trainer_lib.BEST_DIR   # early stopping kept the best parameters there
    checkpointer = checkpoint_lib.Checkpointer(best if best.is_dir() else workdir / trainer_lib.CHECKPOINTS_DIR,
                                               read_only=True)
    try:
        epoch = checkpointer.latest_epoch()
        if epoch is None:
            raise FileNotFoundError(f"{workdir} holds no fitted density (no checkpoint)")
        variables, _ = checkpointer.restore(epoch, template)
    finally:
        checkpointer.close()
    return variables


def fit_status(workdir: pathlib.Path, spec: RunSpec) -> tuple[bool, int, int]:
    """``(finished, epochs done, epochs asked for)`` of the fit run in ``workdir``: finished when its
    last epoch was written or early stopping stopped it."""
    lines = workdir_lib.read_jsonl(workdir / "metrics.jsonl") if (workdir / "metrics.jsonl").exists() else []
    done = max((int(r.get("epoch", 0)) for r in lines), default=0)
    stopped = any(bool(r.get("early_stopping/stopped")) for r in lines)
    last = checkpoint_lib.Checkpointer(workdir / trainer_lib.CHECKPOINTS_DIR, read_only=True)
    try:
        written = last.latest_epoch() or 0
    finally:
        last.close()
    total = int(spec.train.num_epochs)
    return (written >= total or stopped), max(done, written), total


def check_finished(recipe: str, workdir: pathlib.Path, spec: RunSpec, run_workdir: Any) -> None:
    """Refuses (one line) a fit that was interrupted before its last epoch."""
    finished, done, total = fit_status(workdir, spec)
    if not finished:
        raise RecipeError(f"{workdir} holds an unfinished {recipe} fit (epoch {done} of {total}): run `vaegen expost "
                          f"--workdir {run_workdir} --density {recipe}` again to finish it (it resumes)")


def check_same_settings(recipe: str, workdir: pathlib.Path, spec: RunSpec, *, refit: bool) -> None:
    """A fit directory holding a fit made with other settings: kept aside with ``refit``, else refused."""
    stored_path = workdir / workdir_lib.CONFIG_FILE
    if not stored_path.exists():
        return
    stored = workdir_lib.read_stored(stored_path)
    changed = workdir_lib.differences(stored, to_mapping(spec))
    if not changed:
        return
    if refit:
        keep_aside(workdir.parent, (workdir.name,))
        return
    raise RecipeError(f"{workdir} holds a {recipe} fitted with other settings ({'; '.join(changed[:3])}"
                      f"{'; ...' if len(changed) > 3 else ''}); add --refit to fit anew (the old fit is kept beside it "
                      f"as {workdir.name}.<n>)")


def train_seconds(workdir: str | os.PathLike) -> float:
    """Time spent training a run: the sum of its epochs' seconds and compile time (metrics.jsonl)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return float("nan")
    return sum(float(r.get("epoch_seconds", 0.0)) + float(r.get("compile_seconds", 0.0))
               for r in workdir_lib.read_jsonl(path))


def too_few_codes(num: int, name: str, batch_size: int, latent_dim: int) -> None:
    need = max(int(batch_size), 2 * int(latent_dim), 10)
    if num < need:
        raise DataError(f"only {num} training codes to fit the {name} density to; it needs at least {need} "
                        f"(the fit's batch size {batch_size}, and 2 x D = {2 * latent_dim}): use more training "
                        "images (--max-codes) or a smaller --batch-size")


@dataclasses.dataclass(frozen=True)
class LearnedDensity(Recipe):
    """A density over codes fitted by vaegen's trainer (see the module)."""

    def directory(self, workdir: str | os.PathLike) -> pathlib.Path:
        return super().directory(workdir)

    def density_spec(self, latent_dim: int, *, num_validation: int, batch_size: int | None = None) -> RunSpec:
        """The RunSpec that fits this density to codes of dimension ``latent_dim`` with the trainer."""
        s = self.settings
        fit = s if batch_size is None else dataclasses.replace(s, batch_size=batch_size)
        return fit_spec(fit, num_validation=num_validation, objective="density", settings_of=self.name,
                        settings_note="density settings are set with --set KEY=VALUE",
                        model={"kind": {"name": "density"}, "latent_dim": int(latent_dim),
                               "prior": {"name": self.name, **to_mapping(s.density)}})

    def fit(self, run: Run, *, directory: str | os.PathLike | None = None, codes: np.ndarray | None = None,
            refit: bool = False) -> Fit:
        """Fits the density to ``run``'s codes (``codes [N, D]`` where given: the first ``max_codes``,
        the last 10% of them held out; else the run's training and validation codes, encoded as
        ``settings.codes`` says) in ``directory`` (default ``<workdir>/expost/<name>/fit``)."""
        self.check(run)
        s = self.settings
        d = int(run.spec.model.latent_dim)
        self.density_spec(d, num_validation=0)       # the settings, checked before encoding anything
        if codes is None:
            train, val, info = codes_lib.run_codes(run, max_codes=s.max_codes, seed=s.seed, codes=s.codes)
            batch_size = None
        else:
            codes = np.asarray(codes)[: s.max_codes]
            cut = int(0.9 * codes.shape[0])
            train, val = codes[:cut], codes[cut:]
            info = {"codes_are": "f(x), point-mass codes" if run.is_autoencoder else "z ~ q(z | x)",
                    "validation_codes_from": "the last 10% of the training codes"}
            batch_size = min(int(s.batch_size), cut)
        directory = (pathlib.Path(directory) if directory is not None
                     else self.directory(run.workdir) / FIT_DIR)
        fitted = self.fit_codes(train, val, directory, info=info, batch_size=batch_size, refit=refit)
        self.record_settings(directory)
        return Fit(self.name, directory, fitted, fitted.info, code_scale=train.std(0))

    def fit_codes(self, codes: np.ndarray, validation_codes: np.ndarray, directory: str | os.PathLike, *,
                  info: dict | None = None, batch_size: int | None = None, refit: bool = False) -> DensityFit:
        """Fits the density to ``codes [N, D]`` with vaegen's trainer in ``directory`` (resuming a fit
        there) and measures its held-out log p(z) on ``validation_codes [M, D]`` (M may be 0).

        Raises:
          vaegen.errors.DataError: non-finite or too few codes.
          vaegen.errors.ConfigError: bad density settings.
          vaegen.errors.RecipeError: ``directory`` holds a fit with other settings (and not ``refit``).
          vaegen.errors.NonFiniteError: the fit diverged (the directory keeps its checkpoints).
        """
        codes = checks_lib.check_real_array(codes, "the training codes")
        validation_codes = np.asarray(validation_codes, np.float32).reshape(-1, codes.shape[1])
        if validation_codes.size:
            validation_codes = checks_lib.check_real_array(validation_codes, "the validation codes")
        d = int(codes.shape[1])
        spec = self.density_spec(d, num_validation=int(validation_codes.shape[0]), batch_size=batch_size)
        too_few_codes(int(codes.shape[0]), self.name, spec.train.batch_size, d)
        directory = pathlib.Path(directory)
        check_same_settings(self.name, directory, spec, refit=refit)
        splits = datasets.Splits(train=codes, validation=validation_codes, test=validation_codes[:0],
                                 train_labels=None, validation_labels=None, test_labels=None,
                                 info={"name": "codes", "event_shape": [d],
                                       "sizes": {"train": int(codes.shape[0]),
                                                 "validation": int(validation_codes.shape[0])},
                                       **(info or {})})
        t0 = time.perf_counter()
        last = trainer_lib.train_and_evaluate(spec, directory, splits=splits)
        fit_seconds = time.perf_counter() - t0
        variables = restore(spec, directory, d)
        fitted = DensityFit(self.name, spec, variables, directory, {})
        lp = np.asarray(batched_log_prob(fitted, validation_codes)) if validation_codes.shape[0] else np.zeros((0,))
        meaning = spec.model.prior.trait("log_prob")
        mc_std = None
        if lp.size > 1 and meaning != "exact":  # a second, independent estimate: its spread is the Monte Carlo error
            other = batched_log_prob(fitted, validation_codes[:1000], key=jax.random.key(int(self.settings.seed) + 7919))
            mc_std = float(np.std(lp[:1000] - other) / math.sqrt(2.0))
        s = self.settings
        result = {"density": self.name, "settings": spec.model.prior.to_mapping(), "num_codes": int(codes.shape[0]),
                  "latent_dim": d, "epochs": int(s.epochs), "batch_size": int(spec.train.batch_size),
                  "learning_rate": float(s.learning_rate), "codes": s.codes,
                  "fit_seconds": fit_seconds, "fit_seconds_note": "this call (0 work if the fit was already done)",
                  "train_metrics": last,
                  "validation_log_pz": float(lp.mean()) if lp.size else None,
                  "validation_log_pz_stderr": float(lp.std(ddof=1) / np.sqrt(lp.size)) if lp.size > 1 else None,
                  "num_validation_codes": int(lp.size), "log_pz_meaning": meaning,
                  "log_pz_mc_std": mc_std, "log_pz_mc_std_note": ("Monte Carlo standard deviation of one code's "
                                                                 "log p(z) estimate (None: exact)"),
                  "log_px_meaning": self.trait("log_px_meaning"), **(info or {})}
        write_json(directory / "fitted.json", result)
        return dataclasses.replace(fitted, info=result)

    def load_fit(self, run: Run, *, directory: str | os.PathLike | None = None) -> Fit:
        self.check(run)
        directory = pathlib.Path(directory) if directory is not None else self.directory(run.workdir) / FIT_DIR
        config = directory / workdir_lib.CONFIG_FILE
        if not config.exists():
            raise FileNotFoundError(f"{directory} holds no fitted {self.name} density; fit one with "
                                    f"`vaegen expost --workdir {run.workdir} --density {self.name}`")
        spec = workdir_lib.parse_stored(RunSpec, config)
        check_finished(self.name, directory, spec, run.workdir)
        variables = restore(spec, directory, int(spec.model.latent_dim))
        info = {}
        for record, key in ((directory / "fitted.json", None), (directory.parent / "eval.json", "density")):
            if record.exists():   # fitted.json; a fit of 0.2 recorded its info in the evaluation beside it
                data = read_json(record, remedy="run `vaegen expost` again to rewrite it")
                info = data if key is None else data.get(key, {})
                break
        fitted = DensityFit(self.name, spec, variables, directory, info)
        code_scale = None
        if run.is_autoencoder:
            train, _, _ = codes_lib.run_codes(run, max_codes=int(info.get("num_codes", 5000)) or 5000, seed=0)
            code_scale = train.std(0)
        return Fit(self.name, directory, fitted, info, code_scale=code_scale)

    def fit_seconds(self, fit: Fit) -> float | None:
        """The trainer's epochs and compilation (metrics.jsonl): a reused fit reports the time it took."""
        return train_seconds(fit.directory)

    def describe_fit(self, fit: Fit) -> str:
        info = fit.info
        held = ("n/a" if info.get("validation_log_pz") is None else
                f"{info['validation_log_pz']:.3f} +- {info['validation_log_pz_stderr']:.3f} nats "
                f"({info['log_pz_meaning']})")
        return (f"fitted the {self.name} density to {info.get('num_codes')} training codes ({info.get('codes_are')}) "
                f"in {info.get('fit_seconds', 0.0):.1f} s; held-out log p(z) on {info.get('num_validation_codes')} "
                f"validation codes: {held}; fit in {fit.directory}")

    def attach(self, run: Run, fit: Fit, *, code_scale: np.ndarray | None = None) -> Run:
        self.check(run)
        fitted: DensityFit = fit.value
        d = int(run.spec.model.latent_dim)
        if int(fitted.spec.model.latent_dim) != d:
            raise RecipeError(f"the {self.name} density in {fit.directory} is over {fitted.spec.model.latent_dim} "
                              f"dimensions, the model's z over {d}: it was fitted to another run")
        scale = code_scale if code_scale is not None else fit.code_scale
        model, variables = with_prior(run, fitted.prior_module(), fitted.variables["params"]["prior"], code_scale=scale)
        return dataclasses.replace(run, model=model, variables=variables, recipe=self.selected)


register_recipe("flow", settings=FlowRecipeSettings, label="ex-post flow", samples_from="flow on codes", tag="flow",
                log_px=LogPx.STOCHASTIC_LOWER_BOUND, log_px_meaning=EXACT_P_Z, needs=("continuous_codes",),
                fitted=True,
                summary="A normalizing flow (masked autoregressive or coupling layers) fitted to the codes by the "
                        "trainer: exact log p(z).")(LearnedDensity)
register_recipe("two_stage", settings=TwoStageRecipeSettings, label="ex-post second-stage VAE",
                samples_from="second-stage VAE on codes", tag="two_stage", log_px=LogPx.LOWER_BOUND_IN_EXPECTATION,
                log_px_meaning=("stochastic lower bound on log p(x) in expectation (importance sampling with an "
                                "unbiased importance-sampling estimate of p(z) inside: the average stays unbiased for "
                                "p(x), its log is below log p(x) in expectation by Jensen)"),
                needs=("continuous_codes",), fitted=True,
                summary="A second VAE fitted to the codes (Dai & Wipf 2019): log p(z) by importance sampling over its "
                        "own latent.")(LearnedDensity)
register_recipe("diffusion", settings=DiffusionRecipeSettings, label="ex-post diffusion",
                samples_from="diffusion on codes", tag="diffusion", log_px=LogPx.BIASED,
                log_px_meaning=("stochastic lower bound on log p(x) (importance sampling with p(z) replaced by exp of "
                                "its variational lower bound; the bound is itself a Monte Carlo estimate, whose exp "
                                "overshoots it by about exp(Var / 2): a lower bound up to that, Var = log_pz_mc_std^2 "
                                "per code)"),
                needs=("continuous_codes",), fitted=True,
                cannot_code="its p(z) is known only through a Monte Carlo estimate of a variational bound, which "
                            "assigns no probability to a quantized code",
                summary="A latent diffusion model (a variational diffusion model) fitted to the codes: log p(z) >= its "
                        "variational bound, a Monte Carlo estimate.")(LearnedDensity)
