"""The denoising autoencoder as a generative model (Bengio, Yao, Alain & Vincent 2013,
"Generalized denoising auto-encoders as generative models").

A DAE is the autoencoder's networks (a deterministic encoder f and the decoder's p(x | z))
trained to undo a known corruption C(x~ | x):

    P_theta(x | x~) = p(x | z = f(x~))           the learned *reconstruction distribution*
    objective(x)    = E_{x~ ~ C(x~|x)} [ log P_theta(x | x~) ]

Bengio et al. show that the Markov chain that alternates corruption and reconstruction,

    x~_t ~ C(x~ | x_{t-1}),    x_t ~ P_theta(x | x~_t),

has a stationary distribution that converges to the data distribution as P_theta(x | x~)
becomes the true conditional.  That chain -- not a p(z) -- is what makes the DAE generative:
:func:`sample_chain` runs it.  It defines no tractable density over x, so there is no log p(x)
to report for it (the stationary distribution is implicit).

Walkback training (Bengio et al. 2013, section 3.4) makes the chain's spurious modes visible to
training: from x the chain is walked for a geometric number of steps (at most
``walkback_steps``; each further step taken with probability ``walkback_continue``), and *every*
corrupted state x~_t visited is trained to reconstruct the original x:

    walkback(x) = sum_t w_t log P_theta(x | x~_t) / sum_t w_t,
    x~_1 ~ C(. | x),  x*_t ~ P_theta(. | x~_t),  x~_{t+1} ~ C(. | x*_t),
    w_1 = 1,  w_{t+1} = w_t * b_t,  b_t ~ Bernoulli(walkback_continue).

Corruptions (``objective.corruption``), all per pixel with level ``rho`` (``noise_level``):
``salt_and_pepper`` (with probability rho the pixel is replaced by a fair coin: 0 or 1),
``bit_flip`` (with probability rho, x -> 1 - x) and ``gaussian`` (x + rho * eps).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from vaegen.errors import ConfigError
from vaegen.model.latent import LatentVariableModel
from vaegen.objectives.autoencoder import needs_point_mass
from vaegen.objectives.base import Objective
from vaegen.registry import OBJECTIVES, Settings, setting

CORRUPTIONS = ("salt_and_pepper", "bit_flip", "gaussian")


def corrupt(key: jax.Array, x: jax.Array, corruption: str, noise_level: float) -> jax.Array:
    """A draw x~ ~ C(x~ | x) of the same shape and dtype as ``x`` (any shape; pixels independent)."""
    if corruption == "salt_and_pepper":
        k_mask, k_value = jax.random.split(key)
        mask = jax.random.bernoulli(k_mask, noise_level, x.shape)
        value = jax.random.bernoulli(k_value, 0.5, x.shape).astype(x.dtype)
        return jnp.where(mask, value, x)
    if corruption == "bit_flip":
        mask = jax.random.bernoulli(key, noise_level, x.shape)
        return jnp.where(mask, 1.0 - x, x).astype(x.dtype)
    if corruption == "gaussian":
        return x + noise_level * jax.random.normal(key, x.shape, x.dtype)
    raise ValueError(f"unknown corruption {corruption!r}; choose one of {', '.join(CORRUPTIONS)}")


def _reconstruction(m: LatentVariableModel, x_tilde: jax.Array):
    """P(x | x~) = p(x | z = f(x~)): a distrax distribution over x."""
    return m.p_x_given_z(m.q_z_given_x(x_tilde).mean())


@dataclasses.dataclass(frozen=True)
class DAESettings(Settings):
    corruption: str = setting("salt_and_pepper", "C(x~ | x): salt_and_pepper (a pixel replaced by a fair coin), "
                              "bit_flip (x -> 1 - x) or gaussian (x + rho eps)", choices=CORRUPTIONS)
    noise_level: float = setting(0.3, "rho: probability a pixel is corrupted (gaussian: the noise's std)", gt=0)
    walkback_steps: int = setting(1, "most corruption-reconstruction steps per example (1 = the plain DAE)", gt=0)
    walkback_continue: float = setting(0.5, "probability of walking one step further", ge=0, le=1)

    def validate(self, key):
        if self.corruption != "gaussian" and not 0.0 < self.noise_level < 1.0:
            raise ConfigError(f"{key('noise_level')}={self.noise_level!r} is the probability that "
                              f"{self.corruption} corrupts a pixel and must lie in (0, 1)")


@dataclasses.dataclass(frozen=True)
class DenoisingAutoencoder(Objective):
    """The DAE objective with walkback, per example (see the module docstring).

    Attributes:
      settings: :class:`DAESettings`: the ``corruption`` (``salt_and_pepper`` | ``bit_flip`` |
        ``gaussian``), rho = ``noise_level`` (the corruption probability per pixel, or the Gaussian
        noise's std), ``walkback_steps`` (the most steps of the walk; 1: the plain DAE) and
        ``walkback_continue`` (the probability of taking each further step).

    Terms (nats, one example): ``denoising`` log P(x | x~_1) (the plain DAE term),
    ``walkback`` the weighted mean over the walk (= ``denoising`` when ``walkback_steps`` is 1),
    ``walk_length`` sum_t w_t, ``objective`` = ``walkback``.
    """

    settings: DAESettings = DAESettings()
    bound_name = "denoising"

    def __call__(self, model: LatentVariableModel, variables: Any, x: jax.Array, key: jax.Array,
                 step: jax.Array | int = 0) -> dict[str, jax.Array]:
        del step
        if not model.is_autoencoder:
            raise ValueError("the DAE objective needs a deterministic encoder (inference.posterior=point_mass)")

        s = self.settings

        def walk(x_prev, k):
            k_corrupt, k_sample, k_continue = jax.random.split(k, 3)
            x_tilde = corrupt(k_corrupt, x_prev, s.corruption, s.noise_level)
            log_p, x_next = model.apply(
                variables, method=lambda m: (lambda p: (p.log_prob(x), p.sample(seed=k_sample)))(
                    _reconstruction(m, x_tilde)))
            go_on = jax.random.bernoulli(k_continue, s.walkback_continue)
            return jax.lax.stop_gradient(x_next).astype(x.dtype), (log_p, go_on)

        keys = jax.random.split(key, s.walkback_steps)
        _, (log_ps, go_on) = jax.lax.scan(walk, x, keys)            # [K], [K]
        weights = jnp.concatenate([jnp.ones((1,)), jnp.cumprod(go_on[:-1].astype(jnp.float32))])  # [K]
        walkback = jnp.sum(weights * log_ps) / jnp.sum(weights)
        return {"denoising": log_ps[0], "walkback": walkback, "walk_length": jnp.sum(weights),
                "objective": walkback}

    def for_validation(self, validation_num_samples: int) -> "DenoisingAutoencoder":
        """The plain denoising term (no walk) on held-out data: log P(x | x~), x~ ~ C(x~ | x)."""
        del validation_num_samples
        return dataclasses.replace(self, settings=dataclasses.replace(self.settings, walkback_steps=1))


@OBJECTIVES.register("dae", settings=DAESettings, check=needs_point_mass, traits={"markov_chain": True})
def dae(settings: DAESettings, *, steps_per_epoch: int = 1) -> DenoisingAutoencoder:
    """E_{x~ ~ C(x~|x)} log P(x | x~) with walkback (Bengio et al. 2013): generative through its Markov chain."""
    del steps_per_epoch
    return DenoisingAutoencoder(settings)


def sample_chain(model: LatentVariableModel, variables: Any, key: jax.Array, n: int, *, num_steps: int,
                 corruption: str, noise_level: float, x0: jax.Array | None = None,
                 event_shape: tuple[int, ...] | None = None, keep_every: int = 0) -> dict[str, jax.Array]:
    """Runs ``n`` independent chains x~_t ~ C(x~ | x_{t-1}), x_t ~ P(x | x~_t) for ``num_steps``.

    Chain ``i`` draws its noise from ``fold_in(key, i)`` (step ``t``: ``fold_in`` of that by t), so
    a chain's path does not depend on ``n``.  Chains start from ``x0 [n, *event]`` or, by
    default, from uniform noise (every pixel a fair coin; ``event_shape`` needed then).

    Returns a dict: ``x`` the final states ``[n, *event]`` (samples of the chain), ``mean`` the
    mean of the last reconstruction distribution E[x | x~_T] ``[n, *event]`` (for display), and
    with ``keep_every > 0`` ``trajectory`` ``[num_steps // keep_every, n, *event]``: the means
    at steps keep_every, 2 keep_every, ...
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    chain_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))    # [n]
    if x0 is None:
        if event_shape is None:
            raise ValueError("sample_chain needs x0 or event_shape")
        x0 = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, 0xFFFFFFFF), 0.5, tuple(event_shape)))(
            chain_keys).astype(jnp.float32)

    every = keep_every or num_steps
    if num_steps % every:
        raise ValueError(f"keep_every={keep_every} must divide num_steps={num_steps}")

    def one_chain(k, x_start):
        def step(carry, t):
            x_prev, _ = carry
            k_corrupt, k_sample = jax.random.split(jax.random.fold_in(k, t))
            x_tilde = corrupt(k_corrupt, x_prev, corruption, noise_level)
            mean, x_next = model.apply(
                variables, method=lambda m: (lambda p: (p.mean(), p.sample(seed=k_sample)))(_reconstruction(m, x_tilde)))
            return (x_next.astype(x_prev.dtype), mean.astype(x_prev.dtype)), None

        def block(carry, b):
            carry, _ = jax.lax.scan(step, carry, b * every + jnp.arange(every))
            return carry, carry[1]

        (x_last, mean_last), kept = jax.lax.scan(block, (x_start, jnp.zeros_like(x_start)),
                                                 jnp.arange(num_steps // every))
        return x_last, mean_last, kept                                    # [*event], [*event], [T/every, *event]

    @jax.jit
    def run(chain_keys, x0):
        return jax.vmap(one_chain)(chain_keys, x0)

    x_last, mean_last, kept = run(chain_keys, jnp.asarray(x0, jnp.float32))
    out = {"x": x_last, "mean": mean_last}
    if keep_every:
        out["trajectory"] = jnp.swapaxes(kept, 0, 1)                      # [T/every, n, *event]
    return out
