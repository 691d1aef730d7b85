"""Evaluators: k-NN and linear-probe values on features whose answer is
known, the raw-pixel baseline on images whose answer is known, and a second
eval round that compiles nothing."""
import jax
import numpy as np
import pytest

from conftest import SMOKE, load_config, xla_env
from maskmodel import config as mm_config, data, evaluators, sharding, train
from maskmodel.evaluators import features as features_lib
from maskmodel.evaluators.knn import balanced_accuracy, knn_accuracy
from maskmodel.evaluators.linear_probe import linear_probe
from maskmodel.tasks import get_task


def _weighted_vote(train_x, train_y, x, k, temperature, num_classes):
  """The k-NN prediction for one query, spelled out: cosine similarity, the
  k most similar, each voting exp(s / T) for its class."""
  cos = [float(t @ x / np.linalg.norm(t) / np.linalg.norm(x)) for t in train_x]
  votes = np.zeros(num_classes)
  for i in np.argsort(cos)[::-1][:k]:
    votes[train_y[i]] += np.exp(cos[i] / temperature)
  return int(votes.argmax())


def test_knn_weights_votes_by_similarity():
  # One class-0 neighbour very close to the query, two class-1 neighbours
  # further away: the temperature-weighted vote picks 0, a plain majority 1.
  angles = np.array([0.1, 0.5, 0.6, 2.5])
  train_x = np.stack([np.cos(angles), np.sin(angles)], 1) * [[1.0], [3.0], [0.5], [2.0]]
  train_y = np.array([0, 1, 1, 2])
  query = np.array([[2.0, 0.0]])
  kw = dict(num_classes=3, k=3)
  assert knn_accuracy(train_x, train_y, query, np.array([0]), temperature=0.07, **kw) == 1.0
  assert knn_accuracy(train_x, train_y, query, np.array([1]), temperature=10.0, **kw) == 1.0
  # k=1: only the nearest votes.
  assert knn_accuracy(train_x, train_y, query, np.array([0]), num_classes=3, k=1) == 1.0


@pytest.mark.parametrize("k,temperature", [(1, 0.07), (5, 0.07), (5, 0.5), (40, 0.07)])
def test_knn_matches_the_vote_computed_by_hand(k, temperature):
  rng = np.random.default_rng(0)
  train_x, train_y = rng.normal(size=(30, 6)), rng.integers(0, 4, 30)
  test_x = rng.normal(size=(25, 6))
  want = np.array([_weighted_vote(train_x, train_y, x, k, temperature, 4)
                   for x in test_x])
  kw = dict(num_classes=4, k=k, temperature=temperature)
  assert knn_accuracy(train_x, train_y, test_x, want, **kw) == 1.0
  # Labels right on exactly the first 10 queries: accuracy 10/25.
  wrong = np.where(np.arange(25) < 10, want, (want + 1) % 4)
  assert knn_accuracy(train_x, train_y, test_x, wrong, **kw) == pytest.approx(0.4)


def test_linear_probe_separates_what_a_line_separates():
  # x2 > 0 is class 0, but the class means differ mostly along x1, so the
  # first gradient step from zero (the class-mean direction) gets ~96%;
  # only a trained head finds the separating line.
  rng = np.random.default_rng(0)
  def data(n):
    y = np.arange(n) % 2
    x1 = np.where(y == 0, rng.uniform(5, 10, n), rng.uniform(-10, 10, n))
    x2 = np.where(y == 0, rng.uniform(0.1, 1, n), rng.uniform(-1, -0.1, n))
    return np.stack([x1, x2], 1).astype(np.float32), y
  (xtr, ytr), (xte, yte) = data(100), data(100)
  r = linear_probe(xtr, ytr, xte, yte, num_classes=2, steps=100, lr=0.1)
  assert (r["train_accuracy"], r["test_accuracy"]) == (1.0, 1.0)
  np.testing.assert_array_equal(r["test_predictions"], yte)


