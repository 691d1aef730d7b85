"""patchify / unpatchify layout and the fixed sin-cos position embedding."""
import numpy as np
import jax
import pytest

from maskmodel.models.patches import patchify, sincos_2d_posemb, unpatchify


def test_patchify_layout_matches_mae_reference():
  # MAE: x.reshape(N, C, h, p, w, q) -> einsum('nchpwq->nhwpqc'); in NHWC the
  # patch (i, j) is image[i*p:(i+1)*p, j*p:(j+1)*p, :] flattened as (p, p, C).
  rng = np.random.RandomState(0)
  img = rng.rand(2, 12, 8, 3).astype(np.float32)
  p = 4
  out = np.asarray(patchify(img, p))
  assert out.shape == (2, 6, 48)
  for i in range(3):
    for j in range(2):
      np.testing.assert_array_equal(out[:, i * 2 + j],
                                    img[:, i * p:(i + 1) * p, j * p:(j + 1) * p].reshape(2, -1))


@pytest.mark.parametrize("shape,p", [((3, 28, 28, 1), 4), ((2, 32, 32, 3), 16), ((1, 14, 7, 2), 7)])
def test_patchify_roundtrip(shape, p):
  img = jax.random.normal(jax.random.PRNGKey(0), shape)
  grid = (shape[1] // p, shape[2] // p)
  back = unpatchify(patchify(img, p), p, grid, shape[3])
  np.testing.assert_array_equal(np.asarray(back), np.asarray(img))


def _mae_1d(dim, pos):
  # The MAE reference formula, written out per element.
  out = np.zeros((len(pos), dim))
  for m, x in enumerate(pos):
    for d in range(dim // 2):
      w = 1.0 / 10000 ** (d / (dim / 2.0))
      out[m, d] = np.sin(x * w)
      out[m, dim // 2 + d] = np.cos(x * w)
  return out


def test_posemb_values():
  dim, gh, gw = 16, 3, 5
  emb = sincos_2d_posemb(dim, (gh, gw), class_token=True)
  assert emb.shape == (1 + gh * gw, dim)
  np.testing.assert_array_equal(emb[0], 0.0)  # class token row
  rows, cols = np.divmod(np.arange(gh * gw), gw)
  expect = np.concatenate([_mae_1d(dim // 2, cols), _mae_1d(dim // 2, rows)], 1)
  np.testing.assert_allclose(emb[1:], expect, atol=1e-6)
  # Spot values: patch (0, 0) is sin 0 / cos 0; patch (row 1, col 2) first
  # channel is sin(2), channel dim/2 is sin(1).
  np.testing.assert_allclose(emb[1], [0] * 4 + [1] * 4 + [0] * 4 + [1] * 4, atol=1e-7)
  np.testing.assert_allclose(emb[1 + 1 * gw + 2, 0], np.sin(2.0), rtol=1e-6)
  np.testing.assert_allclose(emb[1 + 1 * gw + 2, dim // 2], np.sin(1.0), rtol=1e-6)


def test_posemb_needs_width_multiple_of_4():
  with pytest.raises(ValueError, match="% 4"):
    sincos_2d_posemb(18, (2, 2))
