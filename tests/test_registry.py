"""The component registries and typed settings: one declaration per component, everything else
derived from it (defaults, validation, listings, the docs' component tables); configs written by vaegen 0.1
translated to the same runs."""

import dataclasses
import importlib.util
import json
import pathlib
import re

import pytest

import vaegen
from vaegen import cli, registry
from vaegen.config import loading, schema
from vaegen.errors import ConfigError
from vaegen.registry import Settings, parse, setting, slot, to_mapping
from vaegen.train import legacy
from vaegen.train import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
LEGACY = pathlib.Path(__file__).resolve().parent / "data" / "legacy"
# Settings that did not exist in 0.1 (a translated config has their defaults) and that the tiny
# preset sets otherwise for tests: everything else must translate exactly.
SET_BY_TINY_SINCE_0_1 = ("train.tensorboard_images", "train.latent_health_examples")


def test_every_registry_has_its_components_and_every_component_a_summary():
    names = {r.kind: r.names() for r in registry.registries()}
    assert {"standard_normal", "mixture", "vampprior", "none"} <= set(names["prior"])
    assert {"bernoulli", "gaussian", "discretized_logistic"} <= set(names["likelihood"])
    assert {"diagonal_gaussian", "full_covariance_gaussian", "fixed_scale_gaussian", "point_mass", "flow"} <= set(
        names["posterior"])
    assert {"mlp", "conv_encoder", "conv_decoder"} <= set(names["network"])
    assert {"elbo", "iwae", "ae", "rae", "dae", "exact", "semi_amortized"} <= set(names["objective"])
    assert {"latent_variable", "two_layer", "autoregressive"} <= set(names["model_kind"])
    assert {"elbo", "iwae", "is", "ais", "bdmc", "diagnostics"} <= set(names["estimator"])
    for reg in registry.registries():
        for c in reg:
            assert c.summary and c.builtin and dataclasses.is_dataclass(c.settings), (reg.kind, c.name)
            c.settings()  # every setting has a default, and the defaults are valid


def _docs_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts" / "docs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_components_page_is_the_registry_as_it_is():
    """The docs' components page is generated from the registry when the site is built: its
    markers are there and empty (nothing written twice), the site's hook fills them with `vaegen
    config --components --markdown` and every component's settings, and no committed Markdown
    carries a stale copy."""
    hooks = _docs_hooks()
    assert "scripts/docs_hooks.py" in (ROOT / "mkdocs.yml").read_text()
    page = (ROOT / "docs" / "components.md").read_text()
    assert re.search(r"<!-- components:begin -->\s*<!-- components:end -->", page), \
        "docs/components.md: leave the components block empty; the site's hook fills it from the registry"
    for path in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        if path.name != "components.md":
            assert "<!-- components:begin -->" not in path.read_text(), f"{path}: a copy of the component tables"
    filled = hooks.on_page_markdown(page, None, None, None)
    kinds = [r.kind for r in registry.registries()]
    assert cli.components_markdown(kinds).strip() in filled
    for reg in registry.registries():
        for c in reg:
            assert f"#### `{c.name}`" in filled, (reg.kind, c.name)
            for row in registry.describe(c.settings):
                assert f"| `{row['name']}` |" in filled, (reg.kind, c.name, row["name"])
    assert "| `components` | int | `500` | > 0 |" in filled  # the VampPrior's and the mixture's K, with its range


def test_aliases_and_unknown_names():
    assert registry.POSTERIORS.get("diag").name == "diagonal_gaussian"
    with pytest.raises(ConfigError, match=r"'vamprior' is not a registered prior .*did you mean vampprior"):
        registry.PRIORS.get("vamprior")


@dataclasses.dataclass(frozen=True)
class _Demo(Settings):
    size: int = setting(3, "how many", gt=0)
    rate: float = setting(0.5, "a probability", ge=0, le=1)
    mode: str = setting("a", "one of two", choices=("a", "b"))
    widths: tuple[int, ...] = setting((4,), "positive widths", items_gt=0, nonempty=True)
    trunk: registry.Selected = slot("network", "mlp", "a trunk", hidden=(2,))

    def validate(self, key):
        if self.mode == "b" and self.size > 5:
            raise ConfigError(f"{key('size')} must be at most 5 in mode b")


