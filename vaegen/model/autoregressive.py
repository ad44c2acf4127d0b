"""An autoregressive model with no latent variable: MADE (Germain, Gregor, Murray & Larochelle 2015).

    p(x) = prod_i p(x_{o(i)} | x_{o(<i)}),   p(x_d | x_<d) = Bernoulli(sigmoid(logit_d(x)))

One masked MLP computes every conditional's logit in a single pass: a unit of hidden layer l
has a degree m_l(k) in {1, ..., D-1} and sees only inputs of order <= m_l(k); output d sees only
units of degree < o(d).  Its log p(x) is therefore *exact* (a sum of D Bernoulli
log-probabilities, in nats) -- the other family of generative models: nothing is inferred,
there is no z, and it is sampled pixel by pixel.

It trains through the same trainer as every latent-variable model:
``config.model.kind = autoregressive`` builds a :class:`MADE` (its settings: :class:`MADESettings`) and
``config.objective = exact`` maximises :class:`vaegen.objectives.exact.ExactLogLikelihood`.

Sampling costs D steps, but each step only needs the one new conditional: the first layer's
pre-activations are updated with the one new pixel (O(H_1)), the remaining hidden layers are
recomputed, and only output d is evaluated, so :meth:`MADE.sample` is O(D * (H_1 + sum H_l H_{l+1}
+ H_L)) per sample instead of D full passes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vaegen.activations import ACTIVATIONS, activation
from vaegen.errors import NO_LATENT_MESSAGE, ConfigError, NoLatentError
from vaegen.model.latent import NoLatents
from vaegen.registry import MODEL_KINDS, Settings, setting
from vaegen.spec.run import InferenceSpec, ModelSpec, RunSpec


@functools.lru_cache(maxsize=16)
def made_masks(num_inputs: int, hidden: tuple[int, ...], ordering: str = "natural",
               seed: int = 0) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The input order and connectivity masks of a MADE.

    Returns ``(order, masks)``: ``order [D]`` with ``order[d]`` the position (1..D) of input d in
    the autoregressive order, and one ``{0, 1}`` mask ``[fan_in, fan_out]`` per layer (hidden
    layers then the output layer).  Degrees of hidden units are drawn uniformly from
    ``{min degree of the layer below, ..., D - 1}`` with ``numpy.random.RandomState(seed)``.
    """
    rng = np.random.RandomState(seed)
    if ordering == "natural":
        order = np.arange(1, num_inputs + 1)
    elif ordering == "random":
        order = rng.permutation(num_inputs) + 1
    else:
        raise ValueError(f"unknown ordering {ordering!r}; choose natural or random")
    degrees = [order]
    for width in hidden:
        low = min(int(degrees[-1].min()), num_inputs - 1)
        degrees.append(rng.randint(low, num_inputs, size=width))          # in [low, D - 1]
    masks = [(d_out[None, :] >= d_in[:, None]).astype(np.float32) for d_in, d_out in zip(degrees[:-1], degrees[1:])]
    masks.append((order[None, :] > degrees[-1][:, None]).astype(np.float32))   # output d: units of degree < o(d)
    return order, tuple(masks)


class MaskedDense(nn.Module):
    """A dense layer whose kernel is multiplied by a fixed {0, 1} mask ``[fan_in, fan_out]``."""

    features: int
    mask_index: int
    spec: tuple  # (num_inputs, hidden, ordering, seed): identifies the masks of made_masks
    bias_init: Any = nn.initializers.zeros

    def setup(self):
        fan_in = self.spec[0] if self.mask_index == 0 else self.spec[1][self.mask_index - 1]
        self.kernel = self.param("kernel", nn.initializers.lecun_normal(), (fan_in, self.features))
        self.bias = self.param("bias", self.bias_init, (self.features,))

    def mask(self) -> jax.Array:
        return jnp.asarray(made_masks(*self.spec)[1][self.mask_index])

    def masked_kernel(self) -> jax.Array:
        return self.kernel * self.mask()

    def __call__(self, h: jax.Array) -> jax.Array:
        return h @ self.masked_kernel() + self.bias


@dataclasses.dataclass(frozen=True)
class MADESettings(Settings):
    """Settings of the ``autoregressive`` model kind (``config.model.kind``): a MADE."""

    hidden: tuple[int, ...] = setting((500,), "widths of the masked hidden layers", items_gt=0, nonempty=True)
    activation: str = setting("relu", "nonlinearity of the hidden layers", choices=tuple(ACTIVATIONS))
    ordering: str = setting("natural", "natural: index order (raster order for images); random: a permutation drawn "
                            "from ordering_seed",
                            choices=("natural", "random"))
    ordering_seed: int = setting(0, "seed of the order and of the hidden units' connectivity degrees")


