"""Loading, overriding and validating configurations.

A configuration is an ``ml_collections.ConfigDict`` built by a preset's ``get_config(arg)``
(a module in :mod:`vaegen.configs`, or any Python file), locked so that only existing keys can
be set.  Overrides ``config.a.b=value`` are parsed as Python *literals* (``ast.literal_eval``,
never evaluated as code) and must match the key's type.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import pathlib
import pkgutil
from typing import Any, Iterable

import ml_collections

from vaegen import configs as configs_pkg
from vaegen.errors import ConfigError


def presets() -> list[str]:
    """Names of the presets shipped in :mod:`vaegen.configs`."""
    return sorted(m.name for m in pkgutil.iter_modules(configs_pkg.__path__) if m.name != "default")


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Loads a preset or config file and applies overrides.

    Args:
      spec: a preset name (``vae_mlp_fmnist``), or a path to a Python file defining
        ``get_config(arg)``; either may carry an argument after a colon (``tiny:ae``).
      overrides: strings ``"a.b=value"`` (the ``--config.`` prefix optional).
    Returns:
      The locked, validated ConfigDict.
    """
    name, _, arg = spec.partition(":")
    arg = arg or None
    if name.endswith(".py") or "/" in name:
        path = pathlib.Path(name)
        if not path.is_file():
            raise ConfigError(f"config file {name!r} does not exist")
        module_spec = importlib.util.spec_from_file_location(f"_vaegen_config_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        if name not in presets() and name != "default":
            raise ConfigError(
                f"unknown config preset {name!r}; presets: {', '.join(presets())} "
                "(or give a path to a config .py file)"
            )
        module = importlib.import_module(f"vaegen.configs.{name}")
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config {spec!r} defines no get_config()")
    try:
        config = module.get_config(arg)
    except ValueError as e:
        raise ConfigError(f"config {spec!r}: {e}") from None
    config = ml_collections.ConfigDict(config)
    config.lock()
    apply_overrides(config, overrides)
    validate(config)
    return config


def _parse_value(text: str, current: Any, key: str) -> Any:
    if isinstance(current, str):
        # Strings are taken verbatim (quotes optional).
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            return text[1:-1]
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if isinstance(current, bool) and text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ConfigError(
            f"config.{key}: cannot parse {text!r} as a {type(current).__name__} literal"
        ) from None
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(current, (tuple, list)):
        if isinstance(value, (tuple, list)):
            return tuple(value)
        if isinstance(value, (int, float)):
            return (value,)
    raise ConfigError(
        f"config.{key} expects a {type(current).__name__} (currently {current!r}), got {text!r}"
    )


def parse_seeds(text: str, flag: str = "--train-seeds") -> list[int]:
    """Training seeds of replicate runs from ``"0,1,2"``: non-negative integers, in order, each once.

    Raises ``ValueError`` naming ``flag`` for anything else (the study runners turn it into their
    one-line usage error)."""
    try:
        seeds = list(dict.fromkeys(int(x) for x in text.split(",")))
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, e.g. 0,1,2; got {text!r}") from None
    if any(s < 0 for s in seeds):
        raise ValueError(f"{flag} must be >= 0; got {text!r}")
    return seeds


def seeded_run_name(name: str, seed: int, own_seed: int) -> str:
    """The workdir name of a replicate run: ``name`` for the config's own seed, ``name.seed<s>``
    for another (the study runners' layout, so an existing run is reused as one replicate)."""
    return name if int(seed) == int(own_seed) else f"{name}.seed{int(seed)}"


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
    """Applies ``"a.b=value"`` overrides in place; unknown keys and wrong types are errors."""
    for item in overrides:
        item = item.removeprefix("--").removeprefix("config.")
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like --config.key=value")
        key, text = item.split("=", 1)
        *parents, leaf = key.split(".")
        node = config
        for i, p in enumerate(parents):
            if not isinstance(node, ml_collections.ConfigDict) or p not in node:
                raise ConfigError(f"unknown config key {'.'.join(parents[: i + 1])!r} (in override {item!r})")
            node = node[p]
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise ConfigError(_unknown_key_message(config, key))
        current = node[leaf]
        if isinstance(current, ml_collections.ConfigDict):
            raise ConfigError(f"config.{key} is a section; set one of its keys: {sorted(current.keys())}")
        value = _parse_value(text, current, key)
        with node.unlocked():
            node[leaf] = value


def _unknown_key_message(config: ml_collections.ConfigDict, key: str) -> str:
    import difflib

    keys = flat_keys(config)
    close = difflib.get_close_matches(key, keys, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown config key {key!r}{hint}"


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict):
            out += flat_keys(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def flatten(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf."""
    d = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
    out: dict[str, Any] = {}

    def rec(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                rec(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v

    rec(d, "")
    return out


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def from_json(text: str) -> ml_collections.ConfigDict:
    """Rebuilds a locked config from :func:`to_json` output, on top of the current defaults so
    that keys added since are present with their defaults."""
    from vaegen.configs import default

    stored = json.loads(text)
    config = default.get_config()
    config.lock()
    unknown = []
    for key, value in flatten(stored).items():
        *parents, leaf = key.split(".")
        node = config
        try:
            for p in parents:
                node = node[p]
            current = node[leaf]
        except (KeyError, AttributeError):
            unknown.append(key)
            continue
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        with node.unlocked():
            node[leaf] = value
    if unknown:
        raise ConfigError(f"stored config has keys this version does not know: {unknown}")
    return config


# Keys that may differ between a run and its resumption (they do not change the result of the
# steps already taken).
RESUMABLE_KEYS = ("train.num_epochs", "train.progress", "train.eval_every_epochs",
                  "train.checkpoint_every_epochs", "train.keep_checkpoints", "eval.",
                  "train.steps_per_call", "train.max_consecutive_skips", "train.handle_signals")


def differences(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict, *, ignore: Iterable[str] = RESUMABLE_KEYS) -> list[str]:
    """Human-readable differences ``key: a -> b`` between two configs, skipping ``ignore``
    (exact keys, or prefixes ending in '.')."""
    fa, fb = flatten(a), flatten(b)
    ignore = tuple(ignore)

    def ignored(k):
        return any(k == i or (i.endswith(".") and k.startswith(i)) for i in ignore)

    return [f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}" for k in sorted(set(fa) | set(fb))
            if not ignored(k) and fa.get(k) != fb.get(k)]


# --- validation ------------------------------------------------------------------------------

def _choice(value: Any, choices: Iterable[str], key: str) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"config.{key}={value!r} is not one of {', '.join(choices)}")


def _positive(value: Any, key: str, *, allow_zero: bool = False) -> None:
    if allow_zero and value < 0 or not allow_zero and value <= 0:
        rel = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"config.{key}={value!r} must be {rel}")


def validate(c: ml_collections.ConfigDict) -> None:
    """Checks values and their combinations; raises :class:`ConfigError` naming the key."""
    from vaegen.data import datasets as data_lib
    from vaegen.model import latent as model_lib

    _choice(c.data.name, data_lib.DATASETS, "data.name")
    _choice(c.data.binarization, data_lib.BINARIZATIONS, "data.binarization")
    for k in ("validation_size", "max_train_examples", "max_test_examples"):
        _positive(c.data[k], f"data.{k}", allow_zero=True)

    _positive(c.model.latent_dim, "model.latent_dim")
    _validate_prior(c)
    _choice(c.model.likelihood, ("bernoulli", "gaussian", "discretized_logistic"), "model.likelihood")
    _positive(c.model.logistic_mixtures, "model.logistic_mixtures")
    if c.model.likelihood == "discretized_logistic" and c.data.binarization != "none":
        raise ConfigError(
            "config.model.likelihood=discretized_logistic models the 256 grey levels of 8-bit data, but "
            f"config.data.binarization={c.data.binarization!r} makes the data binary: set "
            "--config.data.binarization=none (or use --config.model.likelihood=bernoulli for binary data)"
        )
    _choice(c.model.gaussian_scale, ("fixed", "learned", "per_pixel"), "model.gaussian_scale")
    _positive(c.model.gaussian_fixed_scale, "model.gaussian_fixed_scale")
    _validate_networks(c, model_lib.NETWORKS)

    _choice(c.inference.posterior, ("diagonal_gaussian", "fixed_scale_gaussian", "point_mass", "full_covariance_gaussian",
                                    "flow"), "inference.posterior")
    _validate_amortization(c)
    _positive(c.inference.posterior_scale, "inference.posterior_scale")
    if c.inference.min_log_scale >= c.inference.max_log_scale:
        raise ConfigError("config.inference.min_log_scale must be below max_log_scale")

    _choice(c.objective.name, OBJECTIVE_NAMES, "objective.name")
    _positive(c.objective.num_samples, "objective.num_samples")
    _positive(c.objective.beta, "objective.beta", allow_zero=True)
    _positive(c.objective.kl_warmup_epochs, "objective.kl_warmup_epochs", allow_zero=True)
    _positive(c.objective.code_penalty, "objective.code_penalty", allow_zero=True)
    point_mass = c.inference.posterior == "point_mass"
    if c.objective.name in ("elbo", "iwae", "semi_amortized"):
        if point_mass:
            raise ConfigError(
                f"objective {c.objective.name!r} is undefined for a point-mass posterior (its KL to "
                "p(z) is +inf); use --config.objective.name=ae for an autoencoder"
            )
        if c.model.prior == "none":
            raise ConfigError(f"objective {c.objective.name!r} needs a prior; set config.model.prior")
    if c.objective.name == "ae" and not point_mass:
        raise ConfigError(
            "objective 'ae' (log p(x | z = f(x))) needs a deterministic encoder: "
            "set --config.inference.posterior=point_mass"
        )
    _validate_study_objectives(c, point_mass)

    _choice(c.optim.optimizer, ("adam", "adamw", "sgd"), "optim.optimizer")
    _positive(c.optim.learning_rate, "optim.learning_rate")
    _choice(c.optim.schedule, ("constant", "cosine", "exponential", "stages"), "optim.schedule")
    if not c.optim.stage_epochs or len(c.optim.stage_epochs) != len(c.optim.stage_factors):
        raise ConfigError("config.optim.stage_epochs and stage_factors must be non-empty and of equal length, got "
                          f"{len(c.optim.stage_epochs)} and {len(c.optim.stage_factors)}")
    if any(int(e) <= 0 for e in c.optim.stage_epochs) or any(float(f) <= 0 for f in c.optim.stage_factors):
        raise ConfigError("config.optim.stage_epochs and stage_factors must be positive")
    _choice(c.optim.normalize_gradients, ("none", "per_tensor", "global"), "optim.normalize_gradients")
    for k in ("warmup_epochs", "grad_clip_norm", "weight_decay", "momentum", "final_lr_fraction"):
        _positive(c.optim[k], f"optim.{k}", allow_zero=True)
    _positive(c.optim.eps, "optim.eps")  # a finite gradient then gives a finite Adam update (see vaegen.faults)
    if not 0 <= c.optim.b1 < 1 or not 0 <= c.optim.b2 < 1:
        raise ConfigError(f"config.optim.b1={c.optim.b1!r} and optim.b2={c.optim.b2!r} must be in [0, 1)")
    _positive(c.optim.decay_epochs, "optim.decay_epochs")
    _positive(c.optim.decay_rate, "optim.decay_rate")

    _positive(c.train.batch_size, "train.batch_size")
    _positive(c.train.num_epochs, "train.num_epochs", allow_zero=True)
    _positive(c.train.eval_every_epochs, "train.eval_every_epochs", allow_zero=True)
    _positive(c.train.checkpoint_every_epochs, "train.checkpoint_every_epochs")
    _positive(c.train.keep_checkpoints, "train.keep_checkpoints")
    _positive(c.train.max_consecutive_skips, "train.max_consecutive_skips")
    _positive(c.train.steps_per_call, "train.steps_per_call", allow_zero=True)
    _positive(c.train.early_stopping_patience, "train.early_stopping_patience", allow_zero=True)
    _positive(c.train.early_stopping_min_epochs, "train.early_stopping_min_epochs", allow_zero=True)
    if c.train.early_stopping_patience and not (c.data.validation_size or c.data.validation_mode == "split"):
        raise ConfigError("config.train.early_stopping_patience needs a validation split: set "
                          "config.data.validation_size > 0")
    if c.train.early_stopping_patience and not c.train.eval_every_epochs:
        raise ConfigError("config.train.early_stopping_patience needs validation: set config.train.eval_every_epochs > 0")
    _validate_hierarchy(c)
    _validate_protocol(c)
    _positive(c.eval.batch_size, "eval.batch_size")
    _positive(c.eval.num_samples, "eval.num_samples")
    _positive(c.eval.validation_num_samples, "eval.validation_num_samples")
    _validate_eval(c.eval)


def _validate_hierarchy(c: ml_collections.ConfigDict) -> None:
    """Two stochastic layers (config.model.top_latent_dim > 0, vaegen.hierarchical)."""
    _positive(c.model.top_latent_dim, "model.top_latent_dim", allow_zero=True)
    _choice(c.inference.hierarchy, ("bottom_up", "top_down"), "inference.hierarchy")
    if c.model.min_log_scale >= c.model.max_log_scale:
        raise ConfigError("config.model.min_log_scale must be below max_log_scale")
    if not c.model.top_latent_dim:
        return
    if c.inference.posterior != "diagonal_gaussian":
        raise ConfigError("with two stochastic layers (config.model.top_latent_dim > 0) each factor of q is a "
                          "diagonal Gaussian: set config.inference.posterior=diagonal_gaussian")
    if c.model.prior == "none":
        raise ConfigError("a model with two stochastic layers needs a prior p(z2): set config.model.prior")
    if c.model.prior == "vampprior" and c.inference.hierarchy != "top_down":
        raise ConfigError("a VampPrior on z2 is 1/K sum_k q(z2 | u_k) and needs q(z2 | x): set "
                          "config.inference.hierarchy=top_down (bottom_up inference has only q(z2 | z1))")
    if c.objective.name not in ("elbo", "iwae"):
        raise ConfigError(f"objective {c.objective.name!r} is not available with two stochastic layers; "
                          "use elbo or iwae")


def _validate_protocol(c: ml_collections.ConfigDict) -> None:
    """The validation-split mode and a named data protocol (vaegen.protocols)."""
    from vaegen.data import protocols as protocols

    _choice(c.data.validation_mode, ("random", "tail", "split"), "data.validation_mode")
    if c.data.validation_mode == "split" and c.data.name != "binarized_mnist":
        raise ConfigError("config.data.validation_mode=split uses the dataset's own validation split, which only "
                          "binarized_mnist has; use random or tail")
    if c.data.protocol:
        protocols.check(c)


PRIORS = ("standard_normal", "mixture", "vampprior", "none")
# Posteriors whose q(z | u) has a density and takes a batch of pseudo-inputs (the VampPrior's components).
VAMPPRIOR_POSTERIORS = ("diagonal_gaussian", "full_covariance_gaussian", "fixed_scale_gaussian")


def _validate_prior(c: ml_collections.ConfigDict) -> None:
    """p(z): its choice, the mixture's and the VampPrior's settings."""
    _choice(c.model.prior, PRIORS, "model.prior")
    _positive(c.model.prior_components, "model.prior_components")
    _choice(c.model.vampprior_init, ("random", "data"), "model.vampprior_init")
    _positive(c.model.vampprior_init_std, "model.vampprior_init_std")
    if c.model.prior == "vampprior" and c.inference.posterior not in VAMPPRIOR_POSTERIORS:
        raise ConfigError(
            f"config.model.prior=vampprior (p(z) = 1/K sum_k q(z | u_k)) needs a posterior with a density on a batch "
            f"of pseudo-inputs ({', '.join(VAMPPRIOR_POSTERIORS)}), not config.inference.posterior="
            f"{c.inference.posterior!r}")


# Trunk sections: (key, the networks it may be).  A conv_decoder produces per-pixel features for
# p(x | z); a conv_encoder reads images (x, or x's branch of a two-input trunk).
TRUNK_SECTIONS = (
    ("model.decoder", ("mlp", "conv_decoder")),
    ("model.top_decoder", ("mlp",)),
    ("inference.encoder", ("mlp", "conv_encoder")),
    ("inference.top_encoder", ("mlp", "conv_encoder")),
)


def _validate_networks(c: ml_collections.ConfigDict, networks: Iterable[str]) -> None:
    """Every trunk section (the schema of vaegen.configs.default.trunk)."""
    from vaegen.blocks.networks import ACTIVATIONS

    networks = tuple(networks)
    for key, allowed in TRUNK_SECTIONS:
        parent, name = key.split(".")
        section = c[parent][name]
        _choice(section.network, networks, f"{key}.network")
        if section.network not in allowed:
            raise ConfigError(f"config.{key}.network={section.network!r} cannot serve this trunk; choose one of "
                              f"{', '.join(allowed)}")
        if section.network == "conv_encoder" and key == "inference.top_encoder" and \
                c.inference.get("hierarchy", "bottom_up") == "bottom_up":
            raise ConfigError("config.inference.top_encoder.network='conv_encoder' reads images, but with "
                              "config.inference.hierarchy=bottom_up q(z2 | z1) reads z1; use an mlp")
        for widths in ("hidden", "branch_hidden"):
            if any(int(h) <= 0 for h in section.get(widths, ())):
                raise ConfigError(f"config.{key}.{widths} widths must be positive, got {tuple(section[widths])}")
        _choice(section.activation, ACTIVATIONS, f"{key}.activation")
        if section.network in ("conv_encoder", "conv_decoder"):
            lengths = tuple(len(section[k]) for k in ("conv_channels", "conv_kernels", "conv_strides"))
            if len(set(lengths)) != 1:
                raise ConfigError(
                    f"config.{key}: conv_channels, conv_kernels and conv_strides need one entry per convolution, "
                    f"got lengths {lengths[0]}, {lengths[1]} and {lengths[2]}")
            for k in ("conv_channels", "conv_kernels", "conv_strides"):
                if any(int(v) <= 0 for v in section[k]):
                    raise ConfigError(f"config.{key}.{k} must be positive, got {tuple(section[k])}")
            _positive(section.reshape_channels, f"{key}.reshape_channels")


def _validate_eval(e: ml_collections.ConfigDict) -> None:
    """The estimator settings of ``vaegen evaluate`` (``config.eval``)."""
    from vaegen.estimators import importance as estimators
    from vaegen.evaluation import evaluate as evaluation

    evaluation.parse_estimators(e.estimators)
    if any(int(k) < 1 for k in e.ks):
        raise ConfigError(f"config.eval.ks must be positive, got {e.ks}")
    _positive(e.chunk_size, "eval.chunk_size", allow_zero=True)
    _choice(e.is_proposal, estimators.STARTS, "eval.is_proposal")
    _positive(e.elbo_samples, "eval.elbo_samples")
    _positive(e.mi_samples, "eval.mi_samples")
    _positive(e.active_unit_threshold, "eval.active_unit_threshold", allow_zero=True)
    _positive(e.collapse_threshold, "eval.collapse_threshold", allow_zero=True)
    _choice(e.ais.start, estimators.STARTS, "eval.ais.start")
    _positive(e.ais.max_examples, "eval.ais.max_examples", allow_zero=True)
    _positive(e.ais.bdmc_examples, "eval.ais.bdmc_examples", allow_zero=True)
    try:
        evaluation.ais_from_config(e.ais)
    except ConfigError as err:
        raise ConfigError(f"config.eval.ais: {err}") from None


OBJECTIVE_NAMES = ("elbo", "iwae", "ae", "semi_amortized", "rae", "dae", "exact")


def _validate_study_objectives(c: ml_collections.ConfigDict, point_mass: bool) -> None:
    """The regularised and denoising autoencoders and the autoregressive model (model.kind)."""
    _choice(c.model.kind, ("latent_variable", "autoregressive"), "model.kind")
    name = c.objective.name
    if name in ("rae", "dae") and not point_mass:
        raise ConfigError(
            f"objective {name!r} trains an autoencoder and needs a deterministic encoder: "
            "set --config.inference.posterior=point_mass"
        )
    _positive(c.objective.decoder_l2, "objective.decoder_l2", allow_zero=True)
    _choice(c.objective.corruption, ("salt_and_pepper", "bit_flip", "gaussian"), "objective.corruption")
    if name == "dae":
        if c.objective.corruption == "gaussian":
            _positive(c.objective.noise_level, "objective.noise_level")
        elif not 0.0 < c.objective.noise_level < 1.0:
            raise ConfigError(f"config.objective.noise_level={c.objective.noise_level!r} is the probability that "
                              f"{c.objective.corruption} corrupts a pixel and must lie in (0, 1)")
        _positive(c.objective.walkback_steps, "objective.walkback_steps")
        if not 0.0 <= c.objective.walkback_continue <= 1.0:
            raise ConfigError(f"config.objective.walkback_continue={c.objective.walkback_continue!r} must lie in [0, 1]")
    autoregressive = c.model.kind == "autoregressive"
    if autoregressive != (name == "exact"):
        raise ConfigError(
            "an autoregressive model (config.model.kind=autoregressive) is trained on its exact log p(x) "
            "(config.objective.name=exact), and only it: set both or neither"
        )
    if autoregressive:
        if c.model.likelihood != "bernoulli":
            raise ConfigError("config.model.kind=autoregressive (MADE) models binary data: set "
                              "config.model.likelihood=bernoulli and a binarization protocol")
        if not c.model.made.hidden or any(int(h) <= 0 for h in c.model.made.hidden):
            raise ConfigError(f"config.model.made.hidden needs at least one positive width, got {c.model.made.hidden}")
        from vaegen.blocks.networks import ACTIVATIONS

        _choice(c.model.made.activation, ACTIVATIONS, "model.made.activation")
        _choice(c.model.made.ordering, ("natural", "random"), "model.made.ordering")


def _validate_amortization(c: ml_collections.ConfigDict) -> None:
    """The flow posterior, semi-amortized training and gap-evaluation keys."""
    from vaegen.blocks.networks import ACTIVATIONS

    _positive(c.inference.flow_layers, "inference.flow_layers")
    _positive(c.inference.flow_context_dim, "inference.flow_context_dim", allow_zero=True)
    if any(int(h) <= 0 for h in c.inference.flow_hidden):
        raise ConfigError(f"config.inference.flow_hidden widths must be positive, got {c.inference.flow_hidden}")
    _choice(c.inference.flow_activation, ACTIVATIONS, "inference.flow_activation")
    if c.inference.posterior == "flow" and c.model.latent_dim < 2:
        raise ConfigError("config.inference.posterior=flow needs config.model.latent_dim >= 2")
    _positive(c.objective.svi_steps, "objective.svi_steps", allow_zero=True)
    _positive(c.objective.svi_learning_rate, "objective.svi_learning_rate")
    _choice(c.objective.svi_optimizer, ("sgd", "adam"), "objective.svi_optimizer")
    _positive(c.objective.svi_momentum, "objective.svi_momentum", allow_zero=True)
    _positive(c.objective.svi_num_samples, "objective.svi_num_samples")
    _positive(c.objective.svi_grad_clip_norm, "objective.svi_grad_clip_norm", allow_zero=True)
    _choice(c.objective.svi_init, ("amortized", "prior"), "objective.svi_init")
    _choice(c.objective.svi_gradient, ("unrolled", "total", "stop"), "objective.svi_gradient")
    if c.objective.name == "semi_amortized" and c.inference.posterior not in (
            "diagonal_gaussian", "full_covariance_gaussian", "flow"):
        raise ConfigError("objective 'semi_amortized' refines a diagonal_gaussian, full_covariance_gaussian or flow "
                          f"posterior, not {c.inference.posterior!r}")
    g = c.eval.gaps
    for name in str(g.families).split(","):
        _choice(name.strip(), ("diag", "fullcov", "flow"), "eval.gaps.families")
    if "flow" in str(g.families) and c.model.latent_dim < 2:
        raise ConfigError("config.eval.gaps.families: the flow family needs config.model.latent_dim >= 2")
    _choice(g.init, ("amortized", "prior"), "eval.gaps.init")
    for k in ("num_steps", "test_examples", "train_examples"):
        _positive(g[k], f"eval.gaps.{k}", allow_zero=True)
    for k in ("learning_rate", "num_samples", "elbo_samples", "log_px_samples", "chunk_size"):
        _positive(g[k], f"eval.gaps.{k}")
