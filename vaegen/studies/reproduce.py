"""Published models, as configs: the architectures, data protocols and training details of the
papers vaegen reproduces (``../shared/REFERENCES.md``; the table in docs/reproduction.md).

:func:`vampprior` builds the VampPrior code's models (Tomczak & Welling 2018, as run on
Fashion-MNIST by the Exemplar VAE paper), :func:`iwae` the IWAE paper's (Burda et al. 2016).
:data:`ROWS` lists the rows of the reproduction table with their published values; each row has a
config file in ``experiments/reproduce/configs/<row>.py`` whose docstring gives its command and
runtime, and ``experiments/reproduce/run.py`` trains, evaluates and tabulates them.
"""

from __future__ import annotations

import dataclasses

from vaegen.config.loading import component
from vaegen.config.presets import default
from vaegen.data import protocols


def vampprior(model: str, prior: str):
    """The VampPrior code (jmtomczak/vae_vampprior) on Fashion-MNIST, as the Exemplar VAE paper ran
    it: gated dense layers of 300 units (GatedDense, no activation), latents of 40, Bernoulli
    likelihood, log-variances of q and p(z1 | z2) in [-6, 2], K = 500 pseudo-inputs u = sigmoid(w),
    w ~ N(-0.05, 0.01) at init; Adam with per-tensor normalised gradients (AdamNormGrad), lr 5e-4,
    batch 100; KL warm-up over 100 epochs; at most 2000 epochs, early stopping after 50 epochs
    without a better validation ELBO (not counted during the warm-up); test log p(x) by importance
    sampling with k = 5000.

    Args:
      model: ``vae`` (one stochastic layer), ``hvae`` (two, p(x | z1, z2)), ``convhvae`` (two, with
        the gated convolutional encoder and decoder of convHVAE_2level).
      prior: ``standard_normal`` or ``vampprior`` (on z, or on z2 for the two-layer models).
    """
    c = default.get_config()
    protocols.apply(c, "vampprior_fmnist")
    c.seed = 14  # the VampPrior code's default seed (its runs used torch's generator, not ours)
    c.model.latent_dim = 40
    if prior == "vampprior":
        c.model.prior = component("prior", "vampprior", components=500, init="random", init_mean=-0.05, init_std=0.01)
    else:
        c.model.prior = component("prior", prior)
    c.model.likelihood = component("likelihood", "bernoulli")
    log_scales = dict(min_log_scale=-3.0, max_log_scale=1.0)  # log-variance in [-6, 2]
    c.inference.posterior = component("posterior", "diagonal_gaussian", **log_scales)
    gated = dict(activation="none", gated=True)  # GatedDense / GatedConv2d, no activation
    c.model.decoder = component("network", "mlp", hidden=(300, 300), **gated)
    c.inference.encoder = component("network", "mlp", hidden=(300, 300), **gated)
    if model in ("hvae", "convhvae"):
        c.model.kind = component(
            "model_kind", "two_layer", top_latent_dim=40,
            hierarchy="top_down",                     # q(z2 | x) q(z1 | x, z2)
            decoder_sees_top=True,                    # p(x | z1, z2)
            decoder_branch_hidden=(300,),             # z1 -> 300, z2 -> 300, joined
            encoder_branch_hidden=(300,),             # x -> 300, z2 -> 300, joined
            top_decoder=component("network", "mlp", hidden=(300, 300), **gated),
            top_encoder=component("network", "mlp", hidden=(300,), **gated), **log_scales)
        c.model.decoder = component("network", "mlp", hidden=(300,), **gated)
    if model == "convhvae":
        # q(z2 | x): GatedConv2d 1-32 k7, 32-32 k3 s2, 32-64 k5, 64-64 k3 s2, 64-6 k3, flattened (294)
        c.inference.encoder = component("network", "conv_encoder", hidden=(), conv_channels=(32, 32, 64, 64, 6),
                                        conv_kernels=(7, 3, 5, 3, 3), conv_strides=(1, 2, 1, 2, 1), **gated)
        # q(z1 | x, z2): x through GatedConv2d 1-32 k3, 32-32 k3 s2, 32-64 k3, 64-64 k3 s2, 64-6 k3 (294)
        # and, here, a GatedDense(294) (vaegen's joined trunks give both inputs the same dense branch),
        # z2 through GatedDense(294), joined by GatedDense(300)
        c.model.kind.encoder_branch_hidden = (294,)
        c.model.kind.top_encoder = component("network", "conv_encoder", hidden=(300,),
                                             conv_channels=(32, 32, 64, 64, 6), conv_kernels=(3, 3, 3, 3, 3),
                                             conv_strides=(1, 2, 1, 2, 1), **gated)
        # p(x | z1, z2): z1 -> 300, z2 -> 300, joined by GatedDense(784) -> [28, 28, 1] -> four
        # GatedConv2d 64 k3 -> a 1x1 convolution to the Bernoulli logits
        c.model.decoder = component("network", "conv_decoder", hidden=(), reshape_channels=1,
                                    conv_channels=(64, 64, 64, 64), conv_kernels=(3, 3, 3, 3),
                                    conv_strides=(1, 1, 1, 1), **gated)
    c.model.init_output_bias_from_data = False  # the VampPrior code starts from a zero output bias
    c.objective = component("objective", "elbo", kl_warmup_epochs=100.0)
    c.optim.optimizer = "adam"
    c.optim.learning_rate = 5e-4
    c.optim.normalize_gradients = "per_tensor"
    c.train.batch_size = 100
    c.train.num_epochs = 2000
    c.train.early_stopping_patience = 50
    c.train.early_stopping_min_epochs = 100
    c.train.keep_checkpoints = 1
    c.eval.batch_size = 100
    c.eval.num_samples = 5000
    c.eval.ks = (1, 10, 100, 1000)
    c.eval.estimators = "elbo,iwae,is,diagnostics"
    return c


