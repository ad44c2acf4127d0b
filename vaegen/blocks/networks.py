"""Neural networks: deterministic maps only, no probability.

Encoders map an observation ``x`` (event shape, e.g. ``[28, 28, 1]``) to a feature vector;
decoders map a latent ``z`` (``[D]``) to features.  The probabilistic *heads* that turn features
into distribution parameters live with the distributions they parameterise
(:mod:`vaegen.blocks.likelihoods`, :mod:`vaegen.blocks.posteriors`), so the same trunk serves a VAE's Gaussian
posterior and an AE's point mass.

All modules act on a single example and on any number of leading batch dimensions alike
(they are vmapped over examples by the objectives).

* :class:`MLP` -- dense layers, ``[..., *event] -> [..., hidden[-1]]``.
* :class:`ConvEncoder` -- convolutions, flatten, dense layers: ``[..., H, W, C] -> [..., F]``.
* :class:`ConvDecoder` -- dense layers, reshape, (upsampling) convolutions:
  ``[..., D] -> [..., H, W, conv_channels[-1]]`` (``spatial_output``: the likelihood's head acts
  per pixel on the last axis).

With ``gated=True`` every layer is a gated layer h = act(W_h x + b_h) * sigmoid(W_g x + b_g)
(GatedDense / GatedConv2d of Dauphin et al. 2017, as in the VampPrior's networks, where act is
the identity, ``activation="none"``).  A gated layer named ``dense_0`` has its gate in
``dense_0_gate``; without gating the parameter names are those of plain layers.
"""

from __future__ import annotations

import math
import dataclasses
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vaegen.errors import ConfigError
from vaegen.registry import NETWORKS, Settings, setting

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


def _layer(make: Callable[[str], nn.Module], name: str, x: jax.Array, act, gated: bool) -> jax.Array:
    """act(layer(x)), or with ``gated`` act(layer(x)) * sigmoid(gate(x)); ``make(name)`` builds
    a layer (dense or convolution) of that name."""
    h = act(make(name)(x))
    if gated:
        h = h * nn.sigmoid(make(f"{name}_gate")(x))
    return h


def _check_conv_stack(kind: str, channels, kernels, strides) -> None:
    lengths = (len(channels), len(kernels), len(strides))
    if len(set(lengths)) != 1:
        raise ConfigError(f"{kind}: conv_channels, conv_kernels and conv_strides need one entry per convolution, "
                            f"got lengths {lengths[0]}, {lengths[1]} and {lengths[2]}")
    for key, values in (("conv_channels", channels), ("conv_kernels", kernels), ("conv_strides", strides)):
        if any(int(v) <= 0 for v in values):
            raise ConfigError(f"{kind}: {key} must be positive, got {tuple(values)}")


class MLP(nn.Module):
    """A multilayer perceptron trunk.

    Attributes:
      hidden: widths of the hidden layers, e.g. ``(200, 200)``; each is followed by the
        activation. The output is the last hidden layer's activation (``[hidden[-1]]``);
        an empty tuple gives the identity on the flattened input (a linear model's trunk).
      activation: name of the nonlinearity (see ``ACTIVATIONS``).
      event_ndims: number of trailing input dimensions that form one example; they are
        flattened (``[..., 28, 28, 1] -> [..., 784]``).
      gated: each layer is act(W_h x + b_h) * sigmoid(W_g x + b_g) (``dense_i``, ``dense_i_gate``).
    """

    hidden: Sequence[int] = (200, 200)
    activation: str = "tanh"
    event_ndims: int = 1
    gated: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch_shape = x.shape[: x.ndim - self.event_ndims]
        h = x.reshape(batch_shape + (-1,)).astype(jnp.float32)
        act = activation(self.activation)
        for i, width in enumerate(self.hidden):
            h = _layer(lambda name, width=width: nn.Dense(width, name=name), f"dense_{i}", h, act, self.gated)
        return h


