"""Building blocks of a model: networks (deterministic maps), priors p(z), likelihoods p(x | z),
posteriors q(z | x).  Each is a registered component (:mod:`vaegen.registry`)."""
