"""Low-label fine-tuning: the labelled subset is the stated fraction,
class-balanced and fixed by its seed; the fine-tune learns what the labels
teach (and nothing from shuffled labels); raw pixels get the same fine-tune
with only a linear head."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskmodel import config as mm_config, data, evaluators, sharding, train
from maskmodel.config import ConfigError
from maskmodel.evaluators import low_label


def test_subset_is_the_fraction_balanced_over_classes_and_fixed_by_seed():
  rng = np.random.default_rng(0)
  # Unbalanced classes: 0 has 500 examples, 9 has 140.
  labels = np.concatenate([np.full(500 - 40 * c, c) for c in range(10)])
  labels = labels[rng.permutation(len(labels))]
  idx = low_label.labelled_subset(labels, 0.1, 10, seed=0)
  assert len(idx) == round(0.1 * len(labels))  # 320 = 32 per class
  np.testing.assert_array_equal(np.bincount(labels[idx], minlength=10), [32] * 10)
  assert len(set(idx.tolist())) == len(idx)
  np.testing.assert_array_equal(idx, low_label.labelled_subset(labels, 0.1, 10, seed=0))
  other = low_label.labelled_subset(labels, 0.1, 10, seed=1)
  assert not np.array_equal(idx, other)
  np.testing.assert_array_equal(np.bincount(labels[other], minlength=10), [32] * 10)
  # 1% of 3200: 3.2 per class, rounded to 3.
  assert len(low_label.labelled_subset(labels, 0.01, 10)) == 30


@pytest.mark.parametrize("fraction,match", [
    (0.0, "must be in \\(0, 1\\]"), (1.5, "must be in \\(0, 1\\]"),
    (0.001, "0.001 of 3200 training examples is less than one per class \\(10 "
             "classes\\); use a fraction of at least 0.00313"),
    (0.45, "needs 144 examples of class 9, which has 140"),
])
def test_subset_rejects_a_fraction_it_cannot_draw(fraction, match):
  labels = np.concatenate([np.full(500 - 40 * c, c) for c in range(10)])
  with pytest.raises(ConfigError, match=match):
    low_label.labelled_subset(labels, fraction, 10)


def test_batches_cover_each_epoch_once_with_a_static_shape():
  b = low_label.batch_indices(10, 4, steps=5, seed=0)
  assert b.shape == (5, 4)
  flat = b.reshape(-1)
  np.testing.assert_array_equal(np.sort(flat[:10]), np.arange(10))
  np.testing.assert_array_equal(np.sort(flat[10:20]), np.arange(10))
  # A batch larger than the subset repeats examples instead of shrinking.
  assert low_label.batch_indices(3, 8, steps=2).shape == (2, 8)


class _ToyTask:
  """A one-layer network: features = tanh(flattened image @ w)."""

  def __init__(self, width):
    self.width = width

  def features(self, params, state, images):
    del state
    return jnp.tanh(images.reshape(images.shape[0], -1) @ params["w"])


def _blobs(n, seed, num_classes=3, size=4):
  """Images whose class is which quadrant-ish row band is bright, plus noise."""
  rng = np.random.default_rng(seed)
  recs = []
  for i in range(n):
    y = i % num_classes
    im = rng.integers(0, 90, size=(size, size, 1))
    im[y, :, 0] += 160
    recs.append({"image": im.astype(np.uint8), "label": np.int32(y)})
  return recs


def _context(tmp_path, task, train_src, test_src, **low):
  config = mm_config.base_config()
  config.data.image_size, config.data.num_classes = 4, 3
  config.data.mean, config.data.std = (0.5,), (0.5,)
  config.evals.batch_size = 8
  config.evals.low_label.update(dict(fractions=(0.1,), steps=60, lr=3e-2,
                                     head_lr=3e-2, batch_size=8), **low)
  return evaluators.Context(config, task, sharding.make_mesh(), train_src,
                            test_src, data.image_spec(config.data), str(tmp_path))


def _params(width=8):
  # Small random weights: the head, not the feature layer, starts at zero.
  return {"w": jax.random.normal(jax.random.PRNGKey(0), (16, width)) * 0.3}


def test_finetune_learns_the_labels_and_not_shuffled_ones(tmp_path):
  train_src, test_src = _blobs(300, seed=0), _blobs(90, seed=1)
  task = _ToyTask(8)
  ctx = _context(tmp_path, task, train_src, test_src)
  params = _params()
  before = jax.tree.map(np.asarray, params)
  with jax.set_mesh(ctx.mesh):
    got = evaluators.run(ctx, ["low_label"], params, {})
    assert got == {"low_label_10%": pytest.approx(1.0, abs=0.03)}
    # The training labels shuffled: nothing to learn, and chance (1/3) on the
    # test split.
    perm = np.random.default_rng(0).permutation(len(train_src))
    shuffled = [dict(r, label=train_src[j]["label"]) for r, j in zip(train_src, perm)]
    ctx_shuffled = _context(tmp_path, task, shuffled, test_src)
    control = evaluators.run(ctx_shuffled, ["low_label"], params, {})
  assert control["low_label_10%"] < 0.6
  # The caller's params are neither changed nor donated.
  np.testing.assert_array_equal(np.asarray(params["w"]), before["w"])


def test_finetune_trains_the_network_not_only_the_head(tmp_path):
  # The feature layer starts reading only the last row of pixels, which is
  # noise in every class: a head alone on these features is at chance, so
  # only a fine-tune that updates the network too gets far above it.
  train_src, test_src = _blobs(300, seed=0), _blobs(90, seed=1)
  ctx = _context(tmp_path, _ToyTask(8), train_src, test_src)
  w = jnp.zeros((4, 4, 8)).at[3].set(jax.random.normal(jax.random.PRNGKey(0), (4, 8)))
  blind = {"w": w.reshape(16, 8) * 0.3}
  with jax.set_mesh(ctx.mesh):
    got = evaluators.run(ctx, ["low_label"], blind, {})["low_label_10%"]
    trained = low_label.finetune(
        _ToyTask(8).features, blind, {}, train_src,
        low_label.labelled_subset([r["label"] for r in train_src], 0.1, 3),
        num_classes=3, preprocess=ctx.example, mesh=ctx.mesh, steps=60, lr=3e-2,
        head_lr=3e-2, batch_size=8)
    # The network's own rate near zero: the head alone, on blind features.
    ctx.config.evals.low_label.lr = 1e-9
    head_only = evaluators.run(ctx, ["low_label"], blind, {})["low_label_10%"]
  assert got > 0.9
  assert head_only < 0.6
  # The informative rows got weights.
  assert np.abs(np.asarray(trained["net"]["w"]).reshape(4, 4, 8)[:3]).max() > 0.1


def test_pixel_row_is_a_linear_classifier_on_the_same_subset(tmp_path):
  train_src, test_src = _blobs(300, seed=0), _blobs(90, seed=1)
  ctx = _context(tmp_path, None, train_src, test_src, fractions=(0.01, 0.1))
  with jax.set_mesh(ctx.mesh):
    got = evaluators.run_on_pixels(ctx, ["low_label"])
  # The bright row is linearly separable from the pixels.
  assert set(got) == {"low_label_1%", "low_label_10%"}
  assert got["low_label_10%"] > 0.9


@pytest.mark.parametrize("key,value,match", [
    ("steps", 0, "evals.low_label.steps=0 must be > 0"),
    ("lr", -1.0, "evals.low_label.lr=-1.0 must be > 0"),
    ("head_lr", 0.0, "evals.low_label.head_lr=0.0 must be > 0"),
    ("batch_size", 0, "evals.low_label.batch_size=0 must be a positive multiple"),
])
def test_bad_settings_are_one_config_error(tmp_path, key, value, match):
  ctx = _context(tmp_path, _ToyTask(8), _blobs(30, 0), _blobs(9, 1), **{key: value})
  with pytest.raises(ConfigError, match=match):
    evaluators.run(ctx, ["low_label"], _params(), {})
