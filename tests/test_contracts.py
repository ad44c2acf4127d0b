"""Contracts declared once: a setting's default is written in its settings dataclass only (the
runtime object holds the settings), each rule is checked in one place, the hooks an objective may
define are a declared contract the trainer reads and nothing else, and the run spec is named by
every layer that takes one."""

import ast
import dataclasses
import inspect
import pathlib
import typing

import jax
import jax.numpy as jnp
import pytest

import vaegen
from vaegen import registry
from vaegen.config.loading import load_config
from vaegen.errors import ConfigError, UndefinedObjectiveError
from vaegen.model.latent import Model, build_model, init_params
from vaegen.objectives.base import Objective
from vaegen.objectives.batch import batched
from vaegen.objectives.bounds import ELBO, density_and_prior_problem
from vaegen.registry import NoSettings
from vaegen.runs.run import Run

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vaegen"
COMPONENTS = [(reg.kind, c.name) for reg in registry.registries() for c in reg]


def _runtime_class(component: registry.Component) -> type | None:
    """The class a component's build function says it returns (None for a function or None)."""
    ret = typing.get_type_hints(component.build).get("return")
    return ret if isinstance(ret, type) and dataclasses.is_dataclass(ret) else None


def _fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]


@pytest.mark.parametrize("kind, name", COMPONENTS, ids=[f"{k}:{n}" for k, n in COMPONENTS])
def test_a_settings_default_is_written_once(kind, name):
    """No registered component's runtime object (the Flax module or objective its build returns)
    declares a field that copies a setting: it holds the settings object itself, beside only its
    build context (the keywords its build function takes), or it is a composition of modules that
    hold theirs (two stochastic layers)."""
    component = registry.registry(kind).get(name)
    cls = _runtime_class(component)
    if cls is None:
        return
    settings_names = {f.name for f in registry.fields(component.settings)}
    context = {p.name for p in inspect.signature(component.build).parameters.values()
               if p.kind is inspect.Parameter.KEYWORD_ONLY}
    hints = typing.get_type_hints(cls)
    fields = _fields(cls)
    for f in fields:
        if f.name == "settings":
            assert issubclass(component.settings, hints[f.name]), (kind, name, hints[f.name])
            continue
        if f.name in context:  # what it is built for (two_stage's latent_dim is D; its setting latent_dim is K)
            continue
        assert f.name not in settings_names, f"{kind} {name!r}: {cls.__name__}.{f.name} copies a setting"
        defaulted = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if defaulted:
            assert f.default is None, f"{kind} {name!r}: {cls.__name__}.{f.name} declares a default of its own"
    if component.settings is not NoSettings:
        holds = any(f.name == "settings" for f in fields)
        composed = all(not isinstance(hints[f.name], type) or not issubclass(hints[f.name], (int, float, str, bool, tuple))
                       for f in fields)
        assert holds or composed, f"{kind} {name!r}: {cls.__name__} neither holds its settings nor composes modules"


def test_the_runtime_object_reads_its_settings_object():
    """The object a component builds holds the very settings object of the run spec."""
    spec = vaegen.to_spec(load_config("tiny", ["model.prior=vampprior", "model.prior.components=7",
                                               "objective.beta=0.5", "objective.kl_warmup_epochs=2.0"]))
    model = build_model(spec.model, spec.inference, (8, 8, 1))
    assert model.prior.settings is spec.model.prior.settings and model.prior.settings.components == 7
    assert model.posterior.settings is spec.inference.posterior.settings
    assert model.posterior.encoder.settings is spec.inference.encoder.settings
    objective = spec.objective.build(steps_per_epoch=10)
    assert objective.settings is spec.objective.settings and objective.kl_warmup_steps == 20


# --- each rule in one place --------------------------------------------------------------------------

def test_the_bounds_rule_is_one_declaration_checked_on_the_spec_and_on_the_model():
    """needs_density_and_prior (a run spec) and require_density (a model) state one rule: the same
    words, from density_and_prior_problem."""
    with pytest.raises(ConfigError) as config_time:
        load_config("tiny", ["inference.posterior=point_mass"])
    spec = vaegen.to_spec(load_config("tiny:ae"))
    model = build_model(spec.model, spec.inference, (8, 8, 1))
    v = init_params(model, jax.random.key(0), (8, 8, 1))
    with pytest.raises(UndefinedObjectiveError) as run_time:
        ELBO()(model, v, jnp.zeros((8, 8, 1)), jax.random.key(1))
    rule = density_and_prior_problem("X", point_mass=True, has_prior=True).removeprefix("X")
    assert str(config_time.value) == "objective 'elbo'" + rule
    assert str(run_time.value) == "the ELBO" + rule
    no_prior = density_and_prior_problem("X", point_mass=False, has_prior=False).removeprefix("X")
    with pytest.raises(ConfigError, match="needs a prior p"):
        load_config("tiny", ["model.prior=none"])
    assert "needs a prior p(z)" in no_prior


