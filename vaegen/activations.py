"""Nonlinearities by name: the ``activation`` settings of every network, flow and density, and
the functions they name.  At the bottom of the package so that any settings declaration can offer
the names as its choices."""

from __future__ import annotations

from typing import Callable

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
    "none": lambda x: x,  # linear (e.g. inside gated layers)
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Looks up an activation function by name (``ACTIVATIONS``)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None
