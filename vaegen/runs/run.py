"""A trained run, restored from its workdir: ``run = vaegen.load(workdir)`` (:func:`restore` here; with a
recipe attached, :mod:`vaegen.runs.loading`).

``run`` exposes the model with its trained parameters bound::

    run.log_joint(x, z)      log p(x, z) in nats                       [...]
    run.encode(x)            q(z | x), a distrax distribution         event [D]
    run.decode(z)            p(x | z), a distrax distribution         event [*x.shape]
    run.sample(key, n)       x ~ p(x | z), z ~ p(z)                   [n, *x.shape]
    run.log_px(x, k=1000)    log p(x) by importance sampling (or AIS)  [N] nats
    run.elbo(x)              the ELBO                                  [N] nats
    run.reconstruct(x)       E[x | z = E_q[z | x]]                     [N, *x.shape]
    run.codes(x)             E_q[z | x]                                [N, D]

``x`` is an observation as the model sees it (floats; binary for a Bernoulli likelihood):
``run.split("test")`` returns a split in that form, binarized by the run's protocol.

A run whose components include one of the user's own (registered in a module of theirs) records
that module's file in ``run.json``; :func:`load` imports it from that file, and only from there,
before it reads the config.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import sys
from typing import Any

import distrax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vaegen.blocks.likelihoods import check_support
from vaegen.config import schema
from vaegen.data import datasets
from vaegen.data import splits as splits_lib
from vaegen.errors import NO_LATENT_MESSAGE, ArgumentError, CheckpointError, ConfigError, NoLatentError
from vaegen.registry import Selected, to_mapping
from vaegen.runs.questions import Questions, check_int, check_key
from vaegen.model import latent as latent_lib
from vaegen.train import checkpoint as checkpoint_lib
from vaegen.train import trainer as trainer_lib
from vaegen.train import workdir as workdir_lib


@dataclasses.dataclass(repr=False)
class Run(Questions):
    """A model with its trained parameters, the typed spec of its run and its data description;
    the common questions (``log_px``, ``elbo``, ``reconstruct``, ``codes``) are one call each
    (:mod:`vaegen.runs.questions`).  Every argument of these methods is checked on the host
    before anything is computed (:class:`vaegen.errors.ArgumentError`, a ``ValueError``, naming the
    method and the argument); the arrays ``x`` and ``z`` unless ``check=False`` or traced (inside
    the caller's ``jit``)."""

    workdir: pathlib.Path
    spec: schema.RunSpec
    model: latent_lib.Model
    variables: Any
    event_shape: tuple[int, ...]
    epoch: int
    info: dict
    recipe: Selected | None = None
    """The recipe (with its settings) that made this run generative (:mod:`vaegen.runs.recipes`; None:
    the run as trained)."""

    def __repr__(self) -> str:
        """One line: where the run is, which model, how many parameters (``run.spec`` has the rest)."""
        spec = self.spec
        parts = [f"workdir={str(self.workdir)!r}", f"epoch={self.epoch}", f"kind={spec.model.kind.name}"]
        if self.has_latents:
            prior = spec.model.prior.name
            if self.recipe is not None:           # made generative by a recipe (vaegen.load(..., density=...))
                parts.append(f"recipe={self.recipe.name}")
                prior = f"{self.recipe.name} (the recipe's; trained with {prior})"
            parts += [f"prior={prior}", f"posterior={spec.inference.posterior.name}", f"latent_dim={self.latent_dim}"]
        parts += [f"likelihood={spec.model.likelihood.name}", f"event_shape={tuple(self.event_shape)}"]
        try:
            size = sum(int(np.size(v)) for v in jax.tree_util.tree_leaves(self.variables.get("params", {})))
            parts.append(f"parameters={size:,}")
        except (AttributeError, TypeError):
            pass
        return f"Run({', '.join(parts)})"

    @property
    def latent_dim(self) -> int | None:
        """D, the dimension of z (of z1 and z2 together for two stochastic layers); None for a model
        without z (autoregressive)."""
        if not self.has_latents:
            return None
        return int(getattr(self.model.posterior, "latent_dim", self.spec.model.latent_dim))

    @property
    def config(self) -> ml_collections.ConfigDict:
        """The run's config as a (locked) ConfigDict, for printing; code reads :attr:`spec`."""
        return schema.to_config(self.spec)

    @property
    def bound(self) -> Any:
        """The model with its parameters bound: methods can be called directly."""
        return self.model.bind(self.variables)

    @property
    def has_latents(self) -> bool:
        """False for a model without z (autoregressive)."""
        return self.spec.model.kind.trait("latents") != "none"

    @property
    def is_autoencoder(self) -> bool:
        return bool(getattr(self.model, "is_autoencoder", False))

    @property
    def has_prior(self) -> bool:
        return bool(getattr(self.model, "has_prior", False))

    def check_x(self, x: Any, method: str) -> None:
        """Raises :class:`vaegen.errors.ArgumentError` (:class:`vaegen.errors.SupportError` for
        values) naming the argument ``x`` of ``run.<method>`` if it is not a batch of observations
        of this model: trailing
        shape ``event_shape``, finite, in the likelihood's support (binary for a Bernoulli).  On the
        host, once per call; skipped for traced values (inside the caller's ``jit``)."""
        if isinstance(x, jax.core.Tracer):
            return
        a = np.asarray(x)
        n = len(self.event_shape)
        if a.ndim < n or tuple(a.shape[a.ndim - n:]) != tuple(self.event_shape):
            raise ArgumentError(f"run.{method}: argument x has shape {a.shape}, but observations of this model are "
                             f"[..., {', '.join(map(str, self.event_shape))}]")
        if not np.issubdtype(a.dtype, np.number) and a.dtype != bool:
            raise ArgumentError(f"run.{method}: argument x must be numeric, got dtype {a.dtype}")
        check_support(self.spec.model.likelihood.trait("support"), a.astype(np.float64),
                      what=f"run.{method}: argument x")

    def check_z(self, z: Any, method: str, x: Any = None) -> None:
        """Raises :class:`vaegen.errors.ArgumentError` naming the argument ``z`` of ``run.<method>``
        if it is not a batch of latent vectors of this model: real numbers, trailing shape ``[D]``,
        and (with ``x``) a batch shape that broadcasts with ``x``'s.  On the host; skipped for
        traced values.  Its values are not checked: a non-finite z gives a non-finite answer."""
        if isinstance(z, jax.core.Tracer):
            return
        if not self.has_latents:
            raise NoLatentError(NO_LATENT_MESSAGE)
        a = np.asarray(z)
        if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
            raise ArgumentError(f"run.{method}: argument z must be real numbers, got dtype {a.dtype}")
        d = self.latent_dim
        if a.ndim < 1 or a.shape[-1] != d:
            raise ArgumentError(f"run.{method}: argument z has shape {a.shape}, but latent vectors of this model are "
                             f"[..., {d}]")
        if x is None or isinstance(x, jax.core.Tracer):
            return
        xs = np.shape(x)
        x_batch, z_batch = xs[:len(xs) - len(self.event_shape)], a.shape[:-1]
        try:
            np.broadcast_shapes(x_batch, z_batch)
        except ValueError:
            raise ArgumentError(f"run.{method}: argument z has shape {a.shape} and x {tuple(xs)}: their batch shapes "
                             f"{tuple(z_batch)} and {tuple(x_batch)} do not broadcast (z [..., {d}] goes with x "
                             f"[..., {', '.join(map(str, self.event_shape))}]; S samples per example: z [S, N, {d}] "
                             "with x [N, ...])") from None

    def log_joint(self, x: jax.Array, z: jax.Array, *, check: bool = True) -> jax.Array:
        """log p(x, z) = log p(z) + log p(x | z), nats, ``[...]`` for ``z [..., D]`` and ``x [..., *event]``
        whose batch shapes broadcast.  ``check``: :meth:`check_x` and :meth:`check_z` first
        (``check=False`` skips them, e.g. in a loop of the caller's own)."""
        if check:
            self.check_x(x, "log_joint")
            self.check_z(z, "log_joint", x)
        return self.bound.log_joint(jnp.asarray(x), jnp.asarray(z))

    def log_likelihood(self, x: jax.Array, z: jax.Array, *, check: bool = True) -> jax.Array:
        """log p(x | z), nats, ``[...]`` for ``z [..., D]`` (``check``: as for :meth:`log_joint`)."""
        if check:
            self.check_x(x, "log_likelihood")
            self.check_z(z, "log_likelihood", x)
        return self.bound.log_likelihood(jnp.asarray(x), jnp.asarray(z))

    def encode(self, x: jax.Array, *, check: bool = True) -> distrax.Distribution:
        """q(z | x) for ``x [..., *event]`` (a point mass for an autoencoder); ``check``: as for
        :meth:`log_joint`."""
        if check:
            self.check_x(x, "encode")
        return self.bound.q_z_given_x(jnp.asarray(x))

    def decode(self, z: jax.Array, *, check: bool = True) -> distrax.Distribution:
        """p(x | z) for ``z [..., D]`` (``check``: :meth:`check_z` first)."""
        if check:
            self.check_z(z, "decode")
        return self.bound.p_x_given_z(jnp.asarray(z))

    def prior(self) -> distrax.Distribution:
        """p(z) (raises :class:`vaegen.errors.NoPriorError` for an autoencoder)."""
        return self.bound.p_z()

    def sample(self, key: jax.Array, n: int, *, check: bool = True) -> jax.Array:
        """Ancestral samples ``[n, *event]`` (raises NoPriorError for an autoencoder); ``n``, an
        integer >= 1, is checked unless ``check=False``."""
        if check:
            _check_n(n, "sample")
            check_key(key, "sample", optional=False)
        return self.bound.sample(key, n)

    def sample_with_latents(self, key: jax.Array, n: int, *, check: bool = True) -> tuple[jax.Array, jax.Array]:
        """``(x [n, *event], z [n, D])``, as :meth:`sample`."""
        if check:
            _check_n(n, "sample_with_latents")
            check_key(key, "sample_with_latents", optional=False)
        return self.bound.sample_with_latents(key, n)

    def data(self) -> datasets.Splits:
        """The run's splits as uint8 grey levels (loaded and checked as in training)."""
        return trainer_lib.load_data(self.spec)

    def split(self, name: str = "test", *, max_examples: int = 0) -> np.ndarray:
        """A held-out split as the model sees it: float32 ``[N, *event]``, binarized once under
        the run's evaluation protocol (the same draw as in training and evaluation)."""
        if name == "train":
            raise ArgumentError("run.split: the training split is binarized afresh for every batch; ask for 'validation' or "
                                "'test'")
        if name not in ("validation", "test"):
            raise ArgumentError(f"run.split: argument name must be 'validation' or 'test', got {name!r}")
        check_int(max_examples, "split", "max_examples", "examples to keep; 0 = all", minimum=0)
        x = getattr(datasets.load_splits(self.spec.data), name)
        if max_examples:
            x = x[:max_examples]
        return splits_lib.model_view(self.spec.data, x, name)


def _check_n(n: Any, method: str) -> None:
    check_int(n, method, "n", "the number of samples")


def import_user_components(workdir: pathlib.Path, info: dict) -> None:
    """Imports the module of every user component a run recorded (``run.json``), from the file it
    was registered from, unless a module of that name is imported already."""
    for entry in info.get("user_components", []):
        module, file = entry.get("module", ""), entry.get("file", "")
        if not module or module in sys.modules:
            continue
        path = pathlib.Path(file)
        what = f"the {entry.get('kind')} {entry.get('name')!r} ({entry.get('config_key')})"
        if not path.is_file():
            raise ConfigError(f"run {workdir} uses {what}, defined in module {module!r} at {file}, which does not exist; "
                              "restore that file (or import the module before loading the run)")
        spec = importlib.util.spec_from_file_location(module, path)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[module] = loaded
        try:
            spec.loader.exec_module(loaded)
        except Exception as e:
            del sys.modules[module]
            raise ConfigError(f"run {workdir} uses {what}, defined in {file}, which failed to import: "
                              f"{type(e).__name__}: {e}") from None


def restore(workdir: str | pathlib.Path, *, epoch: int | None = None, best: bool | None = None) -> Run:
    """Loads the run in ``workdir`` at its latest checkpoint (or ``epoch``).

    A run trained with early stopping (``train.early_stopping_patience``) keeps the parameters
    of its best validation bound in ``<workdir>/best/``; those are loaded by default
    (``best=None``: the best checkpoint if there is one and no ``epoch`` is asked for;
    ``best=True``: it must exist; ``best=False``: the latest end-of-epoch checkpoint).
    A workdir written by vaegen 0.1 (a flat config) loads through its translation
    (:mod:`vaegen.train.legacy`).

    Raises:
      FileNotFoundError: the workdir holds no vaegen run or no checkpoint.
      vaegen.errors.ConfigError: a component of the run is not registered (a user's module that
        cannot be imported).
      vaegen.errors.CheckpointError: the checkpoint does not match the stored config.
    """
    workdir = pathlib.Path(workdir)
    cfg_path, run_path = workdir / workdir_lib.CONFIG_FILE, workdir / workdir_lib.RUN_FILE
    if not cfg_path.exists() or not run_path.exists():
        raise FileNotFoundError(f"{workdir} holds no vaegen run (no config.json/run.json); train one with `vaegen train`")
    stored = workdir_lib.read_stored(cfg_path)  # one line for a damaged file, as in training
    info = workdir_lib.read_run_json(run_path)
    import_user_components(workdir, info)
    spec = workdir_lib.parse_stored(schema.RunSpec, cfg_path)
    event_shape = tuple(info["event_shape"])
    model = latent_lib.build_model(spec.model, spec.inference, event_shape)
    template = jax.eval_shape(lambda: latent_lib.init_params(model, jax.random.key(0), event_shape))
    best_dir = workdir / trainer_lib.BEST_DIR
    if best and epoch is not None:
        raise ArgumentError("load: ask for the best checkpoint (best=True) or for an epoch, not both")
    if best is None:
        best = epoch is None and best_dir.is_dir() and any(p.name.isdigit() for p in best_dir.iterdir())
    if best and not best_dir.is_dir():
        raise FileNotFoundError(f"{workdir} has no best checkpoint ({best_dir}); it was not trained with "
                                "early stopping (config.train.early_stopping_patience)")
    checkpointer = checkpoint_lib.Checkpointer(best_dir if best else workdir / trainer_lib.CHECKPOINTS_DIR,
                                               read_only=True)
    try:
        epochs = checkpointer.all_epochs()
        if not epochs:
            raise FileNotFoundError(f"{workdir} has no checkpoint yet")
        if epoch is None:
            epoch = max(epochs)
        elif epoch not in epochs:
            raise FileNotFoundError(f"{workdir} has no checkpoint of epoch {epoch} (it has {sorted(epochs)})")
        meta = checkpointer.restore_meta(epoch)
        # The config as it was written (a run trained before config keys were added, or by 0.1)
        # is still the run its checkpoint was written by.
        fingerprints = (workdir_lib.config_fingerprint(to_mapping(spec)),
                        workdir_lib.config_fingerprint(stored))
        if meta.get("config_fingerprint") not in fingerprints:
            raise CheckpointError(
                f"checkpoint {checkpointer.path(epoch)} was written under a different config than {cfg_path} "
                f"(fingerprint {meta.get('config_fingerprint')} != {fingerprints[-1]}): it comes from another run "
                "(copied from another workdir?); move that checkpoint directory away to fall back to an earlier "
                "one, or load the workdir it came from"
            )
        variables, _ = checkpointer.restore(epoch, template)
    finally:
        checkpointer.close()
    return Run(workdir=workdir, spec=spec, model=model, variables=variables, event_shape=event_shape, epoch=epoch,
               info=info)
