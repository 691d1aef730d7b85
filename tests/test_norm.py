"""maskmodel's LayerNorm against flax's: same params, values and gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskmodel.models import norm


def _flax_and_ours(dtype):
  key = iter(jax.random.split(jax.random.PRNGKey(0), 8))
  x = (3.0 * jax.random.normal(next(key), (4, 9, 48)) + 1.5).astype(dtype)
  theirs, ours = nn.LayerNorm(epsilon=1e-6), norm.LayerNorm(epsilon=1e-6)
  params = jax.jit(theirs.init)(next(key), x)
  assert (jax.tree.map(jnp.shape, params)
          == jax.tree.map(jnp.shape, jax.eval_shape(ours.init, next(key), x)))
  # Away from the init (scale 1, bias 0), so that both gradients bite.
  params = jax.tree.map(
      lambda p: p + 0.3 * jax.random.normal(next(key), p.shape), params)
  return x, params, theirs, ours


@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 2e-5),
                                        (jnp.bfloat16, 2e-2)])
def test_layer_norm_matches_flax(dtype, atol):
  x, params, theirs, ours = _flax_and_ours(dtype)
  want, want_vjp = jax.vjp(jax.jit(theirs.apply), params, x)
  got, got_vjp = jax.vjp(jax.jit(ours.apply), params, x)
  assert got.dtype == want.dtype == jnp.float32
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  cotangent = jax.random.normal(jax.random.PRNGKey(5), got.shape)
  for g, w in zip(jax.tree.leaves(got_vjp(cotangent)),
                  jax.tree.leaves(want_vjp(cotangent))):
    assert g.dtype == w.dtype
    assert float(jnp.abs(w.astype(jnp.float32)).max()) > 0.1
    np.testing.assert_allclose(g.astype(jnp.float32), w.astype(jnp.float32),
                               atol=atol, rtol=0)


def test_layer_norm_of_a_constant_row_has_finite_gradients():
  x = jnp.ones((2, 16))
  params = jax.jit(norm.LayerNorm().init)(jax.random.PRNGKey(0), x)
  grads = jax.jit(jax.grad(lambda p, x: norm.LayerNorm().apply(p, x).sum() ** 2,
                           argnums=(0, 1)))(params, x)
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
