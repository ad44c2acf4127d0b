"""The ``gaps`` section of a config: the gap decomposition of ``vaegen gaps``
(:mod:`vaegen.studies.gaps`, per-example q* by :mod:`vaegen.inference.svi`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from vaegen.activations import ACTIVATIONS
from vaegen.errors import ConfigError
from vaegen.registry import POSTERIORS, Settings, setting


def family_names() -> list[str]:
    """The names a variational family may be asked for by: every posterior with a family (its
    ``refinable`` trait), and its aliases (:mod:`vaegen.inference.families` holds the families)."""
    out = []
    for c in POSTERIORS:
        if c.trait("refinable"):
            out += [*c.aliases, c.name]
    return out


@dataclasses.dataclass(frozen=True)
class GapsSettings(Settings):
    """The ``gaps`` section: the gap decomposition of ``vaegen gaps`` (command-line flags override it)."""

    families: str = setting("diag", "comma-separated variational families of q* (posterior names or aliases: diag, "
                            "fullcov, flow)")
    num_steps: int = setting(500, "SVI steps per example for q*", ge=0)
    learning_rate: float = setting(1e-2, "Adam, cosine-decayed to 0 over the steps", gt=0)
    num_samples: int = setting(1, "z samples per SVI step", gt=0)
    init: str = setting("amortized", "where each q* starts: amortized (the encoder's q) or prior (N(0, I))",
                        choices=("amortized", "prior"))
    elbo_samples: int = setting(100, "samples for each reported ELBO, L[q] and L[q*]", gt=0)
    log_px_samples: int = setting(1000, "k of each importance-sampled log p(x)", gt=0)
    test_examples: int = setting(0, "0 = the whole test set", ge=0)
    train_examples: int = setting(1000, "training subset (binarized once); 0 = none", ge=0)
    chunk_size: int = setting(500, "examples per vmapped chunk (memory, not results)", gt=0)
    flow_layers: int = setting(4, "the flow family, for a model whose q(z|x) is not a flow: coupling layers", gt=0)
    flow_hidden: tuple[int, ...] = setting((64,), "the flow family: hidden widths of each coupling network",
                                           items_gt=0)
    flow_context_dim: int = setting(16, "the flow family: context dimension", ge=0)
    flow_activation: str = setting("tanh", "the flow family: nonlinearity of the coupling networks",
                                   choices=tuple(ACTIVATIONS))

    def flow_options(self) -> dict[str, Any]:
        """The flow family's architecture (a model whose q(z|x) is a flow uses its own)."""
        return {"num_layers": self.flow_layers, "hidden": tuple(self.flow_hidden),
                "context_dim": self.flow_context_dim, "activation": self.flow_activation}

    def family_list(self) -> list[str]:
        return [f.strip() for f in self.families.split(",") if f.strip()]

    def validate(self, key):
        for name in self.family_list():
            if name not in family_names():
                raise ConfigError(f"{key('families')}={name!r} is not one of {', '.join(family_names())}")
