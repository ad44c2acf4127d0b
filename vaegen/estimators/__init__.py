"""Estimators of log p(x) (importance sampling, AIS, BDMC) and diagnostics of the latent code."""
