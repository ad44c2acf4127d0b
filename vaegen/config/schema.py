"""The typed run spec: what a config is once it has crossed the boundary.

A config is written and overridden as a loose ``ml_collections.ConfigDict``
(:mod:`vaegen.config.loading`); :func:`to_spec` converts it, once, into a :class:`RunSpec` of
frozen dataclasses -- every key checked against its declaration, every component looked up in
its registry -- and nothing below this boundary reads the ConfigDict.  The schema is assembled
from the settings each layer declares for itself::

    RunSpec
      seed
      data        DataSettings            (vaegen.data.splits)
      model       ModelSpec: kind, latent_dim, prior, likelihood, decoder, init_output_bias_from_data
      inference   InferenceSpec: posterior, encoder
      objective   a registered objective  (vaegen.objectives, vaegen.inference.semi_amortized)
      optim       OptimSettings           (vaegen.train.optim)
      train       TrainSettings           (vaegen.train.trainer)
      eval        EvalSettings            (vaegen.estimators.settings)
      gaps        GapsSettings            (vaegen.inference.svi)

Every component section (``model.prior``, ``inference.posterior``, ``objective``, the trunks,
``model.kind`` ...) is ``{name: <registered name>, <that component's settings>}``
(:mod:`vaegen.registry`).  A RunSpec validates itself when constructed: each value against its
declaration, then how the chosen components fit together (each component's own ``check``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import ml_collections

from vaegen.blocks import networks as networks_lib
from vaegen.data.splits import DataSettings
from vaegen.errors import ConfigError
from vaegen.estimators.settings import EvalSettings
from vaegen.inference.svi import GapsSettings
from vaegen.registry import Selected, Settings, parse, selected_components, setting, slot, to_mapping
from vaegen.train.optim import OptimSettings
from vaegen.train.trainer import TrainSettings, _check_training_section


@dataclasses.dataclass(frozen=True)
class ModelSpec(Settings):
    """The ``model`` section: the generative model p(x, z) = p(z) p(x | z)."""

    kind: Selected = slot("model_kind", "latent_variable", "latent_variable: one z; two_layer: z = [z1, z2]; "
                          "autoregressive: no z (MADE)")
    latent_dim: int = setting(50, "D, the dimension of z (of z1 with two layers)", gt=0)
    prior: Selected = slot("prior", "standard_normal", "p(z)")
    likelihood: Selected = slot("likelihood", "bernoulli", "p(x | z)")
    decoder: Selected = slot("network", "mlp", "p(x | z)'s trunk", accepts=networks_lib.reads_latents,
                             role="p(x | z)'s trunk")
    init_output_bias_from_data: bool = setting(True, "start p(x | z)'s output bias at the data mean (logit)")


@dataclasses.dataclass(frozen=True)
class InferenceSpec(Settings):
    """The ``inference`` section: q(z | x), beside the model."""

    posterior: Selected = slot("posterior", "diagonal_gaussian", "q(z | x)")
    encoder: Selected = slot("network", "mlp", "q(z | x)'s trunk", accepts=networks_lib.reads_images,
                             role="q(z | x)'s trunk")


@dataclasses.dataclass(frozen=True)
class RunSpec(Settings):
    """Everything that defines a run (see the module docstring)."""

    seed: int = setting(0, "root of every random stream (init, data order, noise, evaluation)")
    data: DataSettings = dataclasses.field(default_factory=DataSettings)
    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    inference: InferenceSpec = dataclasses.field(default_factory=InferenceSpec)
    objective: Selected = slot("objective", "elbo", "the training objective")
    optim: OptimSettings = dataclasses.field(default_factory=OptimSettings)
    train: TrainSettings = dataclasses.field(default_factory=TrainSettings)
    eval: EvalSettings = dataclasses.field(default_factory=EvalSettings)
    gaps: GapsSettings = dataclasses.field(default_factory=GapsSettings)

    def validate(self, key):
        """How the parts fit together: every chosen component's ``check``, then the sections'."""
        for _, selected in selected_components(self):
            check = selected.component.check
            if check is not None:
                check(selected.settings, self)
        _check_training_section(self)
        if any(f in ("flow",) for f in self.gaps.family_list()) and self.model.latent_dim < 2:
            raise ConfigError("config.gaps.families: the flow family needs config.model.latent_dim >= 2")


def to_spec(config: ml_collections.ConfigDict | Mapping[str, Any]) -> RunSpec:
    """The typed run spec of a config (a ConfigDict or a nested mapping): the boundary.
    Raises :class:`vaegen.errors.ConfigError` naming the first key that is wrong."""
    mapping = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    return parse(RunSpec, mapping)


def to_config(spec: RunSpec) -> ml_collections.ConfigDict:
    """The loose, locked ConfigDict of a run spec (for presets, overrides and printing)."""
    config = ml_collections.ConfigDict(to_mapping(spec))
    config.lock()
    return config


def default_config() -> ml_collections.ConfigDict:
    """The defaults of every key, as a locked ConfigDict: where every preset starts."""
    return to_config(RunSpec())
