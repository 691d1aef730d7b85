"""ColorMAE (Hinojosa et al. 2024): the noise fields' spectra and the masks
they give."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, assert_resumes_bit_exactly, load_config
from maskmodel.config import ConfigError
from maskmodel.masking.color import color_noise_mask, noise_fields
from maskmodel.tasks import get_task


def _radial_power(fields):
  """Mean power per radial frequency bin (cycles per patch, 0 to 0.5)."""
  size = fields.shape[-1]
  power = (np.abs(np.fft.fft2(fields - fields.mean(axis=(1, 2), keepdims=True))) ** 2).mean(0)
  f = np.fft.fftfreq(size)
  radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
  edges = np.linspace(0, 0.5, 11)
  return np.array([power[(radius >= lo) & (radius < hi)].mean()
                   for lo, hi in zip(edges[:-1], edges[1:])])


def test_noise_fields_have_their_colour():
  spectra = {c: _radial_power(noise_fields(c, num_fields=16, size=64))
             for c in ("red", "blue", "green", "purple", "white")}
  share_low = {c: s[:2].sum() / s.sum() for c, s in spectra.items()}  # f < 0.1
  share_high = {c: s[5:].sum() / s.sum() for c, s in spectra.items()}  # f >= 0.25
  assert share_high["red"] < 0.01 and share_low["blue"] < 0.01
  assert share_low["red"] > 0.85         # low-pass
  assert share_high["blue"] > 0.8        # high-pass
  green = spectra["green"] / spectra["green"].max()  # band-pass: a mid peak
  assert np.argmax(green) in (2, 3) and green[0] < 0.1 and green[-1] < 0.1
  # Band-stop: purple dips where green peaks, and keeps both ends.
  peak = np.argmax(spectra["green"])
  assert spectra["purple"][peak] < 0.5 * spectra["purple"][-1]
  assert spectra["purple"][peak] < spectra["purple"][0]
  flat = spectra["white"] / spectra["white"].mean()
  assert flat.min() > 0.8 and flat.max() < 1.2
  with pytest.raises(ConfigError, match="colour"):
    noise_fields("pink")


def test_masks_keep_the_highest_noise_of_a_window():
  fields = noise_fields("green", num_fields=8, size=16)
  grid, keep = (7, 7), 12
  m = color_noise_mask(jax.random.PRNGKey(0), 20, grid, fields=fields, keep=keep)
  mask = np.asarray(m.mask)
  assert mask.shape == (20, 49) and (mask.sum(axis=1) == 49 - keep).all()
  # Samples 0 and 8 read field 0 through the windows of chunks 0 and 1.
  def windows(field):
    for y in range(16 - 7 + 1):
      for x in range(16 - 7 + 1):
        w = field[y:y + 7, x:x + 7]
        for v in (w, w[:, ::-1], w[::-1], w[::-1, ::-1]):
          yield v.reshape(-1)
  def visible_set(w):
    return set(np.argsort(-w)[:keep])
  candidates = [visible_set(w) for w in windows(fields[0])]
  for sample in (0, 8, 16):
    assert set(np.flatnonzero(mask[sample] == 0)) in candidates
  # One window per chunk: samples of a chunk share the position and flips.
  chunk0 = [np.flatnonzero(mask[i] == 0) for i in range(8)]
  assert len({tuple(v) for v in chunk0}) > 1  # different fields
  with pytest.raises(ConfigError, match="larger than"):
    color_noise_mask(jax.random.PRNGKey(0), 2, (20, 20), fields=fields, keep=4)


SMOKE = os.path.join(ROOT, "configs", "colormae", "mnist_vit_tiny.py") + ":smoke"


def test_task_masks_with_its_frozen_fields_and_resumes_bit_exactly(tmp_path):
  config = load_config(SMOKE)
  task = get_task(config)
  images = jnp.zeros((20, 28, 28, 1))
  params, state = task.init(jax.random.PRNGKey(0), {"image": images})
  fields = state["frozen"]["noise_fields"]
  assert fields.shape == (16, 16, 16)
  want = color_noise_mask(jax.random.PRNGKey(3), 20, (7, 7), fields=fields, keep=12)
  _, got = task.predict(params, images, jax.random.PRNGKey(3), state)
  np.testing.assert_array_equal(got.mask, want.mask)
  final = assert_resumes_bit_exactly(SMOKE, tmp_path / "w")
  assert 0.1 < final["knn_accuracy"] <= 1.0
  # The fields are checkpointed once, beside the steps.
  assert os.path.isdir(tmp_path / "w" / "checkpoints" / "frozen")
  config.task.color = "pink"
  with pytest.raises(ConfigError, match="task.color='pink'"):
    get_task(config)
