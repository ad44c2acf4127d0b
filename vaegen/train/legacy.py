"""Workdirs written before components had sections of their own: their ``config.json``, translated.

Up to version 0.1 a run's config was flat: ``model.prior = "vampprior"`` beside
``model.prior_components``, one trunk section with every network's keys, ``inference.flow_*``,
``objective.svi_*`` and so on.  :func:`translate` maps such a config (as stored, a JSON
mapping) onto the current shape, where each component is a section ``{name, settings...}`` of
exactly its own settings, so that ``vaegen.load``, ``vaegen evaluate`` and a resumed ``vaegen
train`` use an old workdir as it is.  Nothing in the workdir is rewritten: the stored file keeps
its old shape, and its checkpoints keep the fingerprint of that shape.

Keys that 0.1 filled in with defaults when they were missing from an older file are filled in
with the same defaults here (:data:`V1_DEFAULTS`).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from vaegen.errors import ConfigError


def is_legacy(stored: Mapping[str, Any]) -> bool:
    """Whether a stored config has the flat 0.1 shape (``model.prior`` is a name, not a section)."""
    model = stored.get("model") if isinstance(stored, Mapping) else None
    return isinstance(model, Mapping) and isinstance(model.get("prior"), str)


def _trunk(network: str = "mlp", hidden=(200, 200)) -> dict[str, Any]:
    return {"network": network, "hidden": list(hidden), "activation": "tanh", "gated": False, "branch_hidden": [],
            "conv_channels": [32, 32, 64, 64], "conv_kernels": [3, 3, 3, 3], "conv_strides": [1, 2, 1, 2],
            "reshape_channels": 1}


V1_DEFAULTS: dict[str, Any] = {
    "model": {"latent_dim": 50, "prior": "standard_normal", "prior_components": 500, "vampprior_init": "random",
              "vampprior_init_mean": -0.05, "vampprior_init_std": 0.01, "likelihood": "bernoulli",
              "logistic_mixtures": 1, "logistic_channel_coupling": True, "gaussian_scale": "fixed",
              "gaussian_fixed_scale": 1.0, "init_output_bias_from_data": True, "decoder": _trunk(),
              "top_latent_dim": 0, "top_decoder": _trunk(hidden=(100, 100)), "decoder_sees_top": False,
              "min_log_scale": -10.0, "max_log_scale": 3.0, "kind": "latent_variable",
              "made": {"hidden": [500], "activation": "relu", "ordering": "natural", "ordering_seed": 0}},
    "inference": {"posterior": "diagonal_gaussian", "min_log_scale": -10.0, "max_log_scale": 3.0,
                  "posterior_scale": 1.0, "flow_layers": 4, "flow_hidden": [64], "flow_context_dim": 16,
                  "flow_activation": "tanh", "encoder": _trunk(), "hierarchy": "bottom_up",
                  "top_encoder": _trunk(hidden=(100, 100))},
    "objective": {"name": "elbo", "num_samples": 1, "analytic_kl": True, "beta": 1.0, "kl_warmup_epochs": 0.0,
                  "code_penalty": 0.0, "decoder_l2": 0.0, "corruption": "salt_and_pepper", "noise_level": 0.3,
                  "walkback_steps": 1, "walkback_continue": 0.5, "svi_steps": 10, "svi_learning_rate": 0.05,
                  "svi_optimizer": "adam", "svi_momentum": 0.5, "svi_num_samples": 1, "svi_grad_clip_norm": 0.0,
                  "svi_init": "amortized", "svi_gradient": "unrolled"},
    "eval": {"batch_size": 100, "num_samples": 1000, "validation_num_samples": 1,
             "estimators": "elbo,iwae,is,diagnostics", "ks": [1, 10, 100], "chunk_size": 0,
             "is_proposal": "posterior", "elbo_samples": 1, "mi_samples": 1, "active_unit_threshold": 0.01,
             "collapse_threshold": 0.01,
             "ais": {"num_steps": 1000, "num_chains": 16, "num_leapfrog": 10, "step_size": 0.01,
                     "adapt_step_size": True, "target_accept": 0.65, "min_step_size": 1e-4, "max_step_size": 0.5,
                     "schedule": "sigmoid", "start": "prior", "max_examples": 0, "bdmc_examples": 100},
             "gaps": {"families": "diag", "num_steps": 500, "learning_rate": 1e-2, "num_samples": 1,
                      "init": "amortized", "elbo_samples": 100, "log_px_samples": 1000, "test_examples": 0,
                      "train_examples": 1000, "chunk_size": 500}},
}


def _merged(defaults: Mapping[str, Any], stored: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(defaults))
    for key, value in stored.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_NETWORK_KEYS = {
    "mlp": ("hidden", "activation", "gated"),
    "conv_encoder": ("conv_channels", "conv_kernels", "conv_strides", "hidden", "activation", "gated"),
    "conv_decoder": ("hidden", "activation", "gated", "conv_channels", "conv_kernels", "conv_strides",
                     "reshape_channels"),
}


def _network(section: Mapping[str, Any]) -> dict[str, Any]:
    name = section["network"]
    if name not in _NETWORK_KEYS:
        raise ConfigError(f"stored config names an unknown network {name!r}")
    return {"name": name, **{k: section[k] for k in _NETWORK_KEYS[name]}}


def _prior(m: Mapping[str, Any]) -> dict[str, Any]:
    name = m["prior"]
    if name == "mixture":
        return {"name": name, "components": m["prior_components"]}
    if name == "vampprior":
        return {"name": name, "components": m["prior_components"], "init": m["vampprior_init"],
                "init_mean": m["vampprior_init_mean"], "init_std": m["vampprior_init_std"]}
    return {"name": name}


def _likelihood(m: Mapping[str, Any]) -> dict[str, Any]:
    name = m["likelihood"]
    if name == "gaussian":
        return {"name": name, "scale": m["gaussian_scale"], "fixed_scale": m["gaussian_fixed_scale"]}
    if name == "discretized_logistic":
        return {"name": name, "mixtures": m["logistic_mixtures"], "channel_coupling": m["logistic_channel_coupling"]}
    return {"name": name}


def _kind(m: Mapping[str, Any], i: Mapping[str, Any]) -> dict[str, Any]:
    if m["kind"] == "autoregressive":
        return {"name": "autoregressive", **m["made"]}
    if int(m["top_latent_dim"]) > 0:
        return {"name": "two_layer", "top_latent_dim": m["top_latent_dim"], "top_decoder": _network(m["top_decoder"]),
                "top_encoder": _network(i["top_encoder"]), "hierarchy": i["hierarchy"],
                "decoder_sees_top": m["decoder_sees_top"], "decoder_branch_hidden": m["decoder"]["branch_hidden"],
                "encoder_branch_hidden": i["top_encoder"]["branch_hidden"], "min_log_scale": m["min_log_scale"],
                "max_log_scale": m["max_log_scale"]}
    return {"name": "latent_variable"}


def _posterior(i: Mapping[str, Any]) -> dict[str, Any]:
    name = i["posterior"]
    scales = {"min_log_scale": i["min_log_scale"], "max_log_scale": i["max_log_scale"]}
    if name in ("diagonal_gaussian", "full_covariance_gaussian"):
        return {"name": name, **scales}
    if name == "fixed_scale_gaussian":
        return {"name": name, "scale": i["posterior_scale"]}
    if name == "flow":
        return {"name": name, "layers": i["flow_layers"], "hidden": i["flow_hidden"],
                "context_dim": i["flow_context_dim"], "activation": i["flow_activation"], **scales}
    return {"name": name}


def _objective(o: Mapping[str, Any]) -> dict[str, Any]:
    name = o["name"]
    if name == "elbo":
        return {"name": name, **{k: o[k] for k in ("num_samples", "analytic_kl", "beta", "kl_warmup_epochs")}}
    if name == "iwae":
        return {"name": name, "num_samples": o["num_samples"]}
    if name == "ae":  # 0.1's ae had the code penalty only
        return {"name": name, "code_penalty": o["code_penalty"], "decoder_l2": 0.0}
    if name == "rae":
        return {"name": name, "code_penalty": o["code_penalty"], "decoder_l2": o["decoder_l2"]}
    if name == "dae":
        return {"name": name, **{k: o[k] for k in ("corruption", "noise_level", "walkback_steps", "walkback_continue")}}
    if name == "semi_amortized":
        return {"name": name, "num_samples": o["num_samples"], "analytic_kl": o["analytic_kl"],
                "steps": o["svi_steps"], "learning_rate": o["svi_learning_rate"], "optimizer": o["svi_optimizer"],
                "momentum": o["svi_momentum"], "step_samples": o["svi_num_samples"],
                "grad_clip_norm": o["svi_grad_clip_norm"], "init": o["svi_init"], "gradient": o["svi_gradient"]}
    return {"name": name}


def _eval(e: Mapping[str, Any]) -> dict[str, Any]:
    ais = dict(e["ais"])
    out = {k: e[k] for k in ("estimators", "num_samples", "ks", "chunk_size", "is_proposal", "elbo_samples",
                             "mi_samples", "active_unit_threshold", "collapse_threshold", "batch_size",
                             "validation_num_samples")}
    out["ais_examples"] = ais.pop("max_examples")
    out["bdmc_examples"] = ais.pop("bdmc_examples")
    out["ais"] = ais
    return out


def translate(stored: Mapping[str, Any]) -> dict[str, Any]:
    """The current shape of a 0.1 config (see the module docstring); raises ConfigError for a
    mapping that is not one."""
    try:
        d = _merged(V1_DEFAULTS, stored)
        m, i = d["model"], d["inference"]
        out = {k: d[k] for k in d if k not in ("model", "inference", "objective", "eval")}
        out["model"] = {"kind": _kind(m, i), "latent_dim": m["latent_dim"], "prior": _prior(m),
                        "likelihood": _likelihood(m), "init_output_bias_from_data": m["init_output_bias_from_data"],
                        "decoder": _network(m["decoder"])}
        out["inference"] = {"posterior": _posterior(i), "encoder": _network(i["encoder"])}
        out["objective"] = _objective(d["objective"])
        out["gaps"] = {**d["eval"]["gaps"], "flow_layers": i["flow_layers"], "flow_hidden": i["flow_hidden"],
                       "flow_context_dim": i["flow_context_dim"], "flow_activation": i["flow_activation"]}
        out["eval"] = _eval(d["eval"])
    except (KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"stored config has the shape of vaegen 0.1 but cannot be read as one ({type(e).__name__}: "
                          f"{e})") from None
    return out
