"""A tiny VAE on scikit-learn's 8x8 digits for tests and smoke runs (no download needed).

``--config tiny:ae`` gives the matching autoencoder (point mass, no prior, objective ae);
``tiny:wae`` and ``tiny:aae`` the autoencoders whose codes are matched to N(0, I) in training;
``tiny:vq`` a VQ-VAE (z [4] as 2 groups of 2, a codebook of 4, no prior in training);
``tiny:dvae`` a discrete VAE (M = 2 categorical variables of K = 3, one-hot: z [6], 9 configurations,
so its ELBO and log p(x) can be summed exactly; Gumbel-softmax gradients).

Command::

    vaegen train --config tiny --workdir /tmp/tiny

Runtime: a few seconds on a CPU. Expected: the validation ELBO rises over the epochs.
"""

from vaegen.config.loading import component
from vaegen.config.presets import default


def get_config(arg: str | None = None):
    c = default.get_config()
    c.data.name = "digits"
    c.data.binarization = "dynamic"
    c.data.validation_size = 200
    c.model.latent_dim = 4
    c.model.decoder = component("network", "mlp", hidden=(32,))
    c.inference.encoder = component("network", "mlp", hidden=(32,))
    c.train.batch_size = 50
    c.train.num_epochs = 3
    c.train.progress = False
    # Smoke runs and tests: TensorBoard scalars only, no latent diagnostics at each validation (each
    # compiles programs of its own); the tests of those features turn them on.
    c.train.tensorboard_images = 0
    c.train.latent_health_examples = 0
    c.eval.batch_size = 50
    c.eval.num_samples = 20
    if arg == "ae":
        c.model.prior = component("prior", "none")
        c.inference.posterior = component("posterior", "point_mass")
        c.objective = component("objective", "ae")
    elif arg in ("wae", "aae"):  # the AE with its codes matched to p(z) = N(0, I) in training
        c.inference.posterior = component("posterior", "point_mass")
        c.objective = component("objective", arg)
    elif arg == "vq":  # 2 codes of a codebook of 4: K^M = 16, small enough to sum p(x) over every code
        c.model.kind = component("model_kind", "vq_vae", codebook_size=4, code_dim=2)
        c.model.prior = component("prior", "none")
        c.inference.posterior = component("posterior", "point_mass")
        c.objective = component("objective", "vq")
    elif arg == "dvae":  # 2 categorical variables of 3: K^M = 9 configurations, small enough to enumerate
        c.model.latent_dim = 6
        c.model.prior = component("prior", "categorical", categories=3)
        c.inference.posterior = component("posterior", "categorical", categories=3)
        c.objective = component("objective", "discrete_elbo", estimator="gumbel_softmax")
        c.eval.estimators = "elbo,iwae,is,exact,diagnostics"
    elif arg not in (None, "", "vae"):
        raise ValueError(f"tiny takes 'vae', 'ae', 'wae', 'aae', 'vq' or 'dvae', not {arg!r}")
    return c