@pytest.mark.parametrize("section, message", [
    ({"size": 0}, "config.demo.size=0 must be > 0"),
    ({"rate": 1.5}, "config.demo.rate=1.5 must be in [0, 1]"),
    ({"mode": "c"}, "config.demo.mode='c' is not one of a, b"),
    ({"widths": ()}, "config.demo.widths needs at least one entry"),
    ({"widths": (2, 0)}, "config.demo.widths=(2, 0): every entry must be > 0"),
    ({"size": 2.5}, "config.demo.size expects an integer, got 2.5"),
    ({"rate": float("nan")}, "config.demo.rate=nan must be a finite number"),
    ({"mode": "b", "size": 9}, "config.demo.size must be at most 5 in mode b"),
    ({"sizes": 3}, "unknown config key 'demo.sizes'; did you mean demo.size"),
    ({"trunk": {"name": "mlp", "depth": 2}}, "config.demo.trunk.depth: the network 'mlp' has no setting 'depth'"),
    ({"trunk": {"name": "mpl"}}, "config.demo.trunk.name='mpl' is not a registered network"),
])
def test_settings_are_checked_against_their_declaration(section, message):
    with pytest.raises(ConfigError) as info:
        parse(_Demo, section, "demo")
    assert message in str(info.value)


def test_settings_built_in_python_are_checked_too_and_name_the_class():
    with pytest.raises(ConfigError, match=r"_Demo.size=-1 must be > 0"):
        _Demo(size=-1)
    assert _Demo(size=4).size == 4


def test_parse_and_to_mapping_are_inverse_and_fill_defaults():
    obj = parse(_Demo, {"size": 4, "widths": [1, 2], "trunk": {"name": "conv_encoder", "hidden": [3]}}, "demo")
    assert obj.widths == (1, 2) and obj.trunk.name == "conv_encoder" and obj.trunk.settings.hidden == (3,)
    assert obj.trunk.settings.conv_channels == (32, 32, 64, 64)          # the component's default
    assert parse(_Demo, to_mapping(obj), "demo") == obj


def test_a_component_registered_twice_from_another_module_is_refused():
    @dataclasses.dataclass(frozen=True)
    class S(Settings):
        pass

    reg = registry.Registry("test_kind_twice", "a test registry")
    reg.register("thing", settings=S)(lambda settings: 1)
    reg.register("thing", settings=S)(lambda settings: 2)          # the same module again: replaces
    assert reg.get("thing").build(S()) == 2
    other = registry.Component(kind=reg.kind, name="thing", settings=S, build=lambda s: 3, module="somewhere_else")
    with pytest.raises(ConfigError, match="registered twice"):
        reg.add(other)


def test_a_settings_class_without_defaults_is_refused_at_registration():
    @dataclasses.dataclass(frozen=True)
    class NoDefault(Settings):
        size: int

    reg = registry.Registry("test_kind_defaults", "a test registry")
    with pytest.raises(TypeError, match="has no default"):
        reg.register("x", settings=NoDefault)(lambda s: None)


def test_every_preset_round_trips_through_the_typed_spec():
    for name in loading.presets() + ["default"]:
        config = loading.load_config(name)
        spec = schema.to_spec(config)
        assert schema.to_config(spec).to_dict() == config.to_dict()
        assert schema.to_spec(json.loads(workdir_lib.to_json(spec))) == spec


@pytest.mark.parametrize("old, preset", [("config.tiny.json", "tiny"), ("config.tiny_ae.json", "tiny:ae"),
                                         ("config.vae_mlp_fmnist.json", "vae_mlp_fmnist"),
                                         ("config.ae_mlp_fmnist.json", "ae_mlp_fmnist"),
                                         ("config.default.json", "default")])
def test_configs_written_by_0_1_translate_to_todays_presets(old, preset):
    """The files are `vaegen config PRESET` of vaegen 0.1 (flat keys)."""
    stored = json.loads((LEGACY / old).read_text())
    assert legacy.is_legacy(stored)
    translated = loading.normalize(legacy.translate(stored))
    assert loading.differences(translated, loading.load_config(preset), ignore=SET_BY_TINY_SINCE_0_1) == []


