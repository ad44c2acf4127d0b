"""The complete configuration schema with its defaults; every preset starts from it.

Every key a run may set is here: ``--config.a.b=value`` may only change an existing key, and
its new value must have the key's type (ints are accepted for floats).
"""

import ml_collections


def trunk(network: str = "mlp", hidden=(200, 200), activation: str = "tanh") -> ml_collections.ConfigDict:
    """One network trunk's section (nets only, no probability; see vaegen.networks).

    network: mlp | conv_encoder | conv_decoder.  Every trunk has every key; a trunk uses the keys
    that apply to it.
    """
    t = ml_collections.ConfigDict()
    t.network = network
    t.hidden = tuple(hidden)  # dense widths (conv_encoder: after the convolutions; conv_decoder: before them)
    t.activation = activation  # see vaegen.networks.ACTIVATIONS ('none': linear, e.g. inside gated layers)
    t.gated = False  # gated layers h(x) * sigmoid(g(x)) (GatedDense / GatedConv2d, Dauphin et al. 2017; VampPrior nets)
    # Where a net joins two inputs (p(x | z1, z2); q(z1 | x, z2)): each input first passes its own
    # dense (or, for x, convolutional) branch of these widths, then the branches are concatenated.
    t.branch_hidden = ()
    t.conv_channels = (32, 32, 64, 64)  # output channels of each convolution
    t.conv_kernels = (3, 3, 3, 3)  # kernel size of each convolution
    t.conv_strides = (1, 2, 1, 2)  # stride of each (conv_decoder: upsampling factor of each)
    t.reshape_channels = 1  # conv_decoder: the dense output is reshaped to [H / up, W / up, reshape_channels]
    return t


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
    # How the validation split is taken out of the train split: random (a permutation seeded with
    # validation_seed), tail (the last validation_size examples, unshuffled: the IWAE protocol's
    # 59,600 / 400 split of MNIST), or split (the dataset's own 'validation' split, binarized_mnist).
    c.data.validation_mode = "random"
    # A named data protocol (vaegen.protocols): '' = the data keys as set; a name checks that the
    # data keys are that protocol's and records it with the run (config.json).
    c.data.protocol = ""
    c.data.max_train_examples = 0  # 0 = all
    c.data.max_test_examples = 0  # 0 = all

    # --- the generative model p(x, z) = p(z) p(x | z) ---------------------------------------
    c.model = ml_collections.ConfigDict()
    c.model.latent_dim = 50
    # standard_normal | mixture (learnable mixture of Gaussians) | vampprior (Tomczak & Welling 2018:
    # p(z) = 1/K sum_k q(z | u_k), K learned pseudo-inputs through the encoder) | none (an AE has no p(z))
    c.model.prior = "standard_normal"
    c.model.prior_components = 500  # K: mixture components or VampPrior pseudo-inputs
    c.model.vampprior_init = "random"  # random: u_k = sigmoid(w_k), w_k ~ N(init_mean, init_std) | data: K training examples
    c.model.vampprior_init_mean = -0.05
    c.model.vampprior_init_std = 0.01
    c.model.likelihood = "bernoulli"  # bernoulli | gaussian | discretized_logistic (8-bit data, bits/dim)
    c.model.logistic_mixtures = 1  # discretized_logistic: mixture components per pixel (PixelCNN++ style)
    # discretized_logistic with 3 channels: the mean of channel c depends linearly on the channels
    # before it in the same pixel (PixelCNN++, Salimans et al. 2017)
    c.model.logistic_channel_coupling = True
    c.model.gaussian_scale = "fixed"  # fixed | learned | per_pixel
    c.model.gaussian_fixed_scale = 1.0
    c.model.init_output_bias_from_data = True  # decoder output bias at the data mean (logit)
    c.model.decoder = trunk()  # p(x | z)'s trunk
    # Two stochastic layers z = [z1, z2] (vaegen.hierarchical): p(z2) is the prior above,
    # p(z1 | z2) a diagonal Gaussian on the top_decoder trunk, and p(x | z1) -- or p(x | z1, z2)
    # with decoder_sees_top -- the likelihood above.  latent_dim is z1's dimension.
    c.model.top_latent_dim = 0  # z2's dimension; 0 = one stochastic layer
    c.model.top_decoder = trunk(hidden=(100, 100))  # p(z1 | z2)
    c.model.decoder_sees_top = False  # p(x | z1, z2) (VampPrior HVAE) rather than p(x | z1) (IWAE)
    c.model.min_log_scale = -10.0  # bounds on log sigma of p(z1 | z2)
    c.model.max_log_scale = 3.0
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
    c.inference.encoder = trunk()
    # Two stochastic layers: bottom_up, q(z1 | x) q(z2 | z1) (IWAE; top_encoder is q(z2 | z1)'s trunk) or
    # top_down, q(z2 | x) q(z1 | x, z2) (VampPrior HVAE; encoder is q(z2 | x)'s trunk, top_encoder
    # q(z1 | x, z2)'s, with one branch for x and one for z2).
    c.inference.hierarchy = "bottom_up"
    c.inference.top_encoder = trunk(hidden=(100, 100))

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
    # constant | cosine | exponential | stages (piecewise constant: learning_rate * stage_factors[i] for
    # stage_epochs[i] epochs; the IWAE paper's 3^i epochs at 10^(-i/7))
    c.optim.schedule = "constant"
    c.optim.stage_epochs = (1, 3, 9, 27, 81, 243, 729, 2187)
    c.optim.stage_factors = (1.0, 0.72, 0.52, 0.37, 0.27, 0.19, 0.14, 0.1)
    c.optim.warmup_epochs = 0.0  # linear learning-rate warm-up
    c.optim.decay_rate = 0.1  # exponential: factor per decay_epochs
    c.optim.decay_epochs = 100.0  # exponential: period of decay_rate; cosine: length of the decay
    c.optim.final_lr_fraction = 0.0  # cosine: final lr / initial lr
    c.optim.grad_clip_norm = 0.0  # 0 = no clipping
    # none | per_tensor: each parameter's gradient scaled to unit norm before the optimiser
    # (the VampPrior code's AdamNormGrad) | global: the whole gradient scaled to unit norm
    c.optim.normalize_gradients = "none"

    # --- training ----------------------------------------------------------------------------
    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 128  # global batch, split over all devices
    c.train.num_epochs = 10  # one epoch = one fused device call (lax.scan over its steps)
    c.train.eval_every_epochs = 1  # validation bound every n epochs (0 = never)
    c.train.checkpoint_every_epochs = 1
    # Early stopping on the validation bound (validation/<bound>, evaluated every eval_every_epochs):
    # stop after this many evaluations without improvement (0 = never); the best parameters are
    # kept in <workdir>/best/ and are what vaegen.load and vaegen evaluate use.
    c.train.early_stopping_patience = 0
    c.train.early_stopping_min_epochs = 0  # no stopping (and no patience counted) before this epoch (KL warm-up)
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
