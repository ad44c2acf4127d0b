"""Configs: presets, literal overrides, type checks, validation."""

import pytest

from vaegen import registry
from vaegen.config import loading as config
from vaegen.config import schema


def test_presets_load_and_validate():
    names = config.presets()
    assert {"vae_mlp_fmnist", "ae_mlp_fmnist", "tiny"} <= set(names)
    for name in names:
        config.load_config(name)


def test_ae_preset_matches_vae_preset_except_inference_prior_objective():
    vae, ae = config.load_config("vae_mlp_fmnist"), config.load_config("ae_mlp_fmnist")
    diff = {d.split(":")[0] for d in config.differences(vae, ae, ignore=())}
    # Each is a component section: they differ in the components chosen (and so in their settings).
    assert {key.rsplit(".", 1)[0] for key in diff} == {"inference.posterior", "model.prior", "objective"}
    assert {"inference.posterior.name", "model.prior.name", "objective.name"} <= diff


def test_overrides_are_typed_literals():
    c = config.load_config("tiny", ["model.latent_dim=7", "config.optim.learning_rate=3", "model.decoder.hidden=(5, 6)",
                                    "data.name=digits", "train.progress=false", "data.data_dir=/tmp/x y"])
    assert c.model.latent_dim == 7 and isinstance(c.optim.learning_rate, float) and c.optim.learning_rate == 3.0
    assert c.model.decoder.hidden == (5, 6) and c.train.progress is False and c.data.data_dir == "/tmp/x y"


@pytest.mark.parametrize("override, message", [
    ("model.latent_dims=3", "unknown config key 'model.latent_dims'; did you mean model.latent_dim"),
    ("modle.latent_dim=3", "unknown config key 'modle'"),
    ("model.latent_dim=2.5", "expects an integer"),
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


@pytest.mark.parametrize("choose", ["model.prior=vampprior", "model.prior.name=vampprior"])
@pytest.mark.parametrize("choice_first", [False, True])
def test_a_setting_and_the_choice_of_its_component_work_in_either_order(choose, choice_first):
    overrides = ["--config.model.prior.components=7", f"--config.{choose}"]
    c = config.load_config("tiny", overrides[::-1] if choice_first else overrides)
    assert c.model.prior.name == "vampprior" and c.model.prior.components == 7
    spec = schema.to_spec(c)
    assert spec.model.prior.name == "vampprior" and spec.model.prior.settings.components == 7


def test_choosing_a_component_resets_its_section_to_the_defaults():
    c = config.load_config("tiny", ["model.prior=vampprior", "model.prior.components=50", "model.prior.init_std=0.5",
                                    "inference.encoder=conv_encoder", "inference.encoder.hidden=(7,)"])
    assert c.model.prior.components == 50 and c.model.prior.init_std == 0.5
    config.apply_overrides(c, ["model.prior=mixture", "inference.encoder=mlp"])
    assert c.model.prior.to_dict() == registry.PRIORS.default_mapping("mixture")
    # The mlp's defaults, not tiny's hidden=(32,) nor the conv_encoder's (7,).
    assert c.inference.encoder.to_dict() == registry.NETWORKS.default_mapping("mlp")
    config.apply_overrides(c, ["model.prior=vampprior"])
    assert c.model.prior.to_dict() == registry.PRIORS.default_mapping("vampprior")
    assert c.model.prior.components == 500 and c.model.prior.init_std != 0.5
    config.validate(c)


def test_component_fills_in_the_defaults():
    section = config.component("prior", "vampprior", components=50)
    defaults = registry.PRIORS.default_mapping("vampprior")
    assert section.to_dict() == {**defaults, "components": 50}
    assert set(section.keys()) == set(defaults) and defaults["components"] != 50
    # Nested component sections are complete too.
    kind = config.component("model_kind", "two_layer", top_latent_dim=2, top_decoder={"name": "mlp", "hidden": (5,)})
    assert kind.to_dict() == {**registry.MODEL_KINDS.default_mapping("two_layer"), "top_latent_dim": 2,
                              "top_decoder": {**registry.NETWORKS.default_mapping("mlp"), "hidden": (5,)}}
    with pytest.raises(config.ConfigError, match="did you mean vampprior"):
        config.component("prior", "vamprior")


def test_json_roundtrip_of_a_two_layer_model():
    c = config.load_config("tiny", ["--config.model.kind=two_layer", "--config.model.kind.top_latent_dim=2",
                                    "--config.model.kind.top_decoder.hidden=(6,)"])
    assert c.model.kind.name == "two_layer" and c.model.kind.top_latent_dim == 2
    back = config.from_json(config.to_json(c))
    assert config.differences(c, back, ignore=()) == []
    assert back.model.kind.top_decoder.hidden == (6,)
    assert schema.to_spec(back) == schema.to_spec(c)


@pytest.mark.parametrize("signature, spec_suffix, expected_arg", [
    ("get_config()", "", "none"),                 # the usual ml_collections / flax form
    ("get_config(arg=None)", "", None),
    ("get_config(arg=None)", ":ae", "ae"),
    ("get_config(arg)", "", None),                # vaegen's older form: given None, as before
    ("get_config(arg)", ":ae", "ae"),
    ("get_config(*args)", ":ae", "ae"),
])
def test_get_config_is_called_as_ml_collections_calls_it(signature, spec_suffix, expected_arg, tmp_path):
    """With the argument after the colon if there is one, else with none (ml_collections'
    config_flags); every exception of a user's get_config is one ConfigError line naming the file."""
    received = ("args[0] if args else 'none'" if "*args" in signature else "arg" if "arg" in signature else "'none'")
    path = tmp_path / "my_config.py"
    path.write_text("from vaegen.config.presets import tiny\n\n\n"
                    f"def {signature}:\n"
                    f"    received = {received}\n"
                    "    c = tiny.get_config()\n"
                    "    c.data.data_dir = repr(received)\n"
                    "    return c\n")
    assert config.load_config(f"{path}{spec_suffix}").data.data_dir == repr(expected_arg)


@pytest.mark.parametrize("body, message", [
    ("raise RuntimeError('no GPU here')", "get_config() raised RuntimeError: no GPU here"),
    ("return {}['missing']", "get_config() raised KeyError: 'missing'"),
    ("return None", "get_config() returned NoneType, not an ml_collections.ConfigDict"),
    ("raise ValueError('bad\\n  value')", "get_config() raised ValueError: bad value"),
])
def test_anything_a_users_get_config_raises_is_one_line_naming_the_file(body, message, tmp_path):
    path = tmp_path / "my_config.py"
    path.write_text(f"def get_config():\n    {body}\n")
    with pytest.raises(config.ConfigError) as info:
        config.load_config(str(path))
    assert str(info.value) == f"config file '{path}': {message}" or (
        str(info.value).startswith(f"config file '{path}': ") and message in str(info.value)), str(info.value)
    assert "\n" not in str(info.value)


def test_type_errors_name_the_type_in_words():
    assert registry.type_phrase(int) == "an integer" and registry.type_phrase(float) == "a number"
    assert registry.type_phrase(tuple[int, ...]) == "a tuple of integers" and registry.type_phrase(bool) == "a boolean"
    with pytest.raises(config.ConfigError, match=r"config.train.progress expects a boolean \(currently False\), got .3."):
        config.load_config("tiny", ["train.progress=3"])
    with pytest.raises(config.ConfigError, match=r"config.model.decoder.hidden expects a tuple"):
        config.load_config("tiny", ["model.decoder.hidden='wide'"])