def test_linear_probe_cannot_learn_xor():
  # XOR of the signs: no line gets more than 3 of the 4 quadrants right.
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, size=(200, 2)).astype(np.float32)
  y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(np.int32)
  r = linear_probe(x, y, x, y, num_classes=2, steps=200, lr=0.1)
  assert r["train_accuracy"] < 0.8


@pytest.mark.parametrize("config_path,names", [
    (SMOKE, ("knn", "linear_probe", "low_label", "reconstruction")),
    ("configs/classify/mnist_vit_tiny.py:smoke", ("accuracy",)),
])
def test_second_eval_round_compiles_nothing(tmp_path, config_path, names):
  config = load_config(config_path)
  config.evals.batch_size = 16
  config.evals.linear_probe.steps = 5
  config.evals.reconstruction.num_images = 2
  config.evals.low_label.update(fractions=(0.25,), steps=3)  # 1 per class of 40
  task = get_task(config)
  train_src, test_src = train.sources(config)
  train_src = [train_src[i] for i in range(40)]
  test_src = [test_src[i] for i in range(20)]
  spec = data.image_spec(config.data)
  # Jitted: op by op, init compiles every layer's ops separately (seconds).
  params, task_state = jax.jit(task.init)(
      jax.random.PRNGKey(0), {"image": np.zeros((2, 28, 28, 1), np.float32)})
  mesh = sharding.make_mesh()
  # Two rounds' params, placed as the train loop places them.
  rounds = [jax.device_put(p, sharding.replicated(mesh))
            for p in (params, jax.tree.map(lambda p: p + 0.01, params))]
  ctx = evaluators.Context(config, task, mesh, train_src, test_src, spec, str(tmp_path))

  compiles = []
  def on_event(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)
  jax.monitoring.register_event_duration_secs_listener(on_event)
  try:
    with jax.set_mesh(mesh):
      evaluators.run(ctx, names, rounds[0], task_state)
      first = len(compiles)
      evaluators.run(ctx, names, rounds[1], task_state)
  finally:
    jax.monitoring.unregister_event_duration_listener(on_event)
  assert first > 0  # the listener sees compilations
  assert len(compiles) == first, f"round 2 compiled {len(compiles) - first} programs"


# 2x2 one-channel digits-to-be, normalized with mean = std = 0.5, so pixel 0
# becomes -1 and 255 becomes +1.
_TOP, _BOTTOM, _LEFT = ([[255, 255], [0, 0]], [[0, 0], [255, 255]],
                        [[255, 0], [255, 0]])


def _records(images_and_labels):
  return [{"image": np.asarray(im, np.uint8)[..., None], "label": np.int32(y)}
          for im, y in images_and_labels]


def _pixel_context(tmp_path, train_src, test_src):
  config = mm_config.base_config()
  config.data.image_size, config.data.num_classes = 2, 3
  config.data.mean, config.data.std = (0.5,), (0.5,)
  config.evals.batch_size = 2  # smaller than a split: padding is dropped
  spec = data.image_spec(config.data)
  return evaluators.Context(config, None, sharding.make_mesh(), train_src,
                            test_src, spec, str(tmp_path))


def test_pixel_features_are_the_flattened_normalized_pixels(tmp_path):
  src = _records([(_TOP, 0), (_BOTTOM, 1), (_LEFT, 2)])
  ctx = _pixel_context(tmp_path, src, src)
  feats, labels = features_lib.extract(features_lib.pixels, src, batch_size=2,
                                       spec=ctx.spec, mesh=ctx.mesh)
  np.testing.assert_array_equal(feats, [[1, 1, -1, -1], [-1, -1, 1, 1],
                                        [1, -1, 1, -1]])
  np.testing.assert_array_equal(labels, [0, 1, 2])