def iwae(objective: str, k: int, layers: int):
    """The IWAE paper (Burda et al. 2016, Table 1) on dynamically binarized MNIST, as in its code
    (yburda/iwae): 59,600 training images, the last 400 for validation; tanh MLPs; one layer
    784-200-200-50 (q) and 50-200-200-784 (p), or two layers with latents 100 and 50 and hidden
    200-200 (x <-> z1) and 100-100 (z1 <-> z2); sigma = exp(linear); output bias at the logit of
    the training-set pixel means; Adam with beta1 = 0.99, eps = 1e-4; batch 20; 3^i epochs at
    1e-3 * 10^(-i/7) for i = 0..7 (3,280 epochs); test log p(x) by importance sampling, k = 5000.
    The IWAE code initialises Adam's second moments at one (optax's start at zero).

    Args:
      objective: ``vae`` (the k-sample ELBO) or ``iwae`` (the k-sample IWAE bound).
      k: samples per example in training.
      layers: 1 or 2.
    """
    c = default.get_config()
    protocols.apply(c, "iwae_mnist")
    c.model.prior = component("prior", "standard_normal")
    c.model.likelihood = component("likelihood", "bernoulli")
    c.model.init_output_bias_from_data = True
    c.inference.posterior = component("posterior", "diagonal_gaussian")
    tanh = dict(activation="tanh", gated=False)
    c.model.decoder = component("network", "mlp", hidden=(200, 200), **tanh)
    c.inference.encoder = component("network", "mlp", hidden=(200, 200), **tanh)
    if layers == 1:
        c.model.latent_dim = 50
    elif layers == 2:
        c.model.latent_dim = 100
        c.model.kind = component("model_kind", "two_layer", top_latent_dim=50,
                                 hierarchy="bottom_up",     # q(z1 | x) q(z2 | z1)
                                 decoder_sees_top=False,    # p(x | z1)
                                 top_decoder=component("network", "mlp", hidden=(100, 100), **tanh),
                                 top_encoder=component("network", "mlp", hidden=(100, 100), **tanh))
    else:
        raise ValueError(f"layers must be 1 or 2, got {layers}")
    if objective == "vae":
        c.objective = component("objective", "elbo", num_samples=int(k))
    elif objective == "iwae":
        c.objective = component("objective", "iwae", num_samples=int(k))
    else:
        raise ValueError(f"objective must be vae or iwae, got {objective!r}")
    c.optim.optimizer = "adam"
    c.optim.learning_rate = 1e-3
    c.optim.b1, c.optim.b2, c.optim.eps = 0.99, 0.999, 1e-4
    c.optim.schedule = "stages"
    c.optim.stage_epochs = (1, 3, 9, 27, 81, 243, 729, 2187)
    c.optim.stage_factors = (1.0, 0.72, 0.52, 0.37, 0.27, 0.19, 0.14, 0.1)
    c.train.batch_size = 20
    c.train.num_epochs = 3280
    c.train.eval_every_epochs = 10
    c.train.checkpoint_every_epochs = 10
    c.train.keep_checkpoints = 1
    c.eval.num_samples = 5000
    c.eval.ks = (1, 5, 50, 1000)
    c.eval.estimators = "elbo,iwae,is,diagnostics"
    return c


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the reproduction table: a published test log p(x) (nats per image, from
    importance sampling with k = 5000) and the settings that reproduce it."""

    title: str
    source: str
    published: float  # log p(x), nats (the negative of a published NLL)
    published_stderr: float | None
    builder: str  # "vampprior" or "iwae"
    args: tuple

    def config(self):
        return {"vampprior": vampprior, "iwae": iwae}[self.builder](*self.args)


_EXEMPLAR = "Norouzi et al. 2020 (Exemplar VAE), Fashion-MNIST density estimation"
_IWAE = "Burda et al. 2016 (IWAE), Table 1, dynamically binarized MNIST"

ROWS: dict[str, Row] = {
    "fmnist_vae_standard": Row("VAE, Gaussian prior", _EXEMPLAR, -228.70, 0.15, "vampprior", ("vae", "standard_normal")),
    "fmnist_vae_vampprior": Row("VAE, VampPrior", _EXEMPLAR, -227.35, 0.05, "vampprior", ("vae", "vampprior")),
    "fmnist_hvae_vampprior": Row("HVAE, VampPrior", _EXEMPLAR, -226.72, 0.08, "vampprior", ("hvae", "vampprior")),
    "fmnist_convhvae_standard": Row("ConvHVAE, Gaussian prior", _EXEMPLAR, -225.38, 0.08, "vampprior",
                                    ("convhvae", "standard_normal")),
    "fmnist_convhvae_vampprior": Row("ConvHVAE, VampPrior", _EXEMPLAR, -224.67, 0.03, "vampprior",
                                     ("convhvae", "vampprior")),
    "mnist_vae_k1": Row("VAE, 1 layer, k = 1", _IWAE, -86.76, None, "iwae", ("vae", 1, 1)),
    "mnist_vae_k5": Row("VAE, 1 layer, k = 5", _IWAE, -86.47, None, "iwae", ("vae", 5, 1)),
    "mnist_vae_k50": Row("VAE, 1 layer, k = 50", _IWAE, -86.35, None, "iwae", ("vae", 50, 1)),
    "mnist_iwae_k5": Row("IWAE, 1 layer, k = 5", _IWAE, -85.54, None, "iwae", ("iwae", 5, 1)),
    "mnist_iwae_k50": Row("IWAE, 1 layer, k = 50", _IWAE, -84.78, None, "iwae", ("iwae", 50, 1)),
    "mnist_iwae2_k50": Row("IWAE, 2 layers, k = 50", _IWAE, -82.90, None, "iwae", ("iwae", 50, 2)),
}
