"""The ways a model codes images losslessly: registered coders, and the chained coding of a set.

A model that defines p(x) is a lossless compressor: an image costs about -log2 p(x) bits.  Each
coder is a registered component of :data:`CODERS` (``vaegen config --components coder``) with typed
settings, and says what it needs of a model (:meth:`Coder.refusal`, :func:`supported`):

=======================  ======================================================================
``bits_back``            a continuous q(z | x) with a density and a p(z) (a VAE; two stochastic
                         layers through both; a second-stage VAE as p(z), bits back twice):
                         BB-ANS (Townsend, Bird & Barber 2019).  Pop z from q(z | x) on the grid
                         (the bits come back), push x with p(x | z), push z with p(z): the file
                         grows by -log P(x | z) - log P(z) + log Q(z | x), the negative ELBO.
``quantized_latent``     a code z = E_q[z | x] (a point mass: the AE, WAE, AAE) and a p(z): push
                         x with p(x | z^) and the bin z^ of z with the mass p(z) gives it.  No bits
                         back: the file costs -log P(z^) - log p(x | z^), above -log p(x) by what
                         the quantization costs.
``discrete_bits_back``   a discrete q(z | x) and p(z) over the same z (a discrete VAE: M one-hot
                         categorical variables, or D Bernoulli bits): BB-ANS without a grid.  Pop z
                         from q(z | x) with its exact (quantized) probabilities, push x with
                         p(x | z), push z with p(z): the file grows by -log P(x | z) - log P(z) +
                         log Q(z | x), whose expectation is the negative ELBO.
``discrete_codes``       a VQ-VAE with a prior over its codes: push x with p(x | e_c*), then the
                         codes c* with the categorical MADE, position by position: -log p(c*) -
                         log p(x | c*), the VQ-VAE's deterministic bound.
``autoregressive``       MADE: pixel by pixel with p(x_d | x_<d): its exact -log p(x).
=======================  ======================================================================

An autoencoder without p(z) is refused by every coder with one line
(:data:`vaegen.errors.NO_PRIOR_TO_CODE`): it defines no p(x), so there is nothing to code z with.

**Chaining.**  The images are coded in blocks on one stack (:mod:`vaegen.coding.ans`), the networks
of a block in one compiled batch, the coder sequential.  Bits back needs bits on the stack to pop:
the stack starts with a few fixed words (the *initial bits*, at most about D x P bits, or M x 24 for
a discrete z of M variables, paid once by the first image) and the blocks grow as the stack does -- block k pops at most what the blocks
before it pushed (size 1, then about stack bits / (1.25 x the most popped per image so far, or the
most one image pops in expectation where the plan knows it), at most ``max_block``) -- so the
initial bits are paid once for the whole set.  The decoder runs the blocks
in reverse and ends with exactly the initial words on the stack.  A block's networks run on a
padded batch of 16, 256 or ``max_block`` rows, the same when decoding.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vaegen.activations import activation
from vaegen import sharding as sharding_lib
from vaegen.blocks import posteriors as posteriors_lib
from vaegen.coding import ans, latents, observations
from vaegen.coding import discrete as discrete_coding
from vaegen.coding.grid import Grid
from vaegen.coding.latents import Block, Refused, Session, pad
from vaegen.errors import (NO_PRIOR_TO_CODE, CodingError, CompressedFileError, ConfigError, NoPriorError,
                           UndefinedEstimateError)
from vaegen.estimators import enumeration as enumeration_lib
from vaegen.estimators import importance as importance_lib
from vaegen.model.autoregressive import MADE, made_masks
from vaegen.model.vq import VQVAE
from vaegen.objectives import bounds as bounds_lib
from vaegen.registry import POSTERIORS, Registry, Settings, Trait, parse, setting, to_mapping

CODERS = Registry("coder", "lossless coders of images (`vaegen compress`)",
                  "none: ``build(settings)`` is the coder; it reads the model's structure itself", traits=[
                      Trait("preference", int, 99, "its place among the coders that fit a model (the lowest is the "
                            "model's own)"),
                      Trait("needs", str, "", "what a model needs for it to code (one line, for the docs)"),
                  ])

SAFETY = 1.25
"""A block pops at most the stack's bits / (SAFETY x the most any earlier block popped per image, or
the plan's ``pop_rate`` if that is more)."""

BUCKET = 16
"""Padded batch sizes are powers of BUCKET from BUCKET on (16, 256, 4096, ...), at most the block limit:
a few compiled shapes, at most BUCKET times the rows a block needs."""

DISCRETE_Z = ("q(z|x) is over a discrete z (categorical or Bernoulli variables), which {coder} does not code: code "
              "it exactly, without a grid, with the discrete_bits_back coder")

NO_CODE_PRIOR = ("this VQ-VAE has no prior over its codes, so there is nothing to code the codes with: fit one "
                 "(`vaegen expost --density code_prior`) and code with --density code_prior")


# --- what a coder needs of a model ------------------------------------------------------------------

