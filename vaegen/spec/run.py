"""The typed run spec: what a config is once it has crossed the boundary.

A config is written and overridden as a loose ``ml_collections.ConfigDict``
(:mod:`vaegen.config`); :func:`vaegen.config.schema.to_spec` converts it, once, into a
:class:`RunSpec` of frozen dataclasses -- every key checked against its declaration, every
component looked up in its registry -- and nothing below that boundary reads the ConfigDict.
The RunSpec sits below every layer that reads it (the components' checks, the trainer, the
estimators, the studies), so each of them names it in its signatures.  Its sections::

    RunSpec
      seed
      data        DataSettings            (vaegen.data.splits)
      model       ModelSpec: kind, latent_dim, prior, likelihood, decoder, init_output_bias_from_data
      inference   InferenceSpec: posterior, encoder
      objective   a registered objective  (vaegen.objectives, vaegen.inference.semi_amortized)
      optim       OptimSettings           (vaegen.spec.optim)
      train       TrainSettings           (vaegen.spec.train)
      eval        EvalSettings            (vaegen.spec.eval)
      gaps        GapsSettings            (vaegen.spec.gaps)

Every component section (``model.prior``, ``inference.posterior``, ``objective``, the trunks,
``model.kind`` ...) is ``{name: <registered name>, <that component's settings>}``
(:mod:`vaegen.registry`).  A RunSpec validates itself when constructed: each value against its
declaration, then how the chosen components fit together (:meth:`RunSpec.validate`: the model
kind and the objective of one ``training`` family, then each component's own ``check``, then the
rules that join sections).
"""

from __future__ import annotations

import dataclasses

from vaegen.data.splits import DataSettings
from vaegen.errors import ConfigError
from vaegen.registry import (MODEL_KINDS, OBJECTIVES, Selected, Settings, reads_images, reads_latents,
                             selected_components, setting, slot)
from vaegen.spec.eval import EvalSettings
from vaegen.spec.gaps import GapsSettings
from vaegen.spec.optim import OptimSettings
from vaegen.spec.train import TrainSettings


@dataclasses.dataclass(frozen=True)
class ModelSpec(Settings):
    """The ``model`` section: the generative model p(x, z) = p(z) p(x | z)."""

    kind: Selected = slot("model_kind", "latent_variable", "latent_variable: one z; two_layer: z = [z1, z2]; "
                          "autoregressive: no z (MADE)")
    latent_dim: int = setting(50, "D, the dimension of z (of z1 with two layers)", gt=0)
    prior: Selected = slot("prior", "standard_normal", "p(z)")
    likelihood: Selected = slot("likelihood", "bernoulli", "p(x | z)")
    decoder: Selected = slot("network", "mlp", "p(x | z)'s trunk", accepts=reads_latents, role="p(x | z)'s trunk")
    init_output_bias_from_data: bool = setting(True, "start p(x | z)'s output bias at the data mean (logit)")


@dataclasses.dataclass(frozen=True)
class InferenceSpec(Settings):
    """The ``inference`` section: q(z | x), beside the model."""

    posterior: Selected = slot("posterior", "diagonal_gaussian", "q(z | x)")
    encoder: Selected = slot("network", "mlp", "q(z | x)'s trunk", accepts=reads_images, role="q(z | x)'s trunk")


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
        """How the parts fit together: the model kind and the objective, every chosen component's
        ``check``, then the rules that join sections."""
        _kind_and_objective_fit(self)
        for _, selected in selected_components(self):
            check = selected.component.check
            if check is not None:
                check(selected.settings, self)
        _early_stopping_needs_validation(self)
        if any(f in ("flow",) for f in self.gaps.family_list()) and self.model.latent_dim < 2:
            raise ConfigError("config.gaps.families: the flow family needs config.model.latent_dim >= 2")


def _kind_and_objective_fit(spec: RunSpec) -> None:
    """A model kind is trained by the objectives of its ``training`` family, and only those: one
    rule for every pairing (the VQ-VAE and ``vq``, MADE and ``exact``, a density and ``density``,
    the latent-variable models and the bounds and autoencoders' objectives)."""
    kind, objective = spec.model.kind, spec.objective
    family = kind.trait("training")
    if objective.trait("training") == family:
        return
    trains = [c.name for c in MODEL_KINDS if c.trait("training") == objective.trait("training")]
    trained_by = [c.name for c in OBJECTIVES if c.trait("training") == family]
    raise ConfigError(f"objective {objective.name!r} trains config.model.kind={' or '.join(trains) or 'nothing'}, not "
                      f"{kind.name!r} (which is trained by objective {' or '.join(trained_by) or 'none'}): set the two "
                      "together")


def _early_stopping_needs_validation(spec: RunSpec) -> None:
    """What early stopping needs of the rest of the run."""
    if spec.train.early_stopping_patience and not (spec.data.validation_size or spec.data.validation_mode == "split"):
        raise ConfigError("config.train.early_stopping_patience needs a validation split: set "
                          "config.data.validation_size > 0")
    if spec.train.early_stopping_patience and not spec.train.eval_every_epochs:
        raise ConfigError("config.train.early_stopping_patience needs validation: set config.train.eval_every_epochs > 0")
