"""Token-merging maps, as in the ToMe paper's figures (Bolya et al. 2023):
every patch is coloured by the token it ended up in (the mean colour of that
token's patches), with a border where neighbouring patches belong to
different tokens.

Pure numpy plus matplotlib's Agg canvas (no pyplot, no global backend
change), so it runs headless and in tests.
"""
from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _as_float_image(image):
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  if np.issubdtype(image.dtype, np.integer):
    return image.astype(np.float32) / 255.0
  image = image.astype(np.float32)
  lo, hi = float(image.min()), float(image.max())
  if lo < 0.0 or hi > 1.0:   # e.g. normalized pixels: rescale for display
    image = (image - lo) / max(hi - lo, 1e-12)
  return image


def patch_groups(source, grid, class_token=True):
  """`[gh, gw]` int map: the index of the token each patch was merged into.

  `source` is one image's source map: the index map `[N0]` that the reducers
  and the ViT return (the holder of each input token, -1 if pruned), or a
  one-hot `[K, N0]` map (`maskmodel.tokens.dense_source`, ToMe's form). N0
  includes the class token when `class_token`. A patch held by no token
  (pruned) gets -1.
  """
  source = np.asarray(source)
  if source.ndim == 2:    # one-hot [K, N0] -> index map [N0]
    held = source.max(axis=0) > 0
    source = np.where(held, source.argmax(axis=0), -1)
  if source.ndim != 1:
    raise ValueError(f"source has shape {source.shape}; pass one image's "
                     "index map [N0] or one-hot map [K, N0].")
  source = source.astype(np.int64)
  if class_token:
    source = source[1:]
  gh, gw = grid
  if source.shape[0] != gh * gw:
    raise ValueError(f"source covers {source.shape[0]} patches but the grid "
                     f"{gh}x{gw} has {gh * gw}.")
  return np.where(source >= 0, source, -1).reshape(gh, gw)


def token_map(image, source, patch_size, *, class_token=True, upscale=1,
              border_color=(0.0, 0.0, 0.0), pruned_color=(1.0, 1.0, 1.0)):
  """RGB float image `[H * upscale, W * upscale, 3]`: one image's token map.

  Args:
    image: `[H, W]`, `[H, W, 1]` or `[H, W, 3]`, uint8 or float.
    source: that image's index map `[N0]` (or one-hot `[K, N0]`), see
      `patch_groups`.
    patch_size: patch side in pixels; H and W must be multiples of it.
    class_token: whether column 0 of the source map is the class token.
    upscale: integer nearest-neighbour zoom, so the one-pixel borders stay
      thin next to the patches.
    border_color: colour of the last pixel row/column of a patch whose
      neighbour below/right belongs to another token.
    pruned_color: colour of patches no token holds (pruning methods).
  """
  image = _as_float_image(image)
  h, w = image.shape[:2]
  if h % patch_size or w % patch_size:
    raise ValueError(f"image {h}x{w} is not a multiple of patch_size="
                     f"{patch_size}.")
  groups = patch_groups(source, (h // patch_size, w // patch_size),
                        class_token)
  cell = patch_size * int(upscale)
  image = np.repeat(np.repeat(image, upscale, 0), upscale, 1)
  h, w = image.shape[:2]
  labels = np.repeat(np.repeat(groups, cell, 0), cell, 1)
  out = np.empty_like(image)
  out[labels < 0] = pruned_color
  for g in np.unique(groups[groups >= 0]):
    mask = labels == g
    out[mask] = image[mask].mean(axis=0)
  edge = np.zeros((h, w), bool)
  edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
  edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
  out[edge] = border_color
  return out


def _default_upscale(patch_size):
  return max(1, 16 // patch_size)


def save_token_maps(path, images, sources, patch_size, *, class_token=True,
                    titles=None, upscale=None, scale=2.0, dpi=100,
                    border_color=(0.0, 0.0, 0.0)):
  """Saves a row of (image, token map) pairs as a PNG; returns the path.

  `images` and `sources` are sequences (or batched arrays) of the same
  length; see `token_map` for their shapes. `upscale` defaults to showing
  each patch at 16 pixels or more. Pick a `border_color` that stands out
  from the images (e.g. red on dark digits).
  """
  upscale = _default_upscale(patch_size) if upscale is None else upscale
  images, sources = list(images), list(sources)
  if len(images) != len(sources):
    raise ValueError(f"{len(images)} images but {len(sources)} source maps.")
  cols = len(images)
  fig = Figure(figsize=(scale * cols, 2 * scale), dpi=dpi)
  FigureCanvasAgg(fig)
  for i, (image, source) in enumerate(zip(images, sources)):
    top = fig.add_subplot(2, cols, i + 1)
    top.imshow(_as_float_image(image), interpolation="nearest")
    bottom = fig.add_subplot(2, cols, cols + i + 1)
    bottom.imshow(token_map(image, source, patch_size, class_token=class_token,
                            upscale=upscale, border_color=border_color),
                  interpolation="nearest")
    if titles is not None:
      top.set_title(str(titles[i]), fontsize=8)
    for ax in (top, bottom):
      ax.set_axis_off()
  fig.tight_layout()
  fig.savefig(path, format="png")
  return path


def save_token_map(path, image, source, patch_size, *, class_token=True,
                   upscale=None, dpi=100):
  """Saves one token map as a PNG of `upscale` times the image's size."""
  upscale = _default_upscale(patch_size) if upscale is None else upscale
  rgb = np.clip(token_map(image, source, patch_size, class_token=class_token,
                          upscale=upscale), 0.0, 1.0)
  h, w = rgb.shape[:2]
  fig = Figure(figsize=(w / dpi, h / dpi), dpi=dpi)
  FigureCanvasAgg(fig)
  ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
  ax.imshow(rgb, interpolation="nearest")
  ax.set_axis_off()
  fig.savefig(path, format="png", dpi=dpi)
  return path
