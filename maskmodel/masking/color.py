"""ColorMAE's data-independent masks from filtered noise (Hinojosa et al.
2024, Sec. 3).

Large fields of coloured noise are made once. Each batch takes a random
grid-sized window of them, at one position with random horizontal and
vertical flips for every chunk of `len(fields)` samples (sample i reads
field i mod L), and each sample keeps visible the patches where its window
is highest after each window is divided by its own maximum (`ColorMasking`
in carlosh93/ColorMAE's `models/utils/masking_generator.py`). The division
is kept because a window whose maximum is negative has its order reversed
by it, as in the official code.

The official fields are downloads whose generator is not published. They are
made here from the paper's definitions, with white noise n and a periodic
Gaussian blur G_s of standard deviation s patches:
  red    (low-pass)   G_2 n
  blue   (high-pass)  n - G_1 n
  green  (band-pass)  G_1 n - G_2 n
  purple (band-stop)  n - (G_1 n - G_2 n)
The widths (1 and 2 patches) are this implementation's choice: they put
green's peak at a period of about 6 patches, a few blobs across a 14 x 14
grid, like the paper's figures.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from maskmodel.config import ConfigError
from maskmodel.masking.random import Mask, mask_from_scores

COLORS = ("red", "blue", "green", "purple", "white")
NARROW, WIDE = 1.0, 2.0  # blur widths in patches


def noise_fields(color: str, num_fields: int = 256, size: int = 64,
                 seed: int = 0) -> np.ndarray:
  """`num_fields` periodic noise fields [L, size, size] float32 of `color`."""
  if color not in COLORS:
    raise ConfigError(f"noise colour {color!r} is unknown; use one of {COLORS}.")
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  white = np.random.default_rng(seed).standard_normal((num_fields, size, size))
  blur = lambda x, s: ndimage.gaussian_filter(x, sigma=(0, s, s), mode="wrap")
  green = blur(white, NARROW) - blur(white, WIDE)
  fields = {"red": lambda: blur(white, WIDE),
            "blue": lambda: white - blur(white, NARROW),
            "green": lambda: green,
            "purple": lambda: white - green,
            "white": lambda: white}[color]()
  return fields.astype(np.float32)


def color_noise_mask(rng, batch_size: int, grid: tuple[int, int], *, fields,
                     keep: int) -> Mask:
  """Keeps the `keep` patches where each sample's noise window is highest."""
  num_fields, size, _ = fields.shape
  gh, gw = grid
  if gh > size or gw > size:
    raise ConfigError(f"the {gh}x{gw} patch grid is larger than the "
                      f"{size}x{size} noise fields; make larger fields.")
  chunks = -(-batch_size // num_fields)
  k_y, k_x, k_flip = jax.random.split(rng, 3)
  ys = jax.random.randint(k_y, (chunks,), 0, size - gh + 1)
  xs = jax.random.randint(k_x, (chunks,), 0, size - gw + 1)
  flips = jax.random.bernoulli(k_flip, 0.5, (chunks, 2))

  def window(chunk):
    w = jax.lax.dynamic_slice(fields, (0, ys[chunk], xs[chunk]),
                              (num_fields, gh, gw))
    w = jnp.where(flips[chunk, 0], w[:, :, ::-1], w)
    w = jnp.where(flips[chunk, 1], w[:, ::-1, :], w)
    return w / w.max(axis=(1, 2), keepdims=True)  # `NormalizeBySliceMax`

  windows = jax.vmap(window)(jnp.arange(chunks))  # [chunks, L, gh, gw]
  windows = windows.reshape(chunks * num_fields, gh * gw)[:batch_size]
  return mask_from_scores(-windows, keep)