def has_latents(model: Any) -> bool:
    return bool(getattr(model, "has_latents", True))


def _point_mass(model: Any) -> bool:
    """q(z | x) is the autoencoder's point mass (or the proposal around it that an ex-post density brings)."""
    posterior = getattr(model, "posterior", None)
    return posteriors_lib.is_point_mass(posterior) or isinstance(posterior, posteriors_lib.CodeProposal)


def discrete_latent(model: Any) -> str | None:
    """The discrete latent space of ``model``'s q(z | x) (``one_hot_categorical`` or ``bernoulli``: the
    ``discrete`` trait of the registered posterior that built it), or None for a continuous z."""
    component = POSTERIORS.built_by(getattr(model, "posterior", None))
    return None if component is None else component.trait("discrete")


def _no_prior(model: Any) -> tuple[type, str] | None:
    if isinstance(model, VQVAE) and model.prior is None:
        return NoPriorError, NO_CODE_PRIOR
    if has_latents(model) and getattr(model, "prior", None) is None:
        return NoPriorError, NO_PRIOR_TO_CODE
    return None


def _likelihood(model: Any) -> tuple[type, str] | None:
    reason = observations.refusal(model.likelihood)
    return (CodingError, reason) if reason else None


# --- plans: a coder's structure for one model -----------------------------------------------------

class Plan:
    """How one model codes a block (see the module): ``encode(stack, symbols, rows)`` pushes a block
    of images (int32 symbols ``[n, *event]``) and ``decode(stack, n, rows)`` pops it; ``pops`` says
    whether encoding pops (bits back), ``seed_bits`` the initial bits one image may pop,
    ``pop_rate`` the bits per image a block is sized for at least (the most one image pops in
    expectation, where the plan knows it: what the first images popped may be far less),
    ``max_rows`` the largest block its tables allow."""

    observation: observations.Observation
    pops: bool = False
    seed_bits: int = 0
    pop_rate: float = 1.0

    @property
    def max_rows(self) -> int:
        return self.observation.max_rows

    def bind(self, variables: Any) -> "Plan":
        """The plan with ``variables`` (the parameters) in place; returns itself.  A plan's compiled
        functions take the parameters as arguments, so one plan serves every set of parameters of
        its model."""
        self.variables = variables
        return self

    def encode(self, stack: ans.Stack, symbols: np.ndarray, rows: int) -> None:
        raise NotImplementedError

    def decode(self, stack: ans.Stack, n: int, rows: int) -> np.ndarray:
        raise NotImplementedError


def _p_z(m):
    return m.p_z()


def _traced(build: Any, *args: Any) -> Any:
    """``build(*args)`` run under ``jax.eval_shape``: a plan reads the structure of distributions
    (their types and shapes) from a trace, without running or compiling anything."""
    out = {}

    def f(*a):
        out["value"] = build(*a)
        return jnp.zeros(())

    jax.eval_shape(f, *args)
    return out["value"]


class _LatentPlan(Plan):
    """What the coders of a latent vector share: p(z) on the grid and x given z."""

    def __init__(self, model: Any, variables: Any, event_shape: tuple[int, ...], precision: int, *,
                 allow_flow: bool):
        self.model, self.event_shape = model, tuple(event_shape)
        self.session = Session(variables, Grid(int(precision)))
        p_root = lambda v, ctx: model.apply(v, method=_p_z)
        self.prior = _traced(lambda v: latents.plan(p_root(v, None), p_root, self.session.grid, what="p(z)",
                                                    is_prior=True, allow_flow=allow_flow), variables)
        self.dim = len(self.prior.dims)
        self.observation = observations.observation(
            model.likelihood, lambda v, z: model.apply(v, z, method="p_x_given_z"), self.event_shape)

    @property
    def max_rows(self):
        return min(self.observation.max_rows, self.prior.max_rows)

    def bind(self, variables):
        """The parameters, and the grid's reference that p(z) gives with them."""
        self.session.variables = variables
        loc, scale = self.prior.reference(self.session)
        self.session.loc = np.zeros(self.dim, np.float32)
        self.session.scale = np.ones(self.dim, np.float32)
        self.session.loc[self.prior.dims], self.session.scale[self.prior.dims] = loc, np.maximum(scale, 1e-6)
        return self

    def _images(self, symbols, rows):
        return pad(self.observation.images(symbols), rows)