class MADE(NoLatents, nn.Module):
    """MADE over binary observations of shape ``event_shape``: an exact p(x), no latent variable.

    Attributes:
      event_shape: shape of one observation, e.g. ``(28, 28, 1)``; D = its size.
      settings: :class:`MADESettings`: the widths of the masked hidden layers (``hidden``), their
        nonlinearity (``activation``, :data:`vaegen.activations.ACTIVATIONS`), the ``ordering``
        (``natural``: raster order; ``random``: a seeded permutation) and ``ordering_seed``, the seed
        of the order and of the hidden units' degrees.
    """

    event_shape: tuple[int, ...]
    settings: MADESettings = MADESettings()

    has_latents = False

    @property
    def num_inputs(self) -> int:
        return math.prod(self.event_shape)

    @property
    def spec(self) -> tuple:
        s = self.settings
        return (self.num_inputs, tuple(int(h) for h in s.hidden), s.ordering, int(s.ordering_seed))

    def setup(self):
        hidden = self.settings.hidden
        self.hidden_layers = [MaskedDense(int(w), i, self.spec, name=f"hidden_{i}") for i, w in enumerate(hidden)]
        self.logits_layer = MaskedDense(self.num_inputs, len(hidden), self.spec, name="logits")

    # --- the model -------------------------------------------------------------------------
    def logits(self, x: jax.Array) -> jax.Array:
        """logit p(x_d = 1 | x_<d) for every d: ``[..., *event]`` for ``x [..., *event]``."""
        nd = len(self.event_shape)
        batch = x.shape[: x.ndim - nd]
        h = x.reshape(batch + (self.num_inputs,)).astype(jnp.float32)
        act = activation(self.settings.activation)
        for layer in self.hidden_layers:
            h = act(layer(h))
        return self.logits_layer(h).reshape(batch + tuple(self.event_shape))

    def p_x(self, x: jax.Array) -> distrax.Distribution:
        """The product of the conditionals evaluated at ``x``: ``log_prob(x)`` is the exact log p(x).
        (Only valid at the same ``x`` it was built from: the conditionals depend on it.)"""
        return distrax.Independent(distrax.Bernoulli(logits=self.logits(x)),
                                   reinterpreted_batch_ndims=len(self.event_shape))

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Exact log p(x) in nats: ``[...]`` for ``x [..., *event]``."""
        return self.p_x(x).log_prob(x)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.log_prob(x)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """Ancestral samples ``[n, *event]`` in {0, 1}, pixel by pixel in the model's order."""
        return self.sample_with_probs(key, n)[0]

    def sample_with_probs(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        """``(x [n, *event], probs [n, *event])`` with probs[d] = p(x_d = 1 | x_<d) along each
        sample's own path (the image to display).  Sample ``i`` draws from ``fold_in(key, i)``."""
        order, _ = made_masks(*self.spec)
        pixels = jnp.asarray(np.argsort(order))                      # [D]: the pixel at each position
        w_first = self.hidden_layers[0].masked_kernel()              # [D, H1]
        b_first = self.hidden_layers[0].bias
        rest = [(l.masked_kernel(), l.bias) for l in self.hidden_layers[1:]]
        w_out, b_out = self.logits_layer.masked_kernel(), self.logits_layer.bias   # [H_L, D], [D]
        act = activation(self.settings.activation)

        def one(k):
            def step(carry, t):
                pre, x = carry                                       # [H1], [D]
                d = pixels[t]
                h = act(pre)
                for w, b in rest:
                    h = act(h @ w + b)
                logit = h @ w_out[:, d] + b_out[d]
                x_d = jax.random.bernoulli(jax.random.fold_in(k, t), jax.nn.sigmoid(logit)).astype(jnp.float32)
                return (pre + x_d * w_first[d], x.at[d].set(x_d)), jax.nn.sigmoid(logit)

            (_, x), probs_in_order = jax.lax.scan(step, (b_first, jnp.zeros((self.num_inputs,))),
                                                  jnp.arange(self.num_inputs))
            probs = jnp.zeros((self.num_inputs,)).at[pixels].set(probs_in_order)
            return x, probs

        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
        x, probs = jax.vmap(one)(keys)
        shape = (n,) + tuple(self.event_shape)
        return x.reshape(shape), probs.reshape(shape)

    # --- what it does not have (and NoLatents) ---------------------------------------------
    def p_z(self):
        raise NoLatentError(NO_LATENT_MESSAGE)

    def with_output_bias(self, variables: Any, data_mean: Any) -> Any:
        """``variables`` with the output bias at logit(data mean), clipped to [1e-3, 1 - 1e-3], so
        that p(x) starts as the product of the pixel means (as the latent-variable models do)."""
        m = np.clip(np.asarray(data_mean, np.float64).reshape(-1), 1e-3, 1 - 1e-3)
        bias = jnp.asarray(np.log(m) - np.log1p(-m), jnp.float32)
        params = dict(variables["params"])
        if params["logits"]["bias"].shape != bias.shape:
            raise ValueError(f"output bias of shape {bias.shape} does not fit {params['logits']['bias'].shape}")
        params["logits"] = dict(params["logits"], bias=bias)
        return {**variables, "params": params}


# --- the registered model kind ---------------------------------------------------------------------

def _check(settings: MADESettings, spec: RunSpec) -> None:
    if spec.model.likelihood.trait("support") != "binary":
        raise ConfigError("config.model.kind=autoregressive (MADE) models binary data: set "
                          "config.model.likelihood=bernoulli and a binarization protocol")


@MODEL_KINDS.register("autoregressive", settings=MADESettings, check=_check,
                      traits={"latents": "none", "exact_log_likelihood": True, "training": "exact"})
def build(settings: MADESettings, *, model: ModelSpec, inference: InferenceSpec, event_shape: Sequence[int]) -> MADE:
    """No z: p(x) = prod_i p(x_i | x_<i) by a MADE, exact log p(x), sampled pixel by pixel (Germain et al. 2015)."""
    del model, inference
    return MADE(event_shape=tuple(int(s) for s in event_shape), settings=settings)


def num_parameters(variables: Any) -> int:
    return int(sum(np.prod(np.shape(a)) for a in jax.tree_util.tree_leaves(variables)))