@pytest.mark.parametrize("old, overrides", [
    ("run.hvae.config.json", ["model.kind=two_layer", "model.kind.top_latent_dim=2", "model.kind.hierarchy=top_down",
                              "model.prior=vampprior", "model.prior.components=5"]),
    ("run.made.config.json", ["model.kind=autoregressive", "objective=exact", "model.kind.hidden=(16,)"]),
    ("run.flow.config.json", ["inference.posterior=flow", "objective=iwae", "objective.num_samples=3"]),
    # 0.1 had one code_penalty and decoder_l2 for every objective, 0.0 by default
    ("run.rae.config.json", ["inference.posterior=point_mass", "model.prior=none", "objective=rae",
                             "objective.code_penalty=0.0", "objective.decoder_l2=0.0"]),
])
def test_runs_written_by_0_1_translate_to_the_same_config(old, overrides):
    """config.json of runs trained by vaegen 0.1 with the same command as these overrides (on tiny)."""
    translated = loading.normalize(legacy.translate(json.loads((LEGACY / old).read_text())))
    today = loading.load_config("tiny", overrides)
    assert loading.differences(translated, today, ignore=SET_BY_TINY_SINCE_0_1) == []


def test_a_stored_config_that_is_not_one_is_a_clear_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(vaegen.WorkdirError, match="is not a vaegen config .invalid JSON"):
        workdir_lib.parse_stored(schema.RunSpec, path)
    path.write_text(json.dumps({"model": {"prior": "standard_normal", "decoder": {"network": "resnet"}}}))
    with pytest.raises(ConfigError, match="unknown network 'resnet'"):
        workdir_lib.parse_stored(schema.RunSpec, path)


def test_the_component_listing_names_every_setting():
    text = cli.components_text(["prior"])
    assert "vampprior" in text and "components = 500 [> 0]" in text and "init = 'random' [random \\| data]" in text


# --- traits: declared once, by each registry ---------------------------------------------------------

def test_registering_an_undeclared_trait_is_one_line_naming_it_and_the_declared_ones():
    reg = registry.Registry("test_kind_traits", "a test registry",
                            traits=[registry.Trait("support", str, "real", "what x is", choices=("binary", "real"))])
    with pytest.raises(ConfigError) as info:
        reg.register("thing", traits={"suport": "binary"})(lambda settings: None)
    assert str(info.value) == ("the test_kind_traits 'thing' is registered with trait 'suport', which is not a declared "
                               "test_kind_traits trait (declared: support)")
    with pytest.raises(ConfigError, match=r"trait 'support' takes a str, got 1"):
        reg.register("thing", traits={"support": 1})(lambda settings: None)
    with pytest.raises(ConfigError, match=r"trait 'support'='grey' is not one of binary, real"):
        reg.register("thing", traits={"support": "grey"})(lambda settings: None)
    assert "thing" not in reg


def test_a_trait_reads_its_declared_default_and_an_undeclared_one_is_an_error():
    assert registry.LIKELIHOODS.get("bernoulli").trait("support") == "binary"
    assert registry.POSTERIORS.get("diagonal_gaussian").trait("deterministic") is False      # the declared default
    assert registry.PRIORS.get("standard_normal").trait("data_init") is None
    with pytest.raises(ConfigError, match=r"'suport' is not a declared likelihood trait \(declared: support\)"):
        registry.LIKELIHOODS.get("bernoulli").trait("suport")
    with pytest.raises(TypeError):
        registry.LIKELIHOODS.get("bernoulli").trait("support", "real")     # no default chosen by the reader


def test_every_trait_is_declared_with_a_type_default_and_meaning_and_none_names_a_component():
    """A trait says what a component is or can (``latents``: continuous, discrete or none), never
    which one it is: no declared trait is called like a registered component."""
    names = {c.name for reg in registry.registries() for c in reg}
    for reg in registry.registries():
        for trait in reg.traits:
            assert trait.doc and trait.type, (reg.kind, trait.name)
            assert trait.name not in names, f"the {reg.kind} trait {trait.name!r} is the name of a component"
        for c in reg:
            for key, value in c.traits.items():
                reg.declared_trait(key).check(value, f"{reg.kind} {c.name}")
    assert registry.MODEL_KINDS.get("vq_vae").trait("latents") == "discrete"
    assert {c.name for c in registry.MODEL_KINDS if c.trait("latents") == "none"} >= {"autoregressive", "density"}
