"""vaegen.blocks.numerics.softplus: the values of jax.nn.softplus bitwise, the logistic sigmoid as
its derivative and s (1 - s) as its second, at every scale of the argument and at the limits."""

import jax
import jax.numpy as jnp
import numpy as np

from vaegen.blocks.numerics import softplus


def _grid() -> np.ndarray:
    mags = np.concatenate([[0.0], np.geomspace(1e-30, 1e4, 400)]).astype(np.float32)
    return np.concatenate([-mags[::-1], mags, np.float32([3.4e38, -3.4e38])]).astype(np.float32)


def test_values_are_those_of_jax_softplus_bitwise():
    x = jnp.asarray(_grid())
    np.testing.assert_array_equal(np.asarray(jax.jit(softplus)(x)), np.asarray(jax.jit(jax.nn.softplus)(x)))
    out = softplus(jnp.asarray([jnp.inf, -jnp.inf, jnp.nan, 0.0]))
    assert out[0] == jnp.inf and out[1] == 0.0 and jnp.isnan(out[2]) and out[3] == np.float32(np.log(2.0))


def test_derivatives_are_the_sigmoid_and_its_derivative():
    x = _grid()
    x = x[np.abs(x) < 1e30]
    s = 1.0 / (1.0 + np.exp(np.minimum(-x.astype(np.float64), 700.0)))   # float64 reference
    grad = np.asarray(jax.jit(jax.vmap(jax.grad(softplus)))(jnp.asarray(x)), np.float64)
    np.testing.assert_allclose(grad, s, rtol=2e-7, atol=1e-30)
    moderate = np.abs(x) <= 20  # beyond, s (1 - s) < 3e-9 and 1 - s loses float32's digits
    second = np.asarray(jax.jit(jax.vmap(jax.grad(jax.grad(softplus))))(jnp.asarray(x[moderate])), np.float64)
    sm = s[moderate]
    np.testing.assert_allclose(second, sm * (1 - sm), rtol=1e-5, atol=1e-12)
    assert float(jax.grad(softplus)(0.0)) == 0.5
    assert float(jax.grad(softplus)(jnp.inf)) == 1.0 and float(jax.grad(softplus)(-jnp.inf)) == 0.0
    # forward mode agrees with reverse mode
    _, tangent = jax.jvp(softplus, (jnp.asarray(x),), (jnp.ones_like(x),))
    np.testing.assert_array_equal(np.asarray(tangent), grad.astype(np.float32))
