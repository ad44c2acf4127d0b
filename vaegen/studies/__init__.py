"""Studies built on the library: the VAE-vs-AE comparison and its report, the gap decomposition,
ex-post densities, reproduction of published numbers, the demo."""