class BitsBackPlan(_LatentPlan):
    pops = True

    def __init__(self, model, variables, event_shape, precision):
        super().__init__(model, variables, event_shape, precision, allow_flow=False)
        q_root = lambda v, x: model.apply(v, x, method="q_z_given_x")
        self.posterior = _traced(lambda v, x: latents.plan(q_root(v, x), q_root, self.session.grid, what="q(z|x)",
                                                           is_prior=False),
                                 variables, jnp.zeros((1,) + self.event_shape, jnp.float32))
        if len(self.posterior.dims) != self.dim:
            raise Refused(f"q(z|x) is over {len(self.posterior.dims)} dimensions and p(z) over {self.dim}")
        grid = self.session.grid
        self.seed_bits = self.posterior.pop_bits(grid) + self.prior.push_pops(grid)

    @property
    def max_rows(self):
        return min(super().max_rows, self.posterior.max_rows)

    def encode(self, stack, symbols, rows):
        n = symbols.shape[0]
        block = Block.empty(n, rows, self.dim, context=self._images(symbols, rows))
        self.posterior.pop(stack, block, self.session)                     # z ~ Q(z | x): bits back
        self.observation.push(stack, self.session.variables, block.values, symbols)
        self.prior.push(stack, dataclasses.replace(block, context=None), self.session)

    def decode(self, stack, n, rows):
        block = Block.empty(n, rows, self.dim)
        self.prior.pop(stack, block, self.session)
        symbols = self.observation.pop(stack, self.session.variables, block.values, n)
        block.context = self._images(symbols, rows)
        self.posterior.push(stack, block, self.session)                    # the bits go back
        return symbols


class DiscreteBitsBackPlan(Plan):
    """BB-ANS with a discrete z (:mod:`vaegen.coding.discrete`): per block, pop z from q(z | x) (the
    n x V symbols in one call), push x with p(x | z), push z with p(z); decoding runs it backwards.
    q's probabilities come from one compiled function of the padded images, the same when coding
    and decoding; p(z)'s from another of the parameters alone."""

    pops = True

    def __init__(self, model, variables, event_shape):
        self.model, self.event_shape = model, tuple(event_shape)
        q_root = lambda v, x: model.apply(v, x, method="q_z_given_x")
        p_root = lambda v: model.apply(v, method=_p_z)
        self.latents = _traced(lambda v, x: discrete_coding.entropy_model(q_root(v, x), p_root(v)),
                               variables, jnp.zeros((1,) + self.event_shape, jnp.float32))
        self._q = jax.jit(lambda v, x: q_root(v, x).probs.astype(jnp.float32))
        self._p = jax.jit(lambda v: p_root(v).probs.astype(jnp.float32))
        self.observation = observations.observation(
            model.likelihood, lambda v, z: model.apply(v, z, method="p_x_given_z"), self.event_shape)
        self.seed_bits = self.latents.max_pop_bits + 64           # one image's pop at most, and the state
        self.pop_rate = self.latents.max_entropy_bits             # E[pop] = H(q(z|x)): at most this

    @property
    def max_rows(self):
        return min(self.observation.max_rows, self.latents.max_rows)

    def bind(self, variables):
        """The parameters, and p(z)'s probabilities with them (the same for every image)."""
        self.variables = variables
        self.prior = np.asarray(self._p(variables)).reshape(self.latents.probs_shape)
        return self

    def _prior(self, n):
        return np.broadcast_to(self.prior, (n,) + self.prior.shape)

    def _posterior(self, symbols, rows):
        images = pad(self.observation.images(symbols), rows)
        return np.asarray(self._q(self.variables, images))[: symbols.shape[0]]

    def encode(self, stack, symbols, rows):
        n = symbols.shape[0]
        z = self.latents.pop(stack, self._posterior(symbols, rows))           # z ~ Q(z | x): bits back
        self.observation.push(stack, self.variables, self.latents.decoder_input(z, rows), symbols)
        self.latents.push(stack, z, self._prior(n))

    def decode(self, stack, n, rows):
        z = self.latents.pop(stack, self._prior(n))
        symbols = self.observation.pop(stack, self.variables, self.latents.decoder_input(z, rows), n)
        self.latents.push(stack, z, self._posterior(symbols, rows))          # the bits go back
        return symbols


class QuantizedLatentPlan(_LatentPlan):

    def __init__(self, model, variables, event_shape, precision):
        super().__init__(model, variables, event_shape, precision, allow_flow=True)
        self.code = jax.jit(lambda v, x: model.apply(v, x, method="q_z_given_x").mean())
        self.seed_bits = self.prior.push_pops(self.session.grid)
        self.pops = self.seed_bits > 0

    def encode(self, stack, symbols, rows):
        n = symbols.shape[0]
        z = np.asarray(self.code(self.session.variables, self._images(symbols, rows)), np.float32)
        block = Block.empty(n, rows, self.dim)
        self.prior.set(block, self.session, self.prior.quantize(self.session, z)[:n])
        self.observation.push(stack, self.session.variables, block.values, symbols)
        self.prior.push(stack, block, self.session)

    def decode(self, stack, n, rows):
        block = Block.empty(n, rows, self.dim)
        self.prior.pop(stack, block, self.session)
        return self.observation.pop(stack, self.session.variables, block.values, n)


