"""Data: sources (embedded, sklearn, Fashion-MNIST IDX, TFDS, synthetic; the
code and genome corpora), tokenizers and grain pipelines."""
from maskmodel.data.pipeline import (ImageSpec, eval_batches, eval_preprocess,
                                     image_spec, normalize, random_resized_crop,
                                     train_augment,
                                     train_dataset, train_iterator)
from maskmodel.data.sources import DataError, get_source
from maskmodel.data.sequences import CORPORA, corpus_tokenizer
from maskmodel.data.tokenizers import get_tokenizer