class ConvEncoder(nn.Module):
    """A convolutional encoder trunk: ``x [..., H, W, C] -> features [..., F]``.

    Convolution i has ``conv_channels[i]`` output channels, a ``conv_kernels[i]`` square kernel
    and stride ``conv_strides[i]``, SAME padding (a stride s divides H and W by s, rounding up),
    each followed by the activation (``conv_i``, gated: ``conv_i_gate``); the result is flattened
    and passed through dense layers of widths ``hidden`` (``dense_i``; may be empty: then
    F = H' W' conv_channels[-1]).

    The VampPrior's encoder (Tomczak & Welling 2018) on 28x28x1 images is
    ``conv_channels=(32, 32, 64, 64, 6), conv_kernels=(7, 3, 5, 3, 3), conv_strides=(1, 2, 1, 2, 1),
    gated=True, activation="none", hidden=()``: features [294] = 7 x 7 x 6.

    Attributes:
      conv_channels, conv_kernels, conv_strides: the convolution stack (equal lengths).
      hidden: widths of the dense layers after the convolutions.
      activation: name of the nonlinearity after every layer (see ``ACTIVATIONS``).
      gated: gated layers (GatedConv2d, GatedDense).
      event_ndims: trailing dimensions of one example; must be 3 ([H, W, C]).
    """

    conv_channels: Sequence[int] = (32, 32, 64, 64)
    conv_kernels: Sequence[int] = (3, 3, 3, 3)
    conv_strides: Sequence[int] = (1, 2, 1, 2)
    hidden: Sequence[int] = ()
    activation: str = "relu"
    gated: bool = False
    event_ndims: int = 3

    def __post_init__(self):
        if self.event_ndims != 3:
            raise ConfigError(f"conv_encoder takes images [H, W, C] (3 event dimensions), not inputs with "
                                f"{self.event_ndims}; use an mlp for this trunk")
        _check_conv_stack("conv_encoder", self.conv_channels, self.conv_kernels, self.conv_strides)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim < 3:
            raise ValueError(f"conv_encoder takes images [..., H, W, C], got an input of shape {x.shape}")
        batch_shape = x.shape[:-3]
        h = x.astype(jnp.float32)
        act = activation(self.activation)
        for i, (c, k, s) in enumerate(zip(self.conv_channels, self.conv_kernels, self.conv_strides)):
            conv = lambda name, c=c, k=k, s=s: nn.Conv(int(c), (int(k), int(k)), (int(s), int(s)), padding="SAME",
                                                       name=name)
            h = _layer(conv, f"conv_{i}", h, act, self.gated)          # [..., H_i, W_i, c]
        h = h.reshape(batch_shape + (-1,))                              # [..., H' W' c]
        for i, width in enumerate(self.hidden):
            h = _layer(lambda name, width=width: nn.Dense(int(width), name=name), f"dense_{i}", h, act, self.gated)
        return h


def upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
    """Nearest-neighbour upsampling of ``[..., H, W, C]`` to ``[..., factor H, factor W, C]``."""
    return jnp.repeat(jnp.repeat(x, factor, axis=-3), factor, axis=-2)