@pytest.mark.parametrize("kind", registry.MODEL_KINDS.names())
def test_a_model_kind_and_an_objective_fit_by_one_rule(kind):
    """Every (model kind, objective) pair whose training traits differ is refused by the one rule,
    naming both; the pairs that share one are not refused by it."""
    training = registry.MODEL_KINDS.get(kind).trait("training")
    for objective in registry.OBJECTIVES:
        overrides = [f"model.kind={kind}", f"objective={objective.name}"]
        try:
            load_config("tiny", overrides)
        except ConfigError as e:
            if objective.trait("training") != training:
                assert f"objective {objective.name!r} trains config.model.kind=" in str(e)
                assert f"not {kind!r} (which is trained by objective" in str(e)
            else:
                assert "set the two together" not in str(e)
        else:
            assert objective.trait("training") == training


# --- declared contracts ------------------------------------------------------------------------------

TRAINER_FILES = ["train/steps.py", "train/trainer.py", "objectives/batch.py", "objectives/bounds.py",
                 "train/board.py"]


def _objective_attributes(path: pathlib.Path) -> set[str]:
    """Attributes read off a built objective (``objective.x``, ``setup.objective.x``; not the run
    spec's objective section, ``spec.objective``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            value = node.value
            named = (isinstance(value, ast.Name) and value.id == "objective") or (
                isinstance(value, ast.Attribute) and value.attr == "objective"
                and not ast.unparse(value).endswith("spec.objective"))
            if named:
                out.add(node.attr)
    return out


def test_the_objective_contract_lists_every_hook_the_trainer_uses():
    used = set()
    for name in TRAINER_FILES:
        path = PACKAGE / name
        used |= _objective_attributes(path)
        text = path.read_text()
        assert "getattr(objective" not in text and "hasattr(objective" not in text, name
    assert used, "the scan found no use of the objective"
    assert used <= set(Objective.HOOKS), f"hooks used by the trainer but not declared: {used - set(Objective.HOOKS)}"
    for hook in Objective.HOOKS:
        assert hasattr(Objective, hook), hook


@pytest.mark.parametrize("name", registry.OBJECTIVES.names())
def test_every_objective_declares_the_contract(name):
    component = registry.OBJECTIVES.get(name)
    cls = _runtime_class(component)
    assert cls is not None and issubclass(cls, Objective), name
    objective = registry.OBJECTIVES.select(name).build(steps_per_epoch=1)
    assert isinstance(objective, Objective) and isinstance(objective.bound_name, str)
    if objective.has_auxiliary:
        assert type(objective).init_auxiliary is not Objective.init_auxiliary
        assert type(objective).auxiliary_loss is not Objective.auxiliary_loss


def test_the_contracts_defaults_do_nothing_special():
    """batch_terms is the per-example objective vmapped and after_step returns the optimizer's
    variables: an objective that does not override them trains exactly as before they existed."""
    spec = vaegen.to_spec(load_config("tiny"))
    model = build_model(spec.model, spec.inference, (8, 8, 1))
    v = init_params(model, jax.random.key(0), (8, 8, 1))
    x = (jax.random.uniform(jax.random.key(1), (3, 8, 8, 1)) > 0.5).astype(jnp.float32)
    keys = jax.random.split(jax.random.key(2), 3)
    objective = ELBO()
    own, vmapped = objective.batch_terms(model, v, x, keys, 0), batched(objective, model, v, x, keys, 0)
    assert all(bool(jnp.all(own[k] == vmapped[k])) for k in vmapped)
    assert objective.after_step(model, v, v, x, keys, 0) is v
    assert not objective.has_auxiliary and objective.samples_per_example == 1


def test_every_layer_that_takes_a_run_spec_names_it():
    """No ``spec: Any`` below the studies: the run spec sits below every layer that reads it."""
    untyped = [f"{p.relative_to(ROOT)}:{i}" for p in sorted(PACKAGE.rglob("*.py")) if "studies" not in p.parts
               for i, line in enumerate(p.read_text().splitlines(), 1) if "spec: Any" in line]
    assert not untyped, untyped
    assert typing.get_type_hints(Run)["model"] is Model
