"""Trunks: gated dense layers, the convolutional encoder and decoder, against hand-written numpy
computations from their parameters; shapes for any number of leading batch dimensions."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import vaegen
from vaegen.model import latent as model_lib
from vaegen.blocks import networks as networks
from vaegen.objectives import bounds as objectives
from vaegen.objectives.batch import batched
from vaegen.registry import NETWORKS, reads_latents
from vaegen.config.loading import ConfigError, load_config

# The VampPrior's convolutional HVAE (Tomczak & Welling 2018) on 28x28x1 images.
VAMP_ENCODER = dict(conv_channels=(32, 32, 64, 64, 6), conv_kernels=(7, 3, 5, 3, 3), conv_strides=(1, 2, 1, 2, 1),
                    gated=True, activation="none", hidden=())
VAMP_DECODER = dict(hidden=(), reshape_channels=1, conv_channels=(64, 64, 64, 64), conv_kernels=(3, 3, 3, 3),
                    conv_strides=(1, 1, 1, 1), gated=True, activation="none")


def _np(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def _conv_same(x, kernel, bias, stride):
    """Cross-correlation with TensorFlow/flax SAME padding: x [H, W, C], kernel [k, k, C, O]."""
    k = kernel.shape[0]
    out = []
    for n in x.shape[:2]:
        m = -(-n // stride)
        total = max((m - 1) * stride + k - n, 0)
        out.append((m, total // 2, total - total // 2))
    (mh, lo_h, hi_h), (mw, lo_w, hi_w) = out
    xp = np.pad(x, ((lo_h, hi_h), (lo_w, hi_w), (0, 0)))
    y = np.zeros((mh, mw, kernel.shape[-1]))
    for i in range(mh):
        for j in range(mw):
            patch = xp[i * stride:i * stride + k, j * stride:j * stride + k, :]
            y[i, j] = np.tensordot(patch, kernel, axes=3)
    return y + bias


def test_none_activation_is_the_identity():
    x = jnp.linspace(-3, 3, 7)
    np.testing.assert_array_equal(networks.activation("none")(x), x)


def test_mlp_keeps_its_parameter_names_and_gating_adds_gates():
    x = jnp.zeros((8, 8, 1))
    plain = networks.MLP(networks.MLPSettings(hidden=(5, 4)), event_ndims=3).init(jax.random.key(0), x)["params"]
    assert set(plain) == {"dense_0", "dense_1"}
    assert plain["dense_0"]["kernel"].shape == (64, 5) and plain["dense_1"]["kernel"].shape == (5, 4)
    gated = networks.MLP(networks.MLPSettings(hidden=(5, 4), gated=True), event_ndims=3).init(jax.random.key(0), x)["params"]
    assert set(gated) == {"dense_0", "dense_0_gate", "dense_1", "dense_1_gate"}


@pytest.mark.parametrize("act, fn", [("tanh", np.tanh), ("none", lambda a: a)])
def test_gated_mlp_is_act_of_a_linear_map_times_a_sigmoid_gate(act, fn):
    net = networks.MLP(networks.MLPSettings(hidden=(6, 3), activation=act, gated=True), event_ndims=1)
    x = np.random.RandomState(0).normal(size=(2, 4, 5))
    v = net.init(jax.random.key(1), jnp.zeros(5))
    got = net.apply(v, jnp.asarray(x, jnp.float32))
    p, h = _np(v["params"]), x
    for i in range(2):
        d, g = p[f"dense_{i}"], p[f"dense_{i}_gate"]
        h = fn(h @ d["kernel"] + d["bias"]) * special.expit(h @ g["kernel"] + g["bias"])  # GatedDense
    assert got.shape == (2, 4, 3)
    np.testing.assert_allclose(got, h, rtol=1e-5, atol=1e-6)


def test_conv_encoder_is_gated_convolutions_then_dense_layers():
    net = networks.ConvEncoder(networks.ConvEncoderSettings(conv_channels=(3, 2), conv_kernels=(3, 3), conv_strides=(1, 2),
                                                            hidden=(5,), activation="tanh", gated=True))
    x = np.random.RandomState(0).uniform(size=(2, 8, 8, 1))
    v = net.init(jax.random.key(0), jnp.zeros((8, 8, 1)))
    got = np.asarray(net.apply(v, jnp.asarray(x, jnp.float32)))
    p = _np(v["params"])
    for n in range(2):
        h = x[n]
        for i, s in enumerate((1, 2)):
            c, g = p[f"conv_{i}"], p[f"conv_{i}_gate"]
            h = np.tanh(_conv_same(h, c["kernel"], c["bias"], s)) * special.expit(_conv_same(h, g["kernel"], g["bias"], s))
        assert h.shape == (4, 4, 2)
        h = h.reshape(-1)
        d, g = p["dense_0"], p["dense_0_gate"]
        want = np.tanh(h @ d["kernel"] + d["bias"]) * special.expit(h @ g["kernel"] + g["bias"])
        np.testing.assert_allclose(got[n], want, rtol=1e-4, atol=1e-5)


def test_conv_decoder_is_a_projection_then_resize_convolutions():
    net = networks.ConvDecoder(output_shape=(4, 6, 1), settings=networks.ConvDecoderSettings(
        hidden=(7,), reshape_channels=2, conv_channels=(3,), conv_kernels=(3,), conv_strides=(2,), activation="relu"))
    assert net.spatial_output and net.upsampling == 2
    z = np.random.RandomState(0).normal(size=(3, 2))
    v = net.init(jax.random.key(0), jnp.zeros(2))
    got = np.asarray(net.apply(v, jnp.asarray(z, jnp.float32)))
    p, relu = _np(v["params"]), lambda a: np.maximum(a, 0)
    assert set(p) == {"dense_0", "project", "conv_0"}
    for n in range(3):
        h = relu(z[n] @ p["dense_0"]["kernel"] + p["dense_0"]["bias"])
        h = relu(h @ p["project"]["kernel"] + p["project"]["bias"]).reshape(2, 3, 2)  # [H/2, W/2, reshape_channels]
        h = np.kron(h, np.ones((2, 2, 1)))                                               # nearest neighbour, x2
        want = relu(_conv_same(h, p["conv_0"]["kernel"], p["conv_0"]["bias"], 1))
        np.testing.assert_allclose(got[n], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_vampprior_architecture_shapes_with_any_leading_batch_dims(batch):
    enc = networks.ConvEncoder(networks.ConvEncoderSettings(**VAMP_ENCODER))
    x = jax.ShapeDtypeStruct(batch + (28, 28, 1), jnp.float32)
    v = jax.eval_shape(enc.init, jax.random.key(1), x)
    assert jax.eval_shape(enc.apply, v, x).shape == batch + (294,)  # 7 x 7 x 6
    dec = networks.ConvDecoder(output_shape=(28, 28, 1), settings=networks.ConvDecoderSettings(**VAMP_DECODER))
    z = jax.ShapeDtypeStruct(batch + (5,), jnp.float32)
    w = jax.eval_shape(dec.init, jax.random.key(3), z)
    assert w["params"]["project"]["kernel"].shape == (5, 784) and "project_gate" in w["params"]
    assert jax.eval_shape(dec.apply, w, z).shape == batch + (28, 28, 64)


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_conv_trunks_act_on_each_example_alike(batch):
    enc = networks.ConvEncoder(networks.ConvEncoderSettings(conv_channels=(3, 2), conv_kernels=(3, 3), conv_strides=(2, 1),
                                                            hidden=(), gated=True))
    dec = networks.ConvDecoder(output_shape=(8, 8, 1), settings=networks.ConvDecoderSettings(
        hidden=(), conv_channels=(3, 2), conv_kernels=(3, 3), conv_strides=(2, 1), gated=True))
    x = jax.random.uniform(jax.random.key(0), batch + (8, 8, 1))
    z = jax.random.normal(jax.random.key(2), batch + (5,))
    v, w = enc.init(jax.random.key(1), jnp.zeros((8, 8, 1))), dec.init(jax.random.key(3), jnp.zeros(5))
    h, out = enc.apply(v, x), dec.apply(w, z)
    assert h.shape == batch + (32,) and out.shape == batch + (8, 8, 2)
    flat_x, flat_h = x.reshape((-1, 8, 8, 1)), h.reshape((-1, 32))
    flat_z, flat_out = z.reshape((-1, 5)), out.reshape((-1, 8, 8, 2))
    for n in range(flat_x.shape[0]):
        np.testing.assert_allclose(flat_h[n], enc.apply(v, flat_x[n]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(flat_out[n], dec.apply(w, flat_z[n]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, strides", [((8, 8, 1), (1, 2, 1, 2)), ((28, 28, 1), (2, 2)), ((12, 8, 3), (2,))])
def test_conv_decoder_produces_the_observation_height_and_width(shape, strides):
    dec = networks.ConvDecoder(output_shape=shape, settings=networks.ConvDecoderSettings(
        hidden=(8,), conv_channels=(4,) * len(strides), conv_kernels=(3,) * len(strides), conv_strides=strides,
        reshape_channels=2))
    z = jax.ShapeDtypeStruct((2, 3), jnp.float32)
    out = jax.eval_shape(dec.apply, jax.eval_shape(dec.init, jax.random.key(0), z), z)
    assert out.shape == (2,) + shape[:2] + (4,)


def test_conv_trunks_refuse_impossible_shapes_when_built():
    with pytest.raises(ConfigError, match=r"conv_strides \(2, 2, 2\) upsample by 8 in all, which must divide the "
                                          r"observation's height and width \(28, 28\)"):
        networks.ConvDecoder(output_shape=(28, 28, 1), settings=networks.ConvDecoderSettings(
            conv_channels=(4,) * 3, conv_kernels=(3,) * 3, conv_strides=(2, 2, 2)))
    # The stack's own rules are its settings' (checked once, however the settings are made).
    with pytest.raises(ConfigError, match="got lengths 2, 1 and 2"):
        networks.ConvEncoderSettings(conv_channels=(4, 4), conv_kernels=(3,), conv_strides=(1, 2))
    with pytest.raises(ConfigError, match=r"ConvDecoderSettings.conv_strides=\(1, 0\): every entry must be > 0"):
        networks.ConvDecoderSettings(conv_channels=(4, 4), conv_kernels=(3, 3), conv_strides=(1, 0))
    with pytest.raises(ValueError, match=r"conv_encoder takes images \[H, W, C\]"):
        networks.ConvEncoder(event_ndims=1)
    spec = vaegen.to_spec(load_config("tiny", ["model.decoder=conv_decoder", "model.decoder.conv_strides=(1, 3, 1, 1)"]))
    with pytest.raises(ConfigError, match=r"upsample by 3 in all"):
        model_lib.build_model(spec.model, spec.inference, (8, 8, 1))


def test_a_conv_encoder_from_the_config_serves_the_posterior_in_a_batched_elbo():
    cfg = load_config("tiny", ["inference.encoder=conv_encoder", "inference.encoder.conv_channels=(4, 4)",
                               "inference.encoder.conv_kernels=(3, 3)", "inference.encoder.conv_strides=(1, 2)",
                               "inference.encoder.gated=True", "inference.encoder.hidden=(16,)"])
    spec = vaegen.to_spec(cfg)
    m = model_lib.build_model(spec.model, spec.inference, (8, 8, 1))
    assert isinstance(m.posterior.encoder, networks.ConvEncoder)
    v = model_lib.init_params(m, jax.random.key(0), (8, 8, 1))
    enc = v["params"]["posterior"]["encoder"]
    assert set(enc) == {"conv_0", "conv_0_gate", "conv_1", "conv_1_gate", "dense_0", "dense_0_gate"}
    assert enc["dense_0"]["kernel"].shape == (4 * 4 * 4, 16)
    x = (jax.random.uniform(jax.random.key(1), (3, 8, 8, 1)) > 0.5).astype(jnp.float32)
    keys = jax.random.split(jax.random.key(2), 3)
    terms = jax.jit(lambda v, x, k: batched(objectives.ELBO(), m, v, x, k))(v, x, keys)
    assert terms["elbo"].shape == (3,) and np.all(np.isfinite(terms["elbo"]))


@pytest.mark.parametrize("overrides, message", [
    (["inference.encoder=conv_encoder", "inference.encoder.conv_kernels=(3, 3)"],
     "config.inference.encoder: conv_channels, conv_kernels and conv_strides need one entry per convolution, "
     "got lengths 4, 2 and 4"),
    (["model.decoder=conv_decoder", "model.decoder.conv_channels=(8, 0, 8, 8)"],
     "config.model.decoder.conv_channels=(8, 0, 8, 8): every entry must be > 0"),
    (["model.decoder=conv_decoder", "model.decoder.reshape_channels=0"],
     "config.model.decoder.reshape_channels=0 must be > 0"),
    (["model.decoder=conv_encoder"],
     "config.model.decoder.name='conv_encoder' cannot serve p(x | z)'s trunk; choose one of conv_decoder, mlp"),
    (["model.kind=two_layer", "model.kind.top_decoder=conv_decoder"],
     "config.model.kind.top_decoder.name='conv_decoder' cannot serve"),
    (["model.kind=two_layer", "model.kind.top_encoder=conv_encoder"],
     "with config.model.kind.hierarchy=bottom_up q(z2 | z1) reads z1"),
    (["inference.encoder=resnet"], "config.inference.encoder.name='resnet' is not a registered network"),
    (["model.kind=two_layer", "model.kind.top_encoder.hidden=(10, 0)"],
     "config.model.kind.top_encoder.hidden=(10, 0): every entry must be > 0"),
    (["model.kind=two_layer", "model.kind.top_decoder.activation=swish"],
     "config.model.kind.top_decoder.activation='swish' is not one of"),
])
def test_every_trunk_section_is_validated(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config("tiny", overrides)
    assert message in str(info.value)


def test_the_vampprior_architecture_is_a_valid_config():
    enc = [f"inference.encoder.{k}={v!r}" for k, v in VAMP_ENCODER.items()]
    dec = [f"model.decoder.{k}={v!r}" for k, v in VAMP_DECODER.items()]
    cfg = load_config("tiny", ["inference.encoder=conv_encoder", "model.decoder=conv_decoder", *enc, *dec])
    spec = vaegen.to_spec(cfg)
    dec_net = spec.model.decoder.build(event_ndims=1, output_shape=(28, 28, 1))
    enc_net = spec.inference.encoder.build(event_ndims=3)
    assert isinstance(dec_net, networks.ConvDecoder) and dec_net.output_shape == (28, 28, 1)
    assert isinstance(enc_net, networks.ConvEncoder) and enc_net.settings.conv_kernels == (7, 3, 5, 3, 3)


@pytest.mark.parametrize("name", NETWORKS.names())
def test_every_registered_network_builds_with_its_defaults(name):
    """Each trunk of the registry, at its default settings, on what it reads: an 8x8x1 image (an
    encoder's trunk) or a 3-d z (a decoder's trunk, per pixel if its output is spatial)."""
    component = NETWORKS.get(name)
    assert component.summary.strip()
    event = (8, 8, 1)
    if reads_latents(component):
        net = NETWORKS.select(name).build(event_ndims=1, output_shape=event)
        x = jnp.zeros((2, 3))
    else:
        net = NETWORKS.select(name).build(event_ndims=len(event))
        x = jnp.zeros((2,) + event)
    assert isinstance(net, nn.Module)
    v = jax.eval_shape(net.init, jax.random.key(0), x[0])
    out = jax.eval_shape(net.apply, v, x)
    if component.trait("spatial_output"):
        assert out.shape[:3] == (2,) + event[:2]
    else:
        assert out.ndim == 2 and out.shape[0] == 2