class DiscreteCodesPlan(Plan):
    """A VQ-VAE's codes c* [M] with its categorical MADE p(c), position by position in the MADE's order
    (each position's table computed from the positions before it, the others 0), then x | e_c*."""

    def __init__(self, model, variables, event_shape):
        self.model, self.variables = model, variables
        prior = model.prior
        s = prior.settings
        order, _ = made_masks(int(prior.num_positions), tuple(int(h) for h in s.hidden), s.ordering,
                              int(s.ordering_seed))
        self.positions = np.argsort(order)
        self.m, self.k = int(prior.num_positions), int(prior.num_categories)
        self.codes = jax.jit(lambda v, x: model.apply(v, x, method="codes"))
        self.table = jax.jit(lambda v, c, pos: jnp.take(jax.nn.softmax(
            model.apply(v, method=lambda mod: mod.prior.logits(c)), axis=-1), pos, axis=-2))
        self.observation = observations.observation(
            model.likelihood, lambda v, c: model.apply(v, method=lambda mod: mod.p_x_given_z(mod.code_vectors(c))),
            event_shape)

    @property
    def max_rows(self):
        return min(self.observation.max_rows, max(1, latents.MAX_TABLE_ENTRIES // (self.m * self.k)))

    def encode(self, stack, symbols, rows):
        n = symbols.shape[0]
        c = np.array(self.codes(self.variables, pad(self.observation.images(symbols), rows)), np.int32)
        c[n:] = 0
        self.observation.push(stack, self.variables, c, symbols)
        tables = []
        for t, pos in enumerate(self.positions):               # the decoder's arguments: later positions 0
            prefix = np.zeros_like(c)
            prefix[:, self.positions[:t]] = c[:, self.positions[:t]]
            tables.append(np.asarray(self.table(self.variables, prefix, jnp.int32(pos)))[:n])
        for t in reversed(range(self.m)):
            stack.push_categorical(c[:n, self.positions[t]], tables[t])

    def decode(self, stack, n, rows):
        c = np.zeros((rows, self.m), np.int32)
        for pos in self.positions:
            table = np.asarray(self.table(self.variables, c.copy(), jnp.int32(pos)))[:n]
            c[:n, pos] = stack.pop_categorical(table)
        return self.observation.pop(stack, self.variables, c, n)


def _made_start(m):
    return m.hidden_layers[0].bias


def _made_step(m, pre, x_prev, d_prev, d):
    """One step of MADE's pixel-by-pixel pass (as in :meth:`MADE.sample_with_probs`): the first layer's
    pre-activations ``pre [rows, H1]`` take the pixel decided last (``x_prev [rows]`` at ``d_prev``), and
    P(x_d = 1 | x_<d) ``[rows]`` follows."""
    pre = pre + x_prev[:, None] * m.hidden_layers[0].masked_kernel()[d_prev]
    act = activation(m.settings.activation)
    h = act(pre)
    for layer in m.hidden_layers[1:]:
        h = act(layer(h))
    logit = h @ m.logits_layer.masked_kernel()[:, d] + m.logits_layer.bias[d]
    return pre, jax.nn.sigmoid(logit)


class AutoregressivePlan(Plan):
    """MADE's pixels in its order, each with p(x_d | x_<d) from one compiled step that updates the first
    layer with the pixel before (the same step when coding and decoding)."""

    def __init__(self, model, variables, event_shape):
        self.model, self.variables = model, variables
        order, _ = made_masks(*model.spec)
        self.pixels = np.argsort(order)
        self.observation = observations.Bernoulli(None, event_shape)
        self._start = jax.jit(lambda v: model.apply(v, method=_made_start))
        self._step = jax.jit(lambda v, pre, x_prev, d_prev, d: model.apply(v, pre, x_prev, d_prev, d, method=_made_step))

    def _probs(self, x, rows, n, stack=None):
        """P(x_d = 1 | x_<d) for every step ``[D, n]``; with a stack, decodes x ``[rows, D]`` on the way."""
        start = np.asarray(self._start(self.variables))
        pre = jnp.asarray(np.broadcast_to(start, (rows, start.shape[-1])))
        probs = np.zeros((len(self.pixels), n), np.float32)
        x_prev = np.zeros((rows,), np.float32)
        d_prev = 0
        for t, d in enumerate(self.pixels):
            pre, p = self._step(self.variables, pre, x_prev, jnp.int32(d_prev), jnp.int32(d))
            probs[t] = np.asarray(p)[:n]
            if stack is not None:
                x[:n, d] = stack.pop_bernoulli(probs[t])
            x_prev = np.ascontiguousarray(x[:, d], np.float32)
            d_prev = int(d)
        return probs

    def encode(self, stack, symbols, rows):
        n = symbols.shape[0]
        x = pad(symbols.reshape(n, -1).astype(np.float32), rows)
        probs = self._probs(x, rows, n)
        stack.push_bernoulli(symbols.reshape(n, -1)[:, self.pixels].T, probs)

    def decode(self, stack, n, rows):
        x = np.zeros((rows, len(self.pixels)), np.float32)
        self._probs(x, rows, n, stack)
        return x[:n].astype(np.int32).reshape((n,) + self.observation.event_shape)


# --- the coders ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Coder:
    """A registered coder with its settings: which models it is for (:meth:`applies`), what it needs
    of one (:meth:`refusal`), its plan for a model, and the bound its code length is compared with
    (:meth:`reference`)."""

    name: str
    settings: Settings

    def applies(self, model: Any) -> str | None:
        """None if this coder is for models of ``model``'s kind, else one line saying what it codes."""
        raise NotImplementedError

    def refusal(self, model: Any) -> tuple[type, str] | None:
        """``(error class, one line)`` if this coder cannot code ``model`` (read from its structure,
        without parameters), else None."""
        other = self.applies(model)
        return (CodingError, other) if other else self._needs(model)

    def _needs(self, model: Any) -> tuple[type, str] | None:
        return None

    def plan(self, model: Any, variables: Any, event_shape: tuple[int, ...]) -> Plan:
        raise NotImplementedError

    def reference(self, model: Any, variables: Any, x: jax.Array, key: jax.Array, samples: int | None = None
                  ) -> tuple[np.ndarray, str]:
        """``(nats [N], meaning)``: the model's -ELBO, -log p(x) or bound on the same images."""
        raise NotImplementedError

    @property
    def max_block(self) -> int:
        return int(self.settings.max_block)


def _per_example(fn, variables, x, key, batch_size=100):
    return np.asarray(sharding_lib.map_examples(jax.tree_util.Partial(fn, variables), jnp.asarray(x), key,
                                                batch_size=min(batch_size, x.shape[0])), np.float64)


@dataclasses.dataclass(frozen=True)
class _NegativeELBO:
    model: Any
    samples: int

    def __call__(self, variables, x, key):
        t = bounds_lib.elbo_of(self.model, variables, lambda m: m.q_z_given_x(x), x, key, self.samples)
        return -t["elbo"]


@dataclasses.dataclass(frozen=True)
class _ExactNegative:
    model: Any

    def __call__(self, variables, x, key):
        del key
        return -self.model.apply(variables, x, method="log_prob")


@dataclasses.dataclass(frozen=True)
class _NegativeCodeBound:
    model: Any

    def __call__(self, variables, x, key):
        del key

        def f(m):
            c = m.codes(x)
            return -(m.log_prob_codes(c) + m.log_likelihood(x, m.code_vectors(c)))

        return self.model.apply(variables, method=f)


@dataclasses.dataclass(frozen=True)
class BitsBackSettings(Settings):
    precision: int = setting(12, "P: each latent's bin index has P bits (2^P bins of equal mass under the grid's "
                             "reference Gaussian, p(z) itself for N(0, I))", ge=2, le=20)
    max_block: int = setting(1024, "most images coded in one step (speed and memory only)", gt=0)


@dataclasses.dataclass(frozen=True)
class QuantizedLatentSettings(Settings):
    precision: int = setting(8, "P: the code's bin index has P bits per dimension (coarser bins cost fewer bits "
                             "for z and more for x given z)", ge=2, le=20)
    max_block: int = setting(1024, "most images coded in one step (speed and memory only)", gt=0)


@dataclasses.dataclass(frozen=True)
class BlockSettings(Settings):
    max_block: int = setting(1024, "most images coded in one step (speed and memory only)", gt=0)


@dataclasses.dataclass(frozen=True)
class BitsBack(Coder):
    settings: BitsBackSettings = BitsBackSettings()

    def applies(self, model):
        if not has_latents(model) or isinstance(model, VQVAE):
            return "bits back codes a continuous latent z, and this model has none"
        if _point_mass(model):
            return ("q(z|x) is a point mass (an autoencoder's code): it has no density, so no bits come back; code "
                    "the code itself with the quantized_latent coder")
        if discrete_latent(model):
            return DISCRETE_Z.format(coder=self.name)
        return None

    def _needs(self, model):
        return _no_prior(model) or _likelihood(model)

    def plan(self, model, variables, event_shape):
        return BitsBackPlan(model, variables, event_shape, self.settings.precision)

    def reference(self, model, variables, x, key, samples=None):
        s = int(samples or 8)
        values = _per_example(_NegativeELBO(model, s), variables, x, key, batch_size=max(1, 800 // s))
        return values, (f"-ELBO: an upper bound on -log p(x) (E_q[log p(x|z)] with {s} samples of z per image, the "
                        "KL in closed form where it has one)")


@dataclasses.dataclass(frozen=True)
class QuantizedLatent(Coder):
    settings: QuantizedLatentSettings = QuantizedLatentSettings()

    def applies(self, model):
        if not has_latents(model) or isinstance(model, VQVAE):
            return "quantized_latent codes a continuous latent code z, and this model has none"
        if discrete_latent(model):
            return DISCRETE_Z.format(coder=self.name)
        return None

    def _needs(self, model):
        return _no_prior(model) or _likelihood(model)

    def plan(self, model, variables, event_shape):
        return QuantizedLatentPlan(model, variables, event_shape, self.settings.precision)

    def reference(self, model, variables, x, key, samples=None):
        k = int(samples or 100)
        proposal = "prior" if posteriors_lib.is_point_mass(model.posterior) else "posterior"
        try:
            log_joint, prop = importance_lib.model_functions(model, variables, proposal=proposal)
        except UndefinedEstimateError as e:
            raise CodingError(str(e)) from None
        out = importance_lib.importance_sampling(log_joint, prop, jnp.asarray(x), key, num_samples=k)
        what = "q(z|x)" if proposal == "posterior" else "p(z)"
        return (-np.asarray(out["log_px"], np.float64),
                f"-log p(x) by importance sampling (k={k}, proposal {what}): above -log p(x) in expectation")


EXACT_REFERENCE_CONFIGURATIONS = 256
"""A discrete z with at most this many configurations gets its exact -ELBO as the reference (summed
over every z: that many decoder passes per image); a larger one a Monte Carlo estimate."""


@dataclasses.dataclass(frozen=True)
class DiscreteBitsBack(Coder):
    settings: BlockSettings = BlockSettings()

    def applies(self, model):
        if not has_latents(model) or isinstance(model, VQVAE):
            return "discrete_bits_back codes a discrete latent z, and this model has none"
        if _point_mass(model):
            return ("q(z|x) is a point mass (an autoencoder's code): discrete_bits_back codes a discrete z drawn from "
                    "a categorical or Bernoulli q(z|x)")
        if not discrete_latent(model):
            return ("discrete_bits_back codes a discrete z (a categorical or Bernoulli q(z|x)), and this model's z is "
                    "continuous: code it with the bits_back coder")
        return None

    def _needs(self, model):
        return _no_prior(model) or _likelihood(model)

    def plan(self, model, variables, event_shape):
        return DiscreteBitsBackPlan(model, variables, event_shape)

    def reference(self, model, variables, x, key, samples=None):
        size = enumeration_lib.support_size(model, variables)
        if size is not None and size <= EXACT_REFERENCE_CONFIGURATIONS:
            fns = enumeration_lib.enumeration_functions(model, variables)
            out = enumeration_lib.exact_log_px(*fns, jnp.asarray(x), max_configurations=EXACT_REFERENCE_CONFIGURATIONS)
            return (-np.asarray(out["elbo"], np.float64),
                    f"-ELBO, exact: summed over the {size} configurations of z (an upper bound on -log p(x))")
        s = int(samples or 8)
        values = _per_example(_NegativeELBO(model, s), variables, x, key, batch_size=max(1, 800 // s))
        return values, (f"-ELBO: an upper bound on -log p(x) (E_q[log p(x|z)] with {s} samples of z per image, the "
                        "KL in closed form)")


@dataclasses.dataclass(frozen=True)
class DiscreteCodes(Coder):
    settings: BlockSettings = BlockSettings()

    def applies(self, model):
        return None if isinstance(model, VQVAE) else "discrete_codes codes a VQ-VAE's codes, and this model is no VQ-VAE"

    def _needs(self, model):
        return _no_prior(model) or _likelihood(model)

    def plan(self, model, variables, event_shape):
        return DiscreteCodesPlan(model, variables, event_shape)

    def reference(self, model, variables, x, key, samples=None):
        return (_per_example(_NegativeCodeBound(model), variables, x, key),
                "-log p(c*) - log p(x|c*), c* the encoder's codes: the VQ-VAE's deterministic bound (an upper "
                "bound on -log p(x)), exactly what the code costs")


@dataclasses.dataclass(frozen=True)
class Autoregressive(Coder):
    settings: BlockSettings = BlockSettings()

    def applies(self, model):
        return None if isinstance(model, MADE) else "autoregressive codes a MADE's pixels, and this model is no MADE"

    def plan(self, model, variables, event_shape):
        return AutoregressivePlan(model, variables, event_shape)

    def reference(self, model, variables, x, key, samples=None):
        return _per_example(_ExactNegative(model), variables, x, key), "-log p(x), exact"


@CODERS.register("bits_back", settings=BitsBackSettings, traits={
    "preference": 2, "needs": "a continuous q(z|x) with a density, a p(z), a discrete p(x|z)"})
def bits_back(settings: BitsBackSettings) -> BitsBack:
    """BB-ANS: z popped from q(z|x) on the grid (bits back), x pushed with p(x|z), z with p(z); costs the -ELBO."""
    return BitsBack("bits_back", settings)


@CODERS.register("discrete_bits_back", settings=BlockSettings, traits={
    "preference": 2, "needs": "a categorical or Bernoulli q(z|x), a p(z) over the same z, a discrete p(x|z)"})
def discrete_bits_back(settings: BlockSettings) -> DiscreteBitsBack:
    """BB-ANS with a discrete z: z popped from q(z|x) with its exact probabilities, x pushed with p(x|z), z with
    p(z); costs the -ELBO."""
    return DiscreteBitsBack("discrete_bits_back", settings)


@CODERS.register("quantized_latent", settings=QuantizedLatentSettings, traits={
    "preference": 3, "needs": "a code z = E_q[z|x] (a point mass), a p(z), a discrete p(x|z)"})
def quantized_latent(settings: QuantizedLatentSettings) -> QuantizedLatent:
    """The code's bin z^ with the mass p(z) gives it, then x with p(x|z^): no bits back; costs -log P(z^) - log p(x|z^)."""
    return QuantizedLatent("quantized_latent", settings)


@CODERS.register("discrete_codes", settings=BlockSettings, traits={
    "preference": 1, "needs": "a VQ-VAE with a prior over its codes"})
def discrete_codes(settings: BlockSettings) -> DiscreteCodes:
    """A VQ-VAE's codes c* with its categorical MADE p(c), then x with p(x|e_c*); costs -log p(c*) - log p(x|c*)."""
    return DiscreteCodes("discrete_codes", settings)


@CODERS.register("autoregressive", settings=BlockSettings, traits={"preference": 0, "needs": "MADE"})
def autoregressive(settings: BlockSettings) -> Autoregressive:
    """MADE's pixels one by one with p(x_d | x_<d); costs its exact -log p(x)."""
    return Autoregressive("autoregressive", settings)


# --- choosing a coder ----------------------------------------------------------------------------------

def make_coder(name: str, settings: Any = None) -> Coder:
    """The coder ``name`` with ``settings`` (a settings object, a mapping of its settings, or None for
    the defaults); an unknown name or setting is a ConfigError."""
    component = CODERS.get(name)
    if settings is None:
        settings = component.settings()
    elif not isinstance(settings, component.settings):
        if isinstance(settings, Settings):
            raise ConfigError(f"coder {component.name!r} takes {component.settings.__name__}, not "
                              f"{type(settings).__name__}")
        names = [f.name for f in dataclasses.fields(component.settings)]
        unknown = sorted(set(settings) - set(names))
        if unknown:
            raise ConfigError(f"coder {component.name} has no setting {unknown[0]!r} (its settings: "
                              f"{', '.join(names)})")
        try:
            settings = parse(component.settings, dict(settings), component.name)
        except ConfigError as e:
            raise ConfigError(str(e).replace(f"config.{component.name}.", f"coder {component.name} setting ")) from None
    return component.build(settings)


def _by_preference():
    return sorted(CODERS, key=lambda c: (c.trait("preference"), c.name))


def supported(model: Any, variables: Any, event_shape: tuple[int, ...]) -> dict[str, str | None]:
    """Every coder's verdict on ``model``: ``{name: None}`` if it can code it, else one line why not.
    (Reads the structure of p(z), q(z|x) and p(x|z) with the parameters; compiles nothing.)"""
    out = {}
    for component in _by_preference():
        c = component.build(component.settings())
        refused = c.refusal(model)
        if refused:
            out[component.name] = refused[1]
            continue
        try:
            _cached_plan(model, c, tuple(event_shape), _Unhashed(variables))
            out[component.name] = None
        except (Refused, CodingError) as e:
            out[component.name] = str(e)
    return out


def default_coder(model: Any, variables: Any, event_shape: tuple[int, ...]) -> str:
    """The first coder (by preference: autoregressive, discrete_codes, bits_back or discrete_bits_back,
    quantized_latent) that codes ``model``.  If none does, the refusal of the first one made for its
    kind of model is raised (:class:`vaegen.errors.NoPriorError` for an autoencoder without p(z))."""
    first = None
    for component in _by_preference():
        c = component.build(component.settings())
        if c.applies(model):
            continue
        refused = c.refusal(model)
        if refused is None:
            try:
                _cached_plan(model, c, tuple(event_shape), _Unhashed(variables))
                return component.name
            except Refused as e:
                refused = (CodingError, f"coder {c.name}: {e}")
        elif refused[0] is CodingError:
            refused = (CodingError, f"coder {c.name}: {refused[1]}")
        first = first or refused
    if first is None:
        raise CodingError(f"no registered coder codes a {type(model).__name__} (coders: {', '.join(CODERS.names())})")
    raise first[0](first[1])


@functools.lru_cache(maxsize=32)
def _cached_plan(model: Any, c: Coder, event_shape: tuple[int, ...], variables: Any) -> Plan:
    return c.plan(model, variables.value, event_shape)


@dataclasses.dataclass(frozen=True)
class _Unhashed:
    """Variables passed through the plan cache without being part of its key."""

    value: Any

    def __hash__(self):
        return 0

    def __eq__(self, other):
        return isinstance(other, _Unhashed)


def plan_for(model: Any, variables: Any, event_shape: tuple[int, ...], c: Coder) -> Plan:
    """``c``'s plan for ``model`` with ``variables`` bound, or its one-line refusal
    (:class:`vaegen.errors.NoPriorError` without a p(z), :class:`vaegen.errors.CodingError` otherwise).
    Plans (and their compiled functions) are kept for the models seen last."""
    refused = c.refusal(model)
    if refused:
        raise refused[0](f"coder {c.name}: {refused[1]}" if refused[0] is CodingError else refused[1])
    try:
        return _cached_plan(model, c, tuple(event_shape), _Unhashed(variables)).bind(variables)
    except Refused as e:
        raise CodingError(f"coder {c.name}: {e}") from None


# --- coding a set of images --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Layout:
    """What a decoder must know besides the words: the coder and its settings, the images' number and
    shape, the blocks (sizes, in coding order) and the initial words."""

    coder: str
    settings: dict
    num_images: int
    event_shape: tuple[int, ...]
    blocks: tuple[int, ...]
    seed_words: int


@dataclasses.dataclass(frozen=True)
class Coded:
    """The stack's words (uint32) with their :class:`Layout`, and what coding measured: ``stats``
    (``bits_after`` of each block, ``popped`` bits of each block, ``seconds``, ``initial_bits``)."""

    words: np.ndarray
    layout: Layout
    stats: dict


def rows_for(n: int, cap: int) -> int:
    """The padded batch of a block of ``n`` images: the smallest power of :data:`BUCKET` >= n (16 at
    least), at most ``cap``."""
    rows = BUCKET
    while rows < n:
        rows *= BUCKET
    return min(rows, cap)


def compress(model: Any, variables: Any, x: np.ndarray, *, coder: str | None = None, settings: Any = None,
             event_shape: tuple[int, ...] | None = None) -> Coded:
    """Codes the images ``x [N, *event]`` (float32 as the model sees them) losslessly with ``model``.

    Args:
      coder: a registered coder's name (:data:`CODERS`); None: :func:`default_coder`.
      settings: the coder's settings (object or mapping; None: its defaults).
    Raises:
      vaegen.errors.NoPriorError: a model with latents and no p(z) (an autoencoder).
      vaegen.errors.CodingError: the coder cannot code this model (one line why).
      vaegen.errors.SupportError: images outside the likelihood's support (grey levels for a
        Bernoulli likelihood).
    """
    x = np.asarray(x)
    event_shape = tuple(event_shape or x.shape[1:])
    likelihood = getattr(model, "likelihood", None)
    support = "binary" if isinstance(model, MADE) else None if likelihood is None else observations.support(likelihood)
    if support in observations.OBSERVATIONS:       # images the likelihood cannot code: before anything is built
        observations.OBSERVATIONS[support].symbols(x)
    name = coder or default_coder(model, variables, event_shape)
    c = make_coder(name, settings)
    p = plan_for(model, variables, event_shape, c)
    symbols = p.observation.symbols(x)
    cap = max(1, min(c.max_block, p.max_rows))
    seed = math.ceil(p.seed_bits / 32) if p.pops else 0
    stack = ans.Stack(ans.seed_words(seed))
    blocks, bits_after, popped = [], [], []
    t0 = time.perf_counter()
    pos, rate, n_total = 0, 0.0, symbols.shape[0]
    while pos < n_total:
        if p.pops:
            b = 1 if not blocks else int(stack.bits() / (SAFETY * max(rate, p.pop_rate)))
            b = max(1, min(b, cap))
        else:
            b = cap
        b = min(b, n_total - pos)
        before = stack.popped
        p.encode(stack, symbols[pos:pos + b], rows_for(b, cap))
        popped.append(stack.popped - before)
        rate = max(rate, popped[-1] / b)
        bits_after.append(stack.bits())
        blocks.append(b)
        pos += b
    seconds = time.perf_counter() - t0
    layout = Layout(c.name, to_mapping(c.settings), int(n_total), event_shape, tuple(blocks), seed)
    return Coded(stack.words(), layout, {"bits_after": bits_after, "popped": popped, "seconds": seconds,
                                         "initial_bits": 32 * seed})


def decompress(model: Any, variables: Any, words: np.ndarray, layout: Layout) -> np.ndarray:
    """The images that :func:`compress` coded into ``words`` with ``layout``: float32 ``[N, *event]``.

    Raises:
      vaegen.errors.CompressedFileError: the words do not decode to the end where coding began (they
        were damaged, or coded by another model or on another platform).
    """
    c = make_coder(layout.coder, layout.settings)
    p = plan_for(model, variables, tuple(layout.event_shape), c)
    cap = max(1, min(c.max_block, p.max_rows))
    stack = ans.Stack(words)
    parts = []
    try:
        for b in reversed(layout.blocks):
            parts.append(p.decode(stack, int(b), rows_for(int(b), cap)))
    except (ValueError, RuntimeError, IndexError, OverflowError) as e:
        raise CompressedFileError(f"the coded words do not decode: {type(e).__name__}: {e}") from None
    if not np.array_equal(stack.words(), ans.seed_words(layout.seed_words)):
        raise CompressedFileError("decoding did not end where coding began (with the initial bits): the data were "
                                  "damaged, or coded by another model or on another platform, whose networks round "
                                  "differently")
    symbols = np.concatenate(parts[::-1], axis=0)
    return p.observation.images(symbols)
