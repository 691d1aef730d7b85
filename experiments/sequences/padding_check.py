"""Which padded sentences does ToMe change? Per real length, how many of the
256 sentences of `run.py`'s sentence setting get an embedding whose cosine
to the unreduced one is below 0.9999, with ToMe at r (default 1) in the
32-token buckets.

  python experiments/sequences/padding_check.py --r 1
"""
import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import run  # pylint: disable=g-import-not-at-top,wrong-import-position

from maskmodel.models import minilm  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--r", type=int, default=1)
  args = parser.parse_args()
  model, params, _, _ = minilm.load_minilm()
  batch, _ = run.sentences(run.raw_tokenizer(), run.prose_paragraphs(), 32, 256)
  data = dict(ids=batch["ids"], mask=batch["mask"], types=batch["token_types"])
  base = run.embed_all(model, params, data, 32)
  reduced = model.clone(token_reduction=run.plan("tome", args.r, 32, model.depth))
  cos = (run.embed_all(reduced, params, data, 32) * base).sum(1)
  lengths = batch["mask"].sum(1)
  print("real tokens | sentences | changed (cos < 0.9999) | min cos")
  for n in np.unique(lengths):
    c = cos[lengths == n]
    print(f"{n} | {c.size} | {(c < 0.9999).sum()} | {c.min():.4f}")


if __name__ == "__main__":
  main()
