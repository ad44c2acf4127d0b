"""The generative model p(x, z) = p(z) p(x | z) with q(z | x) beside it, and the model kinds."""
