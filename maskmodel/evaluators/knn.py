"""Weighted k-NN classification on frozen features (Wu et al. 2018; the
temperature-weighted vote of DINO, Caron et al. 2021, Sec. 4.1)."""
from __future__ import annotations

import numpy as np


def knn_accuracy(train_x, train_y, test_x, test_y, *, num_classes, k=20,
                 temperature=0.07):
  """Top-1 accuracy of a cosine-similarity k-NN vote weighted by exp(s/T)."""
  norm = lambda x: x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-8)
  sims = norm(test_x) @ norm(train_x).T
  k = min(k, len(train_x))
  idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
  top = np.take_along_axis(sims, idx, axis=1)
  votes = np.zeros((len(test_x), num_classes))
  np.add.at(votes, (np.arange(len(test_x))[:, None], train_y[idx]),
            np.exp(top / temperature))
  return float(np.mean(votes.argmax(1) == test_y))