class ConvDecoder(nn.Module):
    """A convolutional decoder trunk: ``z [..., D] -> features [..., H, W, conv_channels[-1]]``.

    z passes dense layers of widths ``hidden`` (``dense_i``), then a dense layer ``project`` to
    (H / up) (W / up) reshape_channels units (each followed by the activation), reshaped to
    ``[..., H / up, W / up, reshape_channels]`` with up = prod(conv_strides); then convolution i
    (``conv_i``, SAME padding, ``conv_channels[i]`` channels, ``conv_kernels[i]`` kernel, then the
    activation), preceded, when ``conv_strides[i] = s > 1``, by nearest-neighbour upsampling by s
    (a resize-convolution).  H, W are ``output_shape[:2]`` and must be divisible by up.

    ``spatial_output = True``: the features are per pixel; the likelihood's head maps the last
    axis to each pixel's distribution parameters (a 1x1 convolution).

    The VampPrior's decoder (Tomczak & Welling 2018) on 28x28x1 images is ``hidden=(),
    reshape_channels=1, conv_channels=(64, 64, 64, 64), conv_kernels=(3, 3, 3, 3),
    conv_strides=(1, 1, 1, 1), gated=True, activation="none"``: GatedDense to 784, reshape to
    [28, 28, 1], four GatedConv2d.

    Attributes:
      output_shape: the observation's shape ``(H, W, C)``.
      hidden: widths of the dense layers before ``project``.
      activation: name of the nonlinearity after every layer (see ``ACTIVATIONS``).
      gated: gated layers (GatedDense, GatedConv2d).
      conv_channels, conv_kernels, conv_strides: the convolution stack (equal lengths).
      reshape_channels: channels of the projected image.
      event_ndims: trailing dimensions of one latent (1: z [D]).
    """

    output_shape: tuple[int, ...] | None = None
    hidden: Sequence[int] = ()
    activation: str = "relu"
    gated: bool = False
    conv_channels: Sequence[int] = (32, 32, 64, 64)
    conv_kernels: Sequence[int] = (3, 3, 3, 3)
    conv_strides: Sequence[int] = (1, 2, 1, 2)
    reshape_channels: int = 1
    event_ndims: int = 1
    spatial_output = True

    def __post_init__(self):
        if self.output_shape is None or len(self.output_shape) != 3:
            raise ConfigError(f"conv_decoder produces images [H, W, C]; the observation shape is "
                                f"{None if self.output_shape is None else tuple(self.output_shape)}")
        _check_conv_stack("conv_decoder", self.conv_channels, self.conv_kernels, self.conv_strides)
        if int(self.reshape_channels) <= 0:
            raise ConfigError(f"conv_decoder: reshape_channels must be positive, got {self.reshape_channels}")
        up = self.upsampling
        height, width = self.output_shape[:2]
        if height % up or width % up:
            raise ConfigError(
                f"conv_decoder: conv_strides {tuple(self.conv_strides)} upsample by {up} in all, which must divide "
                f"the observation's height and width ({height}, {width}); choose strides whose product divides both")
        super().__post_init__()

    @property
    def upsampling(self) -> int:
        """up = prod(conv_strides): the factor from the projected image to the output."""
        return math.prod(int(s) for s in self.conv_strides)

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        batch_shape = z.shape[: z.ndim - self.event_ndims]
        h = z.reshape(batch_shape + (-1,)).astype(jnp.float32)
        act = activation(self.activation)
        for i, width in enumerate(self.hidden):
            h = _layer(lambda name, width=width: nn.Dense(int(width), name=name), f"dense_{i}", h, act, self.gated)
        up = self.upsampling
        shape = (self.output_shape[0] // up, self.output_shape[1] // up, int(self.reshape_channels))
        h = _layer(lambda name: nn.Dense(math.prod(shape), name=name), "project", h, act, self.gated)
        h = h.reshape(batch_shape + shape)                              # [..., H / up, W / up, reshape_channels]
        for i, (c, k, s) in enumerate(zip(self.conv_channels, self.conv_kernels, self.conv_strides)):
            if int(s) > 1:
                h = upsample_nearest(h, int(s))
            conv = lambda name, c=c, k=k: nn.Conv(int(c), (int(k), int(k)), padding="SAME", name=name)
            h = _layer(conv, f"conv_{i}", h, act, self.gated)
        return h                                                        # [..., H, W, channels]


# --- registered trunks ---------------------------------------------------------------------------
#
# A trunk section of a config is ``{name: mlp | conv_encoder | conv_decoder, ...settings}``.  The
# traits say what a trunk reads (``any`` input, ``image``s [H, W, C], or a ``latent`` vector) and
# whether its output is per pixel (``spatial_output``), so a slot can say which trunks may fill it.


def _validate_conv_stack(settings, key) -> None:
    lengths = (len(settings.conv_channels), len(settings.conv_kernels), len(settings.conv_strides))
    if len(set(lengths)) != 1:
        where = key("conv_channels").rsplit(".", 1)[0]
        raise ConfigError(f"{where}: conv_channels, conv_kernels and conv_strides need one entry per convolution, "
                          f"got lengths {lengths[0]}, {lengths[1]} and {lengths[2]}")


@dataclasses.dataclass(frozen=True)
class MLPSettings(Settings):
    hidden: tuple[int, ...] = setting((200, 200), "widths of the dense layers", items_gt=0)
    activation: str = setting("tanh", "nonlinearity after every layer ('none': linear, e.g. in gated layers)",
                              choices=tuple(ACTIVATIONS))
    gated: bool = setting(False, "gated layers h(x) * sigmoid(g(x)) (GatedDense, Dauphin et al. 2017)")


@dataclasses.dataclass(frozen=True)
class ConvEncoderSettings(Settings):
    conv_channels: tuple[int, ...] = setting((32, 32, 64, 64), "output channels of each convolution", items_gt=0,
                                             nonempty=True)
    conv_kernels: tuple[int, ...] = setting((3, 3, 3, 3), "kernel size of each convolution", items_gt=0)
    conv_strides: tuple[int, ...] = setting((1, 2, 1, 2), "stride of each convolution", items_gt=0)
    hidden: tuple[int, ...] = setting((), "widths of the dense layers after the convolutions", items_gt=0)
    activation: str = setting("relu", "nonlinearity after every layer", choices=tuple(ACTIVATIONS))
    gated: bool = setting(False, "gated layers (GatedConv2d, GatedDense)")

    def validate(self, key):
        _validate_conv_stack(self, key)


@dataclasses.dataclass(frozen=True)
class ConvDecoderSettings(Settings):
    hidden: tuple[int, ...] = setting((), "widths of the dense layers before the projection", items_gt=0)
    activation: str = setting("relu", "nonlinearity after every layer", choices=tuple(ACTIVATIONS))
    gated: bool = setting(False, "gated layers (GatedDense, GatedConv2d)")
    conv_channels: tuple[int, ...] = setting((32, 32, 64, 64), "output channels of each convolution", items_gt=0,
                                             nonempty=True)
    conv_kernels: tuple[int, ...] = setting((3, 3, 3, 3), "kernel size of each convolution", items_gt=0)
    conv_strides: tuple[int, ...] = setting((1, 2, 1, 2), "upsampling factor before each convolution", items_gt=0)
    reshape_channels: int = setting(1, "channels of the projected image [H / up, W / up, C]", gt=0)

    def validate(self, key):
        _validate_conv_stack(self, key)


@NETWORKS.register("mlp", settings=MLPSettings, traits={"reads": "any"})
def mlp(settings: MLPSettings, *, event_ndims: int, output_shape: tuple[int, ...] | None = None) -> MLP:
    """Dense layers (optionally gated): ``[..., *event] -> [..., hidden[-1]]``."""
    del output_shape
    return MLP(hidden=tuple(settings.hidden), activation=settings.activation, event_ndims=event_ndims,
               gated=settings.gated)


@NETWORKS.register("conv_encoder", settings=ConvEncoderSettings, traits={"reads": "image"})
def conv_encoder(settings: ConvEncoderSettings, *, event_ndims: int,
                 output_shape: tuple[int, ...] | None = None) -> ConvEncoder:
    """(Gated) convolutions, flattened, then dense layers: ``[..., H, W, C] -> [..., F]``."""
    del output_shape
    return ConvEncoder(conv_channels=tuple(settings.conv_channels), conv_kernels=tuple(settings.conv_kernels),
                       conv_strides=tuple(settings.conv_strides), hidden=tuple(settings.hidden),
                       activation=settings.activation, gated=settings.gated, event_ndims=event_ndims)


@NETWORKS.register("conv_decoder", settings=ConvDecoderSettings, traits={"reads": "latent", "spatial_output": True})
def conv_decoder(settings: ConvDecoderSettings, *, event_ndims: int,
                 output_shape: tuple[int, ...] | None = None) -> ConvDecoder:
    """Dense layers, a projection reshaped to an image, (gated) resize-convolutions: per-pixel
    features ``[..., H, W, F]`` for a 1x1 likelihood head."""
    return ConvDecoder(output_shape=None if output_shape is None else tuple(output_shape), hidden=tuple(settings.hidden),
                       activation=settings.activation, gated=settings.gated,
                       conv_channels=tuple(settings.conv_channels), conv_kernels=tuple(settings.conv_kernels),
                       conv_strides=tuple(settings.conv_strides), reshape_channels=settings.reshape_channels,
                       event_ndims=event_ndims)


def reads_latents(component) -> bool:
    """A trunk that can read a latent vector z (a decoder's trunk)."""
    return component.trait("reads") in ("any", "latent")


def reads_images(component) -> bool:
    """A trunk that can read observations x [H, W, C] (an encoder's trunk)."""
    return component.trait("reads") in ("any", "image")


def reads_vectors(component) -> bool:
    """A trunk from vectors to feature vectors (p(z1 | z2), q(z2 | z1))."""
    return component.trait("reads") in ("any", "latent") and not component.trait("spatial_output", False)


def dense(trunk, widths: Sequence[int], *, event_ndims: int = 1) -> MLP | None:
    """Dense layers of ``widths`` with the activation and gating of the trunk settings ``trunk``
    (any network's: all have ``activation`` and ``gated``); ``None`` for no widths."""
    if not widths:
        return None
    return MLP(hidden=tuple(int(w) for w in widths), activation=trunk.activation, event_ndims=event_ndims,
               gated=trunk.gated)
