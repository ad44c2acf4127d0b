"""Configs: presets, literal overrides, type checks, validation."""

import pytest

from vaegen.config import loading as config


def test_presets_load_and_validate():
    names = config.presets()
    assert {"vae_mlp_fmnist", "ae_mlp_fmnist", "tiny"} <= set(names)
    for name in names:
        config.load_config(name)


def test_ae_preset_matches_vae_preset_except_inference_prior_objective():
    vae, ae = config.load_config("vae_mlp_fmnist"), config.load_config("ae_mlp_fmnist")
    diff = {d.split(":")[0] for d in config.differences(vae, ae, ignore=())}
    assert diff == {"inference.posterior", "model.prior", "objective.name"}


def test_overrides_are_typed_literals():
    c = config.load_config("tiny", ["model.latent_dim=7", "config.optim.learning_rate=3", "model.decoder.hidden=(5, 6)",
                                    "data.name=digits", "train.progress=false", "data.data_dir=/tmp/x y"])
    assert c.model.latent_dim == 7 and isinstance(c.optim.learning_rate, float) and c.optim.learning_rate == 3.0
    assert c.model.decoder.hidden == (5, 6) and c.train.progress is False and c.data.data_dir == "/tmp/x y"


@pytest.mark.parametrize("override, message", [
    ("model.latent_dims=3", "unknown config key 'model.latent_dims'; did you mean model.latent_dim"),
    ("modle.latent_dim=3", "unknown config key 'modle'"),
    ("model.latent_dim=2.5", "expects a int"),
    ("model.latent_dim=abc", "cannot parse"),
    ("model.latent_dim=__import__('os').getpid()", "cannot parse"),
    ("model=3", "is a section"),
    ("model.latent_dim", "must look like"),
    ("model.latent_dim=0", "model.latent_dim=0 must be > 0"),
    ("optim.learning_rate=-1e-3", "optim.learning_rate=-0.001 must be > 0"),
    ("objective.num_samples=0", "objective.num_samples=0 must be > 0"),
    ("objective.name=ae", "needs a deterministic encoder"),
    ("inference.posterior=point_mass", "undefined for a point-mass posterior"),
    ("data.binarization=sometimes", "is not one of dynamic, static, threshold, none"),
])
def test_bad_overrides_are_clear_errors(override, message):
    with pytest.raises(config.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config.load_config("tiny", [override])


def test_unknown_preset():
    with pytest.raises(config.ConfigError, match="unknown config preset 'nope'"):
        config.load_config("nope")


def test_json_roundtrip():
    c = config.load_config("tiny:ae", ["model.decoder.hidden=(3,)"])
    back = config.from_json(config.to_json(c))
    assert config.differences(c, back, ignore=()) == []
