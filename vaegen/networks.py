"""Neural networks: deterministic maps only, no probability.

Encoders map an observation ``x`` (event shape, e.g. ``[28, 28, 1]``) to a feature vector;
decoders map a latent ``z`` (``[D]``) to features.  The probabilistic *heads* that turn features
into distribution parameters live with the distributions they parameterise
(:mod:`vaegen.likelihoods`, :mod:`vaegen.posteriors`), so the same trunk serves a VAE's Gaussian
posterior and an AE's point mass.

All modules act on a single example and on any number of leading batch dimensions alike
(they are vmapped over examples by the objectives).
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": nn.relu,
    "elu": nn.elu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "softplus": nn.softplus,
    "leaky_relu": nn.leaky_relu,
    "sigmoid": nn.sigmoid,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Looks up an activation function by name (``ACTIVATIONS``)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None


class MLP(nn.Module):
    """A multilayer perceptron trunk.

    Attributes:
      hidden: widths of the hidden layers, e.g. ``(200, 200)``; each is followed by the
        activation. The output is the last hidden layer's activation (``[hidden[-1]]``);
        an empty tuple gives the identity on the flattened input (a linear model's trunk).
      activation: name of the nonlinearity (see ``ACTIVATIONS``).
      event_ndims: number of trailing input dimensions that form one example; they are
        flattened (``[..., 28, 28, 1] -> [..., 784]``).
    """

    hidden: Sequence[int] = (200, 200)
    activation: str = "tanh"
    event_ndims: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch_shape = x.shape[: x.ndim - self.event_ndims]
        h = x.reshape(batch_shape + (-1,)).astype(jnp.float32)
        act = activation(self.activation)
        for i, width in enumerate(self.hidden):
            h = act(nn.Dense(width, name=f"dense_{i}")(h))
        return h


def from_config(cls: type[nn.Module], cfg: dict, *, event_ndims: int, output_shape: tuple[int, ...] | None = None) -> nn.Module:
    """Builds trunk ``cls`` from a config section (without its ``network`` key): list values
    become tuples, and keys the class does not take are dropped, so one section schema serves
    every trunk."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in fields}
    if "event_ndims" in fields:
        kwargs["event_ndims"] = event_ndims
    if "output_shape" in fields and output_shape is not None:
        kwargs["output_shape"] = tuple(output_shape)
    return cls(**kwargs)
