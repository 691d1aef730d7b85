"""MAE random masking: the invariants every mask policy must keep."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskmodel import masking
from maskmodel.config import ConfigError


@pytest.mark.parametrize("grid,ratio", [((7, 7), 0.75), ((4, 4), 0.5), ((14, 14), 0.9)])
def test_random_mask_invariants(grid, ratio):
  n = grid[0] * grid[1]
  keep = masking.num_kept(n, ratio)
  m = masking.random_mask(jax.random.PRNGKey(0), 16, grid, keep=keep)
  mask, ids_keep, ids_restore = map(np.asarray, m)
  assert mask.shape == (16, n) and ids_keep.shape == (16, keep)
  # Exactly `keep` visible per row, the rest hidden (1 = hidden).
  np.testing.assert_array_equal((mask == 0).sum(1), keep)
  assert set(np.unique(mask)) <= {0.0, 1.0}
  # ids_keep are distinct and are exactly the visible positions.
  for b in range(16):
    assert len(set(ids_keep[b])) == keep
    np.testing.assert_array_equal(np.sort(ids_keep[b]), np.flatnonzero(mask[b] == 0))
  # ids_restore is a permutation that undoes the shuffle: gathering
  # [kept tokens, hidden filler] with it puts kept tokens back in place.
  for b in range(16):
    assert sorted(ids_restore[b]) == list(range(n))
  x = jnp.arange(n, dtype=jnp.float32)[None].repeat(16, 0)
  kept = jnp.take_along_axis(x, m.ids_keep, axis=1)
  filled = jnp.concatenate([kept, -jnp.ones((16, n - keep))], axis=1)
  restored = np.asarray(jnp.take_along_axis(filled, m.ids_restore, axis=1))
  np.testing.assert_array_equal(restored, np.where(mask == 0, np.asarray(x), -1))


def test_random_mask_is_random_per_sample_and_seeded():
  a = masking.random_mask(jax.random.PRNGKey(1), 8, (7, 7), keep=12).mask
  b = masking.random_mask(jax.random.PRNGKey(1), 8, (7, 7), keep=12).mask
  c = masking.random_mask(jax.random.PRNGKey(2), 8, (7, 7), keep=12).mask
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert len({tuple(r) for r in np.asarray(a)}) == 8  # rows differ


def test_random_mask_is_uniform():
  m = masking.random_mask(jax.random.PRNGKey(3), 4000, (4, 4), keep=4).mask
  freq = np.asarray(m).mean(0)
  np.testing.assert_allclose(freq, 0.75, atol=0.03)


def test_mask_from_scores_keeps_lowest():
  scores = jnp.array([[0.9, 0.1, 0.5, 0.3]])
  m = masking.mask_from_scores(scores, keep=2)
  np.testing.assert_array_equal(m.mask, [[1, 0, 1, 0]])
  np.testing.assert_array_equal(m.ids_keep, [[1, 3]])


def test_static_keep_count_under_jit():
  f = jax.jit(lambda r: masking.random_mask(r, 2, (7, 7), keep=12).ids_keep)
  assert f(jax.random.PRNGKey(0)).shape == (2, 12)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_mask_ratio_out_of_range(ratio):
  with pytest.raises(ConfigError, match="outside \\(0, 1\\)"):
    masking.num_kept(49, ratio)
