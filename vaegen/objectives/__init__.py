"""Training objectives: bounds on log p(x) (ELBO, IWAE) and the autoencoders' objectives."""
