"""BERT-style MLM of a tiny byte-level Transformer on WordNet 3.0's synset
glosses (`wordnet`, from Debian's wordnet-base), probed on each gloss's
part of speech (noun / verb / adjective / adverb).

Reproduces: nothing from a paper; it is the end-to-end check that masked
language modeling (BERT's 15% with 80/10/10) learns features of English
definitions at CPU scale. One window per gloss (cut to 126 bytes); the
test split holds 10% of the synsets (by the SHA-256 of file and offset),
none of them seen in pretraining. The report compares k-NN and
linear-probe accuracy against the same encoder at random init and against
a bag of bytes (no encoder).
Needs: `make data` (installs wordnet-base into /usr/share/wordnet).
Expected: see "Measured" below.
Hardware / time: 2 CPU cores, about 3 minutes including evals.

  python -m maskmodel.main --config configs/mlm/wordnet_tiny.py --workdir workdirs/mlm_wordnet

Variants (comma-separated): `:wordpiece` reads the glosses with MiniLM's
WordPiece instead of bytes;
`:smoke` runs a few steps with a smaller model, for tests.

Measured (seed 0, the command above, 400 steps at batch 64; 2 CPU cores
shared with other jobs, load average 8-11: 2 min 57 s wall, 131 s of it
training). Train: 8,192 of the 105,869 training glosses; test: the first
2,048 of the 11,790 held-out glosses, 68.8% noun, 12.4% verb, 16.1%
adjective, 2.7% adverb (the labels of `data.get_source("wordnet", "test",
seq_len=128, num_classes=4)`, first 2,048).

| eval                  | MLM    | random init | bag of bytes |
|-----------------------|--------|-------------|--------------|
| k-NN                  | 0.6992 | 0.6987      | 0.7217       |
| linear probe          | 0.7847 | 0.7681      | 0.7905       |

Masked-byte accuracy on the test glosses 0.2428 (loss 2.766; 0.2373 at
step 200). k-NN on every representation sits near the majority class
(0.688); the linear probes beat it by ~8-10 points, but the bag of bytes
(the report's "raw pixels" column) beats the MLM encoder, which beats its
random init by 1.7 points on the linear probe only. The claim that MLM
learns features of glosses is not shown at this scale.

`:wordpiece` (the same command with `wordnet_tiny.py:wordpiece`; 13 min
15 s wall, 516 s of it training, with 2.10M parameters, most of them the
30,522-row embedding; the same test glosses):

| eval                  | MLM    | random init | bag of word pieces |
|-----------------------|--------|-------------|--------------------|
| k-NN                  | 0.7358 | 0.7305      | 0.8062             |
| linear probe          | 0.7651 | 0.7612      | 0.5366             |

Masked-piece accuracy 0.1045 (loss 7.110). The bag of word pieces is the
best k-NN here; its linear probe (30,522 sparse inputs, the evaluator's
default probe schedule) is below the majority class, so that column's
probe is under-trained, not a sign the pieces carry no part of speech.
"""
import ml_collections

from maskmodel import config as mm
from maskmodel.models import seq


def get_config(arg=None):
  args = set((arg or "").split(","))   # e.g. "smoke,wordpiece"
  c = mm.base_config()
  c.data.name = "wordnet"
  c.data.tokenizer = "bytes"
  c.data.label = "pos"
  c.data.num_classes = 4
  c.data.seq_len = 128
  # A random sample of each split (records are in a seeded order): the
  # pretraining set and the feature evals' train set alike.
  c.data.train_examples = 8192
  c.data.test_examples = 2048
  c.task = ml_collections.ConfigDict(dict(
      name="mlm", mask_rate=0.15, max_predictions=0, mask_token_prob=0.8,
      random_token_prob=0.1))
  c.model = seq.seq_config(vocab_size=260, max_len=128, width=64, depth=2,
                           num_heads=4, mlp_dim=256)
  c.total_steps = 400
  c.batch_size = 64
  c.log_every = 50
  c.checkpoint_every = 200
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 40
  c.optimizer.weight_decay = 0.01
  c.evals.names = ("knn", "linear_probe", "mlm")
  c.evals.compare_random_init = True
  c.evals.raw_kmer = 1     # the no-encoder baseline: a bag of bytes
  c.evals.mlm = dict(every=200)

  if "wordpiece" in args:
    c.data.tokenizer = "wordpiece"
    c.model.vocab_size = 30522   # MiniLM's uncased WordPiece
    c.evals.raw_kmer = 1         # a bag of word pieces
  if "smoke" in args:
    c.total_steps = 20
    c.batch_size = 16
    c.log_every = 5
    c.checkpoint_every = 10
    c.optimizer.warmup_steps = 5
    c.data.train_examples = 256
    c.data.test_examples = 128
    c.model.width = 32
    c.model.depth = 1
    c.model.num_heads = 2
    c.model.mlp_dim = 64
    c.evals.batch_size = 64
    c.evals.mlm.every = 10
    c.evals.linear_probe.steps = 50
  return c
