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

from vaegen.activations import ACTIVATIONS, activation
from vaegen.errors import ConfigError
from vaegen.registry import NETWORKS, Settings, setting

def _layer(make: Callable[[str], nn.Module], name: str, x: jax.Array, act, gated: bool) -> jax.Array:
    """act(layer(x)), or with ``gated`` act(layer(x)) * sigmoid(gate(x)); ``make(name)`` builds
    a layer (dense or convolution) of that name."""
    h = act(make(name)(x))
    if gated:
        h = h * nn.sigmoid(make(f"{name}_gate")(x))
    return h


# --- settings: what a config's trunk section holds, and what each module reads -----------------------

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


# --- the modules ---------------------------------------------------------------------------------

class MLP(nn.Module):
    """A multilayer perceptron trunk.

    Attributes:
      settings: :class:`MLPSettings`: ``hidden``, the widths of the hidden layers, e.g.
        ``(200, 200)``, each followed by the ``activation`` (see ``ACTIVATIONS``); the output is the
        last hidden layer's activation (``[hidden[-1]]``), and an empty tuple gives the identity on
        the flattened input (a linear model's trunk); ``gated``: each layer is
        act(W_h x + b_h) * sigmoid(W_g x + b_g) (``dense_i``, ``dense_i_gate``).
      event_ndims: number of trailing input dimensions that form one example; they are
        flattened (``[..., 28, 28, 1] -> [..., 784]``).
    """

    settings: MLPSettings = MLPSettings()
    event_ndims: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.settings
        batch_shape = x.shape[: x.ndim - self.event_ndims]
        h = x.reshape(batch_shape + (-1,)).astype(jnp.float32)
        act = activation(s.activation)
        for i, width in enumerate(s.hidden):
            h = _layer(lambda name, width=width: nn.Dense(width, name=name), f"dense_{i}", h, act, s.gated)
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
      settings: :class:`ConvEncoderSettings`: the convolution stack (``conv_channels``,
        ``conv_kernels``, ``conv_strides``, of equal lengths), the dense layers after it
        (``hidden``), the nonlinearity after every layer (``activation``) and ``gated`` layers
        (GatedConv2d, GatedDense).
      event_ndims: trailing dimensions of one example; must be 3 ([H, W, C]).
    """

    settings: ConvEncoderSettings = ConvEncoderSettings()
    event_ndims: int = 3

    def __post_init__(self):
        if self.event_ndims != 3:
            raise ConfigError(f"conv_encoder takes images [H, W, C] (3 event dimensions), not inputs with "
                                f"{self.event_ndims}; use an mlp for this trunk")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim < 3:
            raise ValueError(f"conv_encoder takes images [..., H, W, C], got an input of shape {x.shape}")
        s = self.settings
        batch_shape = x.shape[:-3]
        h = x.astype(jnp.float32)
        act = activation(s.activation)
        for i, (c, k, st) in enumerate(zip(s.conv_channels, s.conv_kernels, s.conv_strides)):
            conv = lambda name, c=c, k=k, st=st: nn.Conv(int(c), (int(k), int(k)), (int(st), int(st)), padding="SAME",
                                                         name=name)
            h = _layer(conv, f"conv_{i}", h, act, s.gated)             # [..., H_i, W_i, c]
        h = h.reshape(batch_shape + (-1,))                              # [..., H' W' c]
        for i, width in enumerate(s.hidden):
            h = _layer(lambda name, width=width: nn.Dense(int(width), name=name), f"dense_{i}", h, act, s.gated)
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
      settings: :class:`ConvDecoderSettings`: the dense layers before ``project`` (``hidden``),
        the nonlinearity (``activation``), ``gated`` layers, the convolution stack
        (``conv_channels``, ``conv_kernels``, ``conv_strides``) and the channels of the projected
        image (``reshape_channels``).
      event_ndims: trailing dimensions of one latent (1: z [D]).
    """

    output_shape: tuple[int, ...] | None
    settings: ConvDecoderSettings = ConvDecoderSettings()
    event_ndims: int = 1
    spatial_output = True

    def __post_init__(self):
        if self.output_shape is None or len(self.output_shape) != 3:
            raise ConfigError(f"conv_decoder produces images [H, W, C]; the observation shape is "
                                f"{None if self.output_shape is None else tuple(self.output_shape)}")
        up = self.upsampling
        height, width = self.output_shape[:2]
        if height % up or width % up:
            raise ConfigError(
                f"conv_decoder: conv_strides {tuple(self.settings.conv_strides)} upsample by {up} in all, which must "
                f"divide the observation's height and width ({height}, {width}); choose strides whose product divides "
                "both")
        super().__post_init__()

    @property
    def upsampling(self) -> int:
        """up = prod(conv_strides): the factor from the projected image to the output."""
        return math.prod(int(s) for s in self.settings.conv_strides)

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        s = self.settings
        batch_shape = z.shape[: z.ndim - self.event_ndims]
        h = z.reshape(batch_shape + (-1,)).astype(jnp.float32)
        act = activation(s.activation)
        for i, width in enumerate(s.hidden):
            h = _layer(lambda name, width=width: nn.Dense(int(width), name=name), f"dense_{i}", h, act, s.gated)
        up = self.upsampling
        shape = (self.output_shape[0] // up, self.output_shape[1] // up, int(s.reshape_channels))
        h = _layer(lambda name: nn.Dense(math.prod(shape), name=name), "project", h, act, s.gated)
        h = h.reshape(batch_shape + shape)                              # [..., H / up, W / up, reshape_channels]
        for i, (c, k, st) in enumerate(zip(s.conv_channels, s.conv_kernels, s.conv_strides)):
            if int(st) > 1:
                h = upsample_nearest(h, int(st))
            conv = lambda name, c=c, k=k: nn.Conv(int(c), (int(k), int(k)), padding="SAME", name=name)
            h = _layer(conv, f"conv_{i}", h, act, s.gated)
        return h                                                        # [..., H, W, channels]


# --- registered trunks ---------------------------------------------------------------------------
#
# A trunk section of a config is ``{name: mlp | conv_encoder | conv_decoder, ...settings}``.  The
# traits say what a trunk reads (``any`` input, ``image``s [H, W, C], or a ``latent`` vector) and
# whether its output is per pixel (``spatial_output``, the module's own class attribute), so a slot can
# say which trunks may fill it (:func:`vaegen.registry.reads_latents` and the like).


@NETWORKS.register("mlp", settings=MLPSettings, traits={"reads": "any"})
def mlp(settings: MLPSettings, *, event_ndims: int, output_shape: tuple[int, ...] | None = None) -> MLP:
    """Dense layers (optionally gated): ``[..., *event] -> [..., hidden[-1]]``."""
    del output_shape
    return MLP(settings=settings, event_ndims=event_ndims)


@NETWORKS.register("conv_encoder", settings=ConvEncoderSettings, traits={"reads": "image"})
def conv_encoder(settings: ConvEncoderSettings, *, event_ndims: int,
                 output_shape: tuple[int, ...] | None = None) -> ConvEncoder:
    """(Gated) convolutions, flattened, then dense layers: ``[..., H, W, C] -> [..., F]``."""
    del output_shape
    return ConvEncoder(settings=settings, event_ndims=event_ndims)


@NETWORKS.register("conv_decoder", settings=ConvDecoderSettings,
                   traits={"reads": "latent", "spatial_output": ConvDecoder.spatial_output})
def conv_decoder(settings: ConvDecoderSettings, *, event_ndims: int,
                 output_shape: tuple[int, ...] | None = None) -> ConvDecoder:
    """Dense layers, a projection reshaped to an image, (gated) resize-convolutions: per-pixel
    features ``[..., H, W, F]`` for a 1x1 likelihood head."""
    return ConvDecoder(output_shape=None if output_shape is None else tuple(output_shape), settings=settings,
                       event_ndims=event_ndims)


def dense(trunk: MLPSettings | ConvEncoderSettings | ConvDecoderSettings, widths: Sequence[int], *,
          event_ndims: int = 1) -> MLP | None:
    """Dense layers of ``widths`` with the activation and gating of the trunk settings ``trunk``
    (any network's: all have ``activation`` and ``gated``); ``None`` for no widths."""
    if not widths:
        return None
    return MLP(settings=MLPSettings(hidden=tuple(int(w) for w in widths), activation=trunk.activation,
                                    gated=trunk.gated), event_ndims=event_ndims)
