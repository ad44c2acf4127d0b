"""The complete configuration schema with its defaults; every preset starts from it.

Every key a run may set is here: ``--config.a.b=value`` may only change an existing key, and
its new value must have the key's type (ints are accepted for floats).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0  # root of every random stream (init, data order, noise, evaluation)

    # --- data --------------------------------------------------------------------------------
    c.data = ml_collections.ConfigDict()
    c.data.name = "fashion_mnist"  # fashion_mnist | mnist | binarized_mnist (TFDS) | digits (scikit-learn)
    c.data.data_dir = ""  # TFDS data dir; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.data.auto_prepare = True  # prepare the TFDS dataset (download / local import) if missing
    # dynamic: fresh Bernoulli draw of the grey levels each time a batch is used;
    # static: one draw with binarization_seed; threshold: x > 0.5; none: grey levels in [0, 1].
    # Validation and test sets under 'dynamic' are binarized once (static, binarization_seed).
    c.data.binarization = "dynamic"
    c.data.binarization_seed = 0
    c.data.validation_size = 10000  # held out of the training split by a seeded permutation
    c.data.validation_seed = 0
    c.data.max_train_examples = 0  # 0 = all
    c.data.max_test_examples = 0  # 0 = all

    # --- the generative model p(x, z) = p(z) p(x | z) ---------------------------------------
    c.model = ml_collections.ConfigDict()
    c.model.latent_dim = 50
    c.model.prior = "standard_normal"  # standard_normal | none (an autoencoder has no p(z))
    c.model.likelihood = "bernoulli"  # bernoulli | gaussian
    c.model.gaussian_scale = "fixed"  # fixed | learned | per_pixel
    c.model.gaussian_fixed_scale = 1.0
    c.model.init_output_bias_from_data = True  # decoder output bias at the data mean (logit)
    c.model.decoder = ml_collections.ConfigDict()
    c.model.decoder.network = "mlp"
    c.model.decoder.hidden = (200, 200)
    c.model.decoder.activation = "tanh"
    # latent_variable: p(z) p(x | z) with q(z | x) beside it (everything above);
    # autoregressive: no z at all, p(x) = prod_i p(x_i | x_<i) by a MADE (model.made), trained
    # and evaluated on its exact log p(x) (objective.name=exact).
    c.model.kind = "latent_variable"
    c.model.made = ml_collections.ConfigDict()
    c.model.made.hidden = (500,)  # widths of the masked hidden layers
    c.model.made.activation = "relu"
    c.model.made.ordering = "natural"  # natural (raster order) | random (a permutation drawn from ordering_seed)
    c.model.made.ordering_seed = 0  # also seeds the hidden units' connectivity degrees

    # --- inference q(z | x), beside the model -----------------------------------------------
    c.inference = ml_collections.ConfigDict()
    # diagonal_gaussian | full_covariance_gaussian | flow | fixed_scale_gaussian | point_mass
    c.inference.posterior = "diagonal_gaussian"
    c.inference.min_log_scale = -10.0
    c.inference.max_log_scale = 3.0
    c.inference.posterior_scale = 1.0  # the constant scale of fixed_scale_gaussian
    # flow: affine coupling layers (RealNVP, distrax.MaskedCoupling) on a diagonal Gaussian base,
    # each conditioned on a context c(x) from the encoder; also the architecture of the 'flow'
    # family of `vaegen gaps` for models whose q(z|x) is not a flow.
    c.inference.flow_layers = 4
    c.inference.flow_hidden = (64,)  # hidden widths of each coupling layer's network
    c.inference.flow_context_dim = 16
    c.inference.flow_activation = "tanh"
    c.inference.encoder = ml_collections.ConfigDict()
    c.inference.encoder.network = "mlp"
    c.inference.encoder.hidden = (200, 200)
    c.inference.encoder.activation = "tanh"

    # --- objective ---------------------------------------------------------------------------
    c.objective = ml_collections.ConfigDict()
    c.objective.name = "elbo"  # elbo | iwae | ae | rae | dae | exact
    c.objective.num_samples = 1  # S for the ELBO, k for IWAE
    c.objective.analytic_kl = True
    c.objective.beta = 1.0  # weight of the KL in the training objective
    c.objective.kl_warmup_epochs = 0.0  # linear warm-up of the KL weight from 0 to beta
    c.objective.code_penalty = 0.0  # ae, rae: lambda in - lambda/2 ||f(x)||^2 (the RAE penalty)
    c.objective.decoder_l2 = 0.0  # rae: gamma in - gamma/2 ||theta_decoder||^2 (RAE-L2, Ghosh et al. 2020)
    # dae: the denoising autoencoder's corruption C(x~ | x) and walkback (Bengio et al. 2013).
    c.objective.corruption = "salt_and_pepper"  # salt_and_pepper | bit_flip | gaussian
    c.objective.noise_level = 0.3  # prob. of a pixel being salted/flipped; std of gaussian noise
    c.objective.walkback_steps = 1  # most corruption-reconstruction steps per example (1 = plain DAE)
    c.objective.walkback_continue = 0.5  # prob. of walking one step further (geometric walk length)
    # semi_amortized (Kim et al. 2018): K SVI steps on each example's ELBO inside the training step,
    # from the encoder's q (svi_init=amortized) or from N(0, I) (svi_init=prior: non-amortized SVI).
    # svi_gradient: unrolled (through the K steps to the encoder; SA-VAE) | total (theta's gradient
    # also through the steps) | stop (q_K held fixed; the encoder trained on its own ELBO: VAE+SVI).
    c.objective.svi_steps = 10  # K
    c.objective.svi_learning_rate = 0.05  # inner step size
    c.objective.svi_optimizer = "adam"  # adam | sgd (inner optimiser, optax; Kim et al. used sgd + momentum)
    c.objective.svi_momentum = 0.5  # sgd only
    c.objective.svi_num_samples = 1  # z samples per inner step
    c.objective.svi_grad_clip_norm = 0.0  # clip each example's inner gradient (0 = off)
    c.objective.svi_init = "amortized"  # amortized | prior
    c.objective.svi_gradient = "unrolled"  # unrolled | total | stop

    # --- optimisation ------------------------------------------------------------------------
    c.optim = ml_collections.ConfigDict()
    c.optim.optimizer = "adam"  # adam | adamw | sgd
    c.optim.learning_rate = 1e-3
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0  # adamw only
    c.optim.momentum = 0.0  # sgd only
    c.optim.schedule = "constant"  # constant | cosine | exponential
    c.optim.warmup_epochs = 0.0  # linear learning-rate warm-up
    c.optim.decay_rate = 0.1  # exponential: factor per decay_epochs
    c.optim.decay_epochs = 100.0  # exponential: period of decay_rate; cosine: length of the decay
    c.optim.final_lr_fraction = 0.0  # cosine: final lr / initial lr
    c.optim.grad_clip_norm = 0.0  # 0 = no clipping

    # --- training ----------------------------------------------------------------------------
    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 128  # global batch, split over all devices
    c.train.num_epochs = 10  # one epoch = one fused device call (lax.scan over its steps)
    c.train.eval_every_epochs = 1  # validation bound every n epochs (0 = never)
    c.train.checkpoint_every_epochs = 1
    c.train.keep_checkpoints = 2
    c.train.progress = True  # progress bar
    # Faults (docs/errors.md): a step with a non-finite loss or gradient is skipped on the device
    # (parameters and optimizer state untouched) and counted; this many consecutive skips stop the
    # run with an error naming the step and the last finite metrics.
    c.train.max_consecutive_skips = 10
    # Steps per device call (0 = a whole epoch).  SIGINT/SIGTERM are honoured when a call returns
    # (checkpoint, then exit), so this bounds how long a stop request waits; results do not depend on it.
    c.train.steps_per_call = 0
    c.train.handle_signals = True  # SIGINT/SIGTERM: save a checkpoint and stop (main thread only)

    # --- evaluation --------------------------------------------------------------------------
    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 100  # examples per vmapped chunk (memory, not results)
    c.eval.num_samples = 1000  # k of the importance-sampled log p(x) (IWAE_k) at evaluation
    c.eval.validation_num_samples = 1  # k of the bound tracked on the validation set in training
    # `vaegen evaluate` (vaegen.evaluation, vaegen.estimators, vaegen.diagnostics); CLI options override.
    c.eval.estimators = "elbo,iwae,is,diagnostics"  # comma-separated: elbo, iwae, is, ais, bdmc, diagnostics | all
    c.eval.ks = (1, 10, 100)  # IWAE-k bounds from the IS pass (k above eval.num_samples skipped)
    c.eval.chunk_size = 0  # importance samples drawn at once per example (0 = min(k, 1024)); memory only
    c.eval.is_proposal = "posterior"  # posterior: q(z|x) | prior: p(z)
    c.eval.elbo_samples = 1  # z ~ q(z|x) per example for the ELBO's reconstruction term and the distortion
    c.eval.mi_samples = 1  # z ~ q(z|x) per example for the I_q(x; z) estimate
    c.eval.active_unit_threshold = 0.01  # unit d is active if Var_x E_q[z_d|x] > this (Burda et al. 2016)
    c.eval.collapse_threshold = 0.01  # nats: a unit with mean KL(q(z_d|x) || p(z_d)) below this is collapsed
    c.eval.ais = ml_collections.ConfigDict()  # annealed importance sampling with HMC (and BDMC)
    c.eval.ais.num_steps = 1000  # T intermediate distributions
    c.eval.ais.num_chains = 16  # chains per example
    c.eval.ais.num_leapfrog = 10  # leapfrog steps per HMC transition
    c.eval.ais.step_size = 0.01  # initial leapfrog step size
    c.eval.ais.adapt_step_size = True  # per chain, toward target_accept (x1.02 / x0.98 per step)
    c.eval.ais.target_accept = 0.65
    c.eval.ais.min_step_size = 1e-4
    c.eval.ais.max_step_size = 0.5
    c.eval.ais.schedule = "sigmoid"  # sigmoid | linear inverse temperatures
    c.eval.ais.start = "prior"  # prior: p(z) | posterior: q(z|x)  (pi_0 of the annealing path)
    c.eval.ais.max_examples = 0  # AIS on the first n examples of the split only (0 = all)
    c.eval.ais.bdmc_examples = 100  # examples (x, z) simulated from the model for BDMC
    # The gap decomposition (`vaegen gaps`): q* per example by SVI, and log p(x) by importance
    # sampling; command-line flags override these.
    c.eval.gaps = ml_collections.ConfigDict()
    c.eval.gaps.families = "diag"  # comma-separated: diag, fullcov, flow
    c.eval.gaps.num_steps = 500  # SVI steps per example for q*
    c.eval.gaps.learning_rate = 1e-2  # Adam, cosine-decayed to 0 over the steps
    c.eval.gaps.num_samples = 1  # z samples per SVI step
    c.eval.gaps.init = "amortized"  # amortized | prior: where each q* starts
    c.eval.gaps.elbo_samples = 100  # samples for each reported ELBO, L[q] and L[q*]
    c.eval.gaps.log_px_samples = 1000  # k of each importance-sampled log p(x)
    c.eval.gaps.test_examples = 0  # 0 = the whole test set
    c.eval.gaps.train_examples = 1000  # training subset (binarized once); 0 = none
    c.eval.gaps.chunk_size = 500  # examples per vmapped chunk (memory, not results)
    return c
