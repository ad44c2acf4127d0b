"""A trained run, loaded from its workdir: ``run = vaegen.load(workdir)``.

``run`` exposes the model with its trained parameters bound::

    run.log_joint(x, z)      log p(x, z) in nats                       [...]
    run.encode(x)            q(z | x), a distrax distribution         event [D]
    run.decode(z)            p(x | z), a distrax distribution         event [*x.shape]
    run.sample(key, n)       x ~ p(x | z), z ~ p(z)                   [n, *x.shape]

``x`` is an observation as the model sees it (floats; binary for a Bernoulli likelihood):
``run.split("test")`` returns a split in that form, binarized by the run's protocol.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import distrax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vaegen.train import checkpoint as checkpoint_lib
from vaegen.config import loading as config_lib
from vaegen.data import datasets as data_lib
from vaegen.model import latent as model_lib
from vaegen.train import trainer as train_lib


@dataclasses.dataclass
class Run:
    """A model with its trained parameters, and the config and data description of its run."""

    workdir: pathlib.Path
    config: ml_collections.ConfigDict
    model: model_lib.LatentVariableModel
    variables: Any
    event_shape: tuple[int, ...]
    epoch: int
    info: dict

    @property
    def bound(self) -> model_lib.LatentVariableModel:
        """The model with its parameters bound: methods can be called directly."""
        return self.model.bind(self.variables)

    @property
    def is_autoencoder(self) -> bool:
        return self.model.is_autoencoder

    @property
    def has_prior(self) -> bool:
        return self.model.has_prior

    def log_joint(self, x: jax.Array, z: jax.Array) -> jax.Array:
        """log p(x, z) = log p(z) + log p(x | z), nats, ``[...]`` for ``z [..., D]``."""
        return self.bound.log_joint(jnp.asarray(x), jnp.asarray(z))

    def log_likelihood(self, x: jax.Array, z: jax.Array) -> jax.Array:
        """log p(x | z), nats, ``[...]`` for ``z [..., D]``."""
        return self.bound.log_likelihood(jnp.asarray(x), jnp.asarray(z))

    def encode(self, x: jax.Array) -> distrax.Distribution:
        """q(z | x) for ``x [..., *event]`` (a point mass for an autoencoder)."""
        return self.bound.q_z_given_x(jnp.asarray(x))

    def decode(self, z: jax.Array) -> distrax.Distribution:
        """p(x | z) for ``z [..., D]``."""
        return self.bound.p_x_given_z(jnp.asarray(z))

    def prior(self) -> distrax.Distribution:
        """p(z) (raises :class:`vaegen.model.NoPriorError` for an autoencoder)."""
        return self.bound.p_z()

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """Ancestral samples ``[n, *event]`` (raises NoPriorError for an autoencoder)."""
        return self.bound.sample(key, n)

    def sample_with_latents(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        return self.bound.sample_with_latents(key, n)

    def split(self, name: str = "test", *, max_examples: int = 0) -> np.ndarray:
        """A held-out split as the model sees it: float32 ``[N, *event]``, binarized once under
        the run's evaluation protocol (the same draw as in training and evaluation)."""
        splits = data_lib.load_splits(self.config.data)
        x = getattr(splits, name)
        if max_examples:
            x = x[:max_examples]
        if name == "train":
            raise ValueError("the training split is binarized afresh for every batch; ask for 'validation' or 'test'")
        stored = train_lib.stored_split(self.config, x, name)
        return np.asarray(data_lib.to_float(None, stored, train_lib.split_protocol(self.config, name)))


def load(workdir: str | pathlib.Path, *, epoch: int | None = None, best: bool | None = None) -> Run:
    """Loads the run in ``workdir`` at its latest checkpoint (or ``epoch``).

    A run trained with early stopping (``train.early_stopping_patience``) keeps the parameters
    of its best validation bound in ``<workdir>/best/``; those are loaded by default
    (``best=None``: the best checkpoint if there is one and no ``epoch`` is asked for;
    ``best=True``: it must exist; ``best=False``: the latest end-of-epoch checkpoint).

    Raises:
      FileNotFoundError: the workdir holds no vaegen run or no checkpoint.
      vaegen.checkpoint.CheckpointError: the checkpoint does not match the stored config.
    """
    workdir = pathlib.Path(workdir)
    cfg_path, run_path = workdir / "config.json", workdir / "run.json"
    if not cfg_path.exists() or not run_path.exists():
        raise FileNotFoundError(f"{workdir} holds no vaegen run (no config.json/run.json); train one with `vaegen train`")
    config = config_lib.from_json(cfg_path.read_text())
    info = json.loads(run_path.read_text())
    event_shape = tuple(info["event_shape"])
    model = model_lib.build_model(config.model, config.inference, event_shape)
    template = jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0), event_shape))
    best_dir = workdir / train_lib.BEST_DIR
    if best and epoch is not None:
        raise ValueError("load: ask for the best checkpoint or for an epoch, not both")
    if best is None:
        best = epoch is None and best_dir.is_dir() and any(p.name.isdigit() for p in best_dir.iterdir())
    if best and not best_dir.is_dir():
        raise FileNotFoundError(f"{workdir} has no best checkpoint ({best_dir}); it was not trained with "
                                "early stopping (config.train.early_stopping_patience)")
    checkpointer = checkpoint_lib.Checkpointer(best_dir if best else workdir / "checkpoints", read_only=True)
    try:
        epochs = checkpointer.all_epochs()
        if not epochs:
            raise FileNotFoundError(f"{workdir} has no checkpoint yet")
        if epoch is None:
            epoch = max(epochs)
        elif epoch not in epochs:
            raise FileNotFoundError(f"{workdir} has no checkpoint of epoch {epoch} (it has {sorted(epochs)})")
        meta = checkpointer.restore_meta(epoch)
        fingerprint = train_lib.config_fingerprint(config)
        # The config as it was written: a run trained before config keys were added (which
        # from_json fills with their defaults) is still the run its checkpoint was written by.
        as_written = train_lib.config_fingerprint(json.loads(cfg_path.read_text()))
        if meta.get("config_fingerprint") not in (fingerprint, as_written):
            raise checkpoint_lib.CheckpointError(
                f"checkpoint of epoch {epoch} in {workdir} was written under a different config than "
                f"{cfg_path}; the workdir is inconsistent"
            )
        variables, _ = checkpointer.restore(epoch, template)
    finally:
        checkpointer.close()
    return Run(workdir=workdir, config=config, model=model, variables=variables,
               event_shape=event_shape, epoch=epoch, info=info)
