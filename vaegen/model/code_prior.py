"""An autoregressive prior over discrete codes: a categorical MADE (model kind ``categorical_made``).

    p(c) = prod_m Categorical(c_{o(m)} | softmax(logits_{o(m)}(c_{o(<m)}))),   c in {0..K-1}^M

One masked MLP (Germain et al. 2015, the masks of :func:`vaegen.model.autoregressive.made_masks`)
maps the one-hot codes ``[M, K]`` to K logits per position; position m sees only the positions
before it in the order, so log p(c) is *exact* (a sum of M log-softmax terms, nats) and the K^M
probabilities sum to 1.  The K inputs (and the K outputs) of a position share its degree.

It is what a VQ-VAE (:mod:`vaegen.model.vq`) is missing after training: a p(c) over its codes.
It trains through vaegen's one trainer like any model: the codes are the data, float arrays
``[N, M]`` of integers in [0, K) under ``data.binarization=real``, ``model.kind=categorical_made``
and ``objective=exact`` (:class:`vaegen.objectives.exact.ExactLogLikelihood`).  See
the ``code_prior`` recipe (:class:`vaegen.runs.recipes.code_prior.CodePrior`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vaegen.activations import activation
from vaegen.errors import NO_LATENT_MESSAGE, ConfigError, NoLatentError
from vaegen.model.autoregressive import MADESettings, made_masks
from vaegen.model.latent import NoLatents
from vaegen.registry import MODEL_KINDS, setting
from vaegen.spec.run import InferenceSpec, ModelSpec, RunSpec


@dataclasses.dataclass(frozen=True)
class CategoricalMADESettings(MADESettings):
    """Settings of the ``categorical_made`` model kind: an autoregressive prior over code indices
    (the MADE's masked layers, order and seed, over K values per position)."""

    hidden: tuple[int, ...] = setting((512,), "widths of the masked hidden layers", items_gt=0, nonempty=True)
    num_categories: int = setting(512, "K, the number of values of each position (a VQ-VAE's codebook size)", ge=2)


class CategoricalMADE(NoLatents, nn.Module):
    """p(c) over ``c [M]`` in {0..K-1}^M by a MADE with a K-way softmax per position.

    Attributes:
      num_positions: M.
      settings: :class:`CategoricalMADESettings`: K = ``num_categories``; the widths of the masked
        hidden layers (``hidden``, at least one), their nonlinearity (``activation``,
        :data:`vaegen.activations.ACTIVATIONS`), the ``ordering`` (``natural``: position 0 first;
        ``random``: a permutation from ``ordering_seed``) and ``ordering_seed``, the seed of the
        order and of the hidden units' degrees.
    """

    num_positions: int
    settings: CategoricalMADESettings = CategoricalMADESettings()

    has_latents = False

    @property
    def num_categories(self) -> int:
        """K."""
        return int(self.settings.num_categories)

    def _masks(self) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        s = self.settings
        return made_masks(int(self.num_positions), tuple(int(h) for h in s.hidden), s.ordering, int(s.ordering_seed))

    def setup(self):
        m, k = int(self.num_positions), int(self.num_categories)
        widths = [int(h) for h in self.settings.hidden]
        init = nn.initializers.lecun_normal()
        # the first layer as [M, K, H1]: row (m, k) is the one-hot input "c_m = k"
        self.kernel_in = self.param("input_kernel", lambda key, s: init(key, (m * k, s[2])).reshape(s),
                                    (m, k, widths[0]))
        self.bias_in = self.param("input_bias", nn.initializers.zeros, (widths[0],))
        self.kernels = [self.param(f"hidden_kernel_{i}", init, (a, b)) for i, (a, b) in
                        enumerate(zip(widths[:-1], widths[1:]))]
        self.biases = [self.param(f"hidden_bias_{i}", nn.initializers.zeros, (b,)) for i, b in enumerate(widths[1:])]
        self.kernel_out = self.param("output_kernel", lambda key, s: init(key, (s[0], m * k)).reshape(s),
                                     (widths[-1], m, k))
        self.bias_out = self.param("output_bias", nn.initializers.zeros, (m, k))

    # --- the model -------------------------------------------------------------------------
    def logits(self, c: jax.Array) -> jax.Array:
        """logits of p(c_m = k | c_<m) for every m: ``[..., M, K]`` for codes ``c [..., M]``."""
        _, masks = self._masks()
        act = activation(self.settings.activation)
        c = jnp.asarray(c).astype(jnp.int32)
        m = int(self.num_positions)
        w_in = self.kernel_in * jnp.asarray(masks[0])[:, None, :]              # [M, K, H1]
        h = jnp.sum(w_in[jnp.arange(m), c], axis=-2) + self.bias_in            # [..., H1]
        h = act(h)
        for i, (w, b) in enumerate(zip(self.kernels, self.biases)):
            h = act(h @ (w * jnp.asarray(masks[i + 1])) + b)
        w_out = self.kernel_out * jnp.asarray(masks[-1])[:, :, None]           # [H_L, M, K]
        return jnp.einsum("...h,hmk->...mk", h, w_out) + self.bias_out

    def log_prob(self, c: jax.Array) -> jax.Array:
        """Exact log p(c) in nats: ``[...]`` for ``c [..., M]`` (integers, or floats holding them)."""
        c = jnp.asarray(c).astype(jnp.int32)
        logp = jax.nn.log_softmax(self.logits(c), axis=-1)                      # [..., M, K]
        return jnp.sum(jnp.take_along_axis(logp, c[..., None], axis=-1)[..., 0], axis=-1)

    def __call__(self, c: jax.Array) -> jax.Array:
        return self.log_prob(c)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """Ancestral samples ``[n, M]`` int32, one position at a time in the model's order."""
        order, _ = self._masks()
        positions = jnp.asarray(np.argsort(order))                                # [M]: the position at each step

        def step(t, c):
            logits = self.logits(c)                                               # [n, M, K]
            p = positions[t]
            draw = jax.random.categorical(jax.random.fold_in(key, t), logits[:, p, :], axis=-1)
            return c.at[:, p].set(draw.astype(jnp.int32))

        return jax.lax.fori_loop(0, int(self.num_positions), step,
                                 jnp.zeros((n, int(self.num_positions)), jnp.int32))

    # --- what it does not have (and NoLatents) ---------------------------------------------
    def p_z(self):
        raise NoLatentError(NO_LATENT_MESSAGE)

    def with_output_bias(self, variables: Any, data_mean: Any) -> Any:
        """Unchanged: the mean of code indices says nothing about their distribution."""
        del data_mean
        return variables


# --- the registered model kind ---------------------------------------------------------------------

CODE_PRIOR_DATA = ("config.model.kind=categorical_made (a prior over integer codes) is trained on codes passed "
                   "as float arrays [N, M] (config.data.binarization=real)")


def _check(settings: CategoricalMADESettings, spec: RunSpec) -> None:
    if spec.data.binarization != "real":
        raise ConfigError(CODE_PRIOR_DATA)


@MODEL_KINDS.register("categorical_made", settings=CategoricalMADESettings, check=_check,
                      traits={"latents": "none", "exact_log_likelihood": True, "over_codes": True, "training": "exact"})
def build(settings: CategoricalMADESettings, *, model: ModelSpec, inference: InferenceSpec,
          event_shape: Sequence[int]) -> CategoricalMADE:
    """No z: p(c) = prod_m p(c_m | c_<m) over integer vectors c in {0..K-1}^M (a VQ-VAE's codes), exact log p(c)."""
    del model, inference
    if len(event_shape) != 1:
        raise ConfigError(f"config.model.kind=categorical_made models vectors of code indices [M]; the data are "
                          f"{tuple(event_shape)}")
    return CategoricalMADE(num_positions=int(event_shape[0]), settings=settings)

