"""Inference beside the model: per-example variational families, SVI, semi-amortized training."""
