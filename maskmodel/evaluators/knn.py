"""Weighted k-NN classification on frozen features (Wu et al. 2018; the
temperature-weighted vote of DINO, Caron et al. 2021, Sec. 4.1)."""
from __future__ import annotations

import numpy as np


def knn_accuracy(train_x, train_y, test_x, test_y, *, num_classes, k=20,
                 temperature=0.07, chunk=1024):
  """Top-1 accuracy of a cosine-similarity k-NN vote weighted by exp(s/T).

  Test rows go `chunk` at a time, so memory is chunk x len(train_x)
  similarities, not the whole test x train matrix.
  """
  norm = lambda x: x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-8)
  train_n = norm(train_x)
  k = min(k, len(train_x))
  correct = 0
  for start in range(0, len(test_x), chunk):
    sims = norm(test_x[start:start + chunk]) @ train_n.T
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(sims, idx, axis=1)
    votes = np.zeros((len(sims), num_classes))
    np.add.at(votes, (np.arange(len(sims))[:, None], train_y[idx]),
              np.exp(top / temperature))
    correct += int(np.sum(votes.argmax(1) == test_y[start:start + chunk]))
  return correct / len(test_x)