def test_pixel_baseline_scores_the_pixels_of_each_split(tmp_path):
  # One training image per class; the test split repeats them and adds a
  # top-bright image labelled 1. Its pixels equal the class-0 image's, so
  # both k-NN and the probe call it 0: 3 of 4 right, for both evaluators.
  train_src = _records([(_TOP, 0), (_BOTTOM, 1), (_LEFT, 2)])
  test_src = _records([(_TOP, 0), (_BOTTOM, 1), (_LEFT, 2), (_TOP, 1)])
  ctx = _pixel_context(tmp_path, train_src, test_src)
  # All three training labels: the low-label linear head sees the same three.
  ctx.config.evals.low_label.update(fractions=(1.0,), steps=50, lr=0.1,
                                    batch_size=2)
  with jax.set_mesh(ctx.mesh):
    got = evaluators.run_on_pixels(
        ctx, ["knn", "linear_probe", "low_label", "reconstruction"])
  # Only the feature evaluators have a pixel baseline.
  assert got == {"knn_accuracy": 0.75, "linear_probe_accuracy": 0.75,
                 "low_label_100%": 0.75}
  assert evaluators.run_on_pixels(ctx, ["accuracy"]) == {}
  # Balanced: class 1's recall is 1/2, the others' 1.
  ctx.config.evals.balanced_accuracy = True
  with jax.set_mesh(ctx.mesh):
    got = evaluators.run_on_pixels(ctx, ["knn", "linear_probe"])
  assert got == pytest.approx({
      "knn_accuracy": 0.75, "linear_probe_accuracy": 0.75,
      "knn_balanced_accuracy": 2.5 / 3, "linear_probe_balanced_accuracy": 2.5 / 3})


def test_balanced_accuracy_is_the_mean_recall():
  rng = np.random.default_rng(0)
  labels = rng.choice(3, size=500, p=[0.8, 0.15, 0.05])
  pred = np.where(rng.random(500) < 0.7, labels, rng.integers(0, 3, 500))
  recalls = [np.sum((pred == c) & (labels == c)) / np.sum(labels == c)
             for c in range(3)]
  assert balanced_accuracy(pred, labels) == pytest.approx(np.mean(recalls))
  # A constant guess of the majority class: 1 / classes, not 0.8.
  assert balanced_accuracy(np.zeros(500, int), labels) == pytest.approx(1 / 3)


def test_knn_in_chunks_equals_knn_at_once():
  rng = np.random.default_rng(0)
  train_x, test_x = rng.normal(size=(300, 8)), rng.normal(size=(101, 8))
  train_y, test_y = rng.integers(0, 4, 300), rng.integers(0, 4, 101)
  whole = knn_accuracy(train_x, train_y, test_x, test_y, num_classes=4, chunk=1000)
  assert 0 < whole < 1
  for chunk in (1, 7, 100):
    assert knn_accuracy(train_x, train_y, test_x, test_y, num_classes=4,
                        chunk=chunk) == whole


KNN_8_DEVICES = """
import jax, numpy as np
from maskmodel import sharding
from maskmodel.evaluators.knn import balanced_accuracy, knn_accuracy
assert jax.device_count() == 8
rng = np.random.default_rng(1)
train_x, test_x = rng.normal(size=(301, 8)), rng.normal(size=(50, 8))
train_y, test_y = rng.integers(0, 4, 301), rng.integers(0, 4, 50)
split = sharding.make_mesh()
for k in (1, 20):
  kw = dict(num_classes=4, k=k, chunk=16)
  one = knn_accuracy(train_x, train_y, test_x, test_y, **kw)
  assert 0 < one < 1
  assert knn_accuracy(train_x, train_y, test_x, test_y, mesh=split, **kw) == one
# One real row and 7 padding rows: the real row wins every vote.
far = knn_accuracy(train_x[:1], train_y[:1], test_x, test_y, num_classes=4,
                   k=1, mesh=split)
assert far == np.mean(test_y == train_y[0]), far
print("ok")
"""


def test_knn_with_train_rows_split_over_8_devices_equals_one_device():
  """The train features split by rows over 8 devices (301 rows: the last
  shard is padded, and padding never votes) give the same predictions as
  on one device."""
  import os, subprocess, sys  # pylint: disable=g-import-not-at-top
  from conftest import ROOT  # pylint: disable=g-import-not-at-top
  env = xla_env(8)
  proc = subprocess.run([sys.executable, "-c", KNN_8_DEVICES], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]