"""Sequence corpora and tokenizers: real data, disjoint splits, exact
round trips, one-line errors."""
import collections
import importlib.util

import jax.numpy as jnp
import numpy as np
import pytest

from maskmodel import data
from maskmodel.data import DataError
from maskmodel.data import sequences
from maskmodel.data.tokenizers import get_tokenizer
from maskmodel.evaluators import features as features_lib

SEQ_LEN = 64


@pytest.fixture(scope="module")
def pycode():
  return {s: data.get_source("pycode", s, seq_len=SEQ_LEN, num_classes=4)
          for s in ("train", "test")}


def test_pycode_windows_are_real_stdlib_code_and_files_split_disjointly(pycode):
  files = sequences.stdlib_files(sequences.stdlib_dir())
  by_split = collections.defaultdict(list)
  for rel, text in files:
    by_split[sequences.pycode_split(rel)].append(text)
  assert len(files) > 500 and any(rel == "os.py" for rel, _ in files)
  assert 0.05 < len(by_split["test"]) / len(files) < 0.15
  tok = get_tokenizer("bytes")
  width = SEQ_LEN - 2
  for split, source in pycode.items():
    # Every file is cut into ceil(bytes / width) windows, nothing else.
    n_bytes = [len(t.encode()) for t in by_split[split]]
    assert len(source) == sum(-(-n // width) for n in n_bytes if n)
    joined = "\0".join(by_split[split])
    for i in (0, 1, len(source) - 1):
      r = source[i]
      assert r["tokens"][0] == tok.cls_id and r["mask"][0]
      n = int(r["mask"].sum())
      assert r["tokens"][n - 1] == tok.sep_id and not r["mask"][n:].any()
      assert (r["tokens"][n:] == tok.pad_id).all()
      assert tok.decode(r["tokens"]) in joined   # from its own split's files


def test_pycode_construct_labels():
  code = ("import os\n"          # 0 import
          "X = 1\n"              # 1 other
          "class A:\n"           # 2 class
          "  y = 2\n"            # 3 class
          "  @staticmethod\n"    # 4 def (decorator)
          "  def f():\n"         # 5 def
          "    from a import b\n"  # 6 import (innermost)
          "    return 1\n"       # 7 def
          "# end\n")             # 8 other
  kinds = [sequences.PYCODE_LABELS[k] for k in sequences.line_constructs(code)]
  assert kinds[:9] == ["import", "other", "class", "class", "def", "def",
                       "import", "def", "other"]
  assert set(sequences.line_constructs("def (:\n")) == {3}   # does not parse


def test_pycode_labels_cover_every_class(pycode):
  labels = np.asarray([pycode["test"][i]["label"] for i in range(600)])
  counts = np.bincount(labels, minlength=4)
  assert counts[0] > counts[1] > 0 and counts[2] > 0 and counts[3] > 0


def test_genome_is_the_real_chromosome_split_into_disjoint_blocks():
  chrom = sequences.chromosome()
  assert len(chrom) == 2_463_666 and set(chrom) <= set("ACGT")
  tok = get_tokenizer("nucleotides")
  tr = data.get_source("genome", "train", seq_len=SEQ_LEN, num_classes=2)
  te = data.get_source("genome", "test", seq_len=SEQ_LEN, num_classes=2)
  width = SEQ_LEN - 2
  for source in (tr, te):
    r = source[3]
    bases = tok.decode(r["tokens"])
    assert len(bases) == width and bases in chrom
  test_blocks = sequences.genome_blocks(len(chrom), "test")
  assert len(test_blocks) == 4
  # No base is in two windows, and each split's windows lie in its blocks.
  starts = np.sort(np.concatenate([tr.starts, te.starts]))
  assert (np.diff(starts) >= width).all()
  block_of = lambda s: np.searchsorted([a for a, _ in test_blocks], s,
                                       side="right") - 1
  for source, inside in ((te, True), (tr, False)):
    b = block_of(source.starts)
    ends = np.asarray([e for _, e in test_blocks])[np.maximum(b, 0)]
    within = (b >= 0) & (source.starts + width <= ends)
    if inside:
      assert within.all()
    else:   # neither starts in a test block nor runs into the next one
      assert not ((b >= 0) & (source.starts < ends)).any()
      nxt = np.asarray([a for a, _ in test_blocks] + [len(chrom)])[b + 1]
      assert (source.starts + width <= nxt).all()
  assert 0.08 < len(te) / (len(tr) + len(te)) < 0.12


def test_genome_labels_from_pyrodigal_genes():
  cover = sequences.gene_coverage()
  # Prodigal's calls on a bacterial chromosome: ~2,300 genes, ~88% coding.
  assert 0.8 < cover.any(0).mean() < 0.95
  assert cover[0].mean() > 0.3 and cover[1].mean() > 0.3
  cov = lambda f, r: np.stack([np.asarray(f, bool), np.asarray(r, bool)])
  assert sequences.window_label(cov([1, 1, 0, 0], [0, 0, 0, 0]), "coding") == 1
  assert sequences.window_label(cov([1, 0, 0, 0], [0, 0, 0, 0]), "coding") == 0
  assert sequences.window_label(cov([0, 0, 0, 0], [1, 1, 1, 0]), "strand") == 2
  assert sequences.window_label(cov([1, 1, 1, 0], [0, 0, 0, 0]), "strand") == 1
  te = data.get_source("genome", "test", seq_len=SEQ_LEN, num_classes=2)
  labels = te.labels()
  assert 0.75 < labels.mean() < 0.97   # mostly coding, some non-coding
  w = int(np.flatnonzero(labels == 0)[0])
  s = int(te.starts[te.order[w]])
  assert cover[:, s:s + SEQ_LEN - 2].any(0).mean() < 0.5


def test_missing_corpus_is_one_line_naming_the_fix(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "pyrodigal" else real(name, *a))
  with pytest.raises(DataError) as e:
    data.get_source("genome", "train", num_classes=2)
  assert "\n" not in str(e.value) and "make install" in str(e.value)
  with pytest.raises(DataError, match="split="):
    data.get_source("pycode", "validation", num_classes=4)
  with pytest.raises(DataError, match="num_classes=4"):
    data.get_source("pycode", "test", seq_len=SEQ_LEN, num_classes=10)


def test_tokenizers_round_trip_and_share_one_interface():
  text = "def f(x):\n    return 'héllo wörld' # ü\n"
  for name, sample, expect in (
      ("bytes", text, text),
      ("nucleotides", "ACGTNacgtn", "ACGTNACGTN"),
      ("wordpiece", "Hello, world of masked models", "hello, world of masked models")):
    tok = get_tokenizer(name)
    ids, starts = tok.encode(sample)
    assert ids.dtype == np.int32 and len(starts) == len(ids)
    assert tok.decode(ids) == expect
    specials = {tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id}
    assert len(specials) == 4 and max(specials) < tok.vocab_size
    assert not set(ids.tolist()) & set(tok.special_ids)
    tokens, mask = tok.window(ids[:10], 16)
    assert tokens[0] == tok.cls_id and tokens[int(mask.sum()) - 1] == tok.sep_id
    assert tok.decode(tokens) == tok.decode(ids[:10])
  b = get_tokenizer("bytes")
  ids, starts = b.encode("é!")   # two bytes, one character
  assert ids.tolist() == [0xC3, 0xA9, 0x21] and starts.tolist() == [0, 0, 1]


def test_bad_token_id_and_overlong_window_are_one_line():
  tok = get_tokenizer("nucleotides")
  for call, match in ((lambda: tok.check([4, 9]), "token id 9"),
                      (lambda: tok.window(np.full(70, 4), SEQ_LEN), "seq_len=64"),
                      (lambda: tok.encode("ACGX"), "not a nucleotide")):
    with pytest.raises(ValueError, match=match) as e:
      call()
    assert "\n" not in str(e.value)


def test_bag_of_kmers_counts_real_kmers():
  tokens = np.array([[1, 4, 5, 4, 5, 2, 0, 0]])
  mask = tokens != 0
  for k in (1, 2):
    fn = features_lib.bag_of_kmers(9, k)
    got = np.asarray(fn({}, None, {"tokens": jnp.asarray(tokens),
                                   "mask": jnp.asarray(mask)}))[0]
    real = tokens[0][mask[0]].tolist()
    kmers = collections.Counter(tuple(real[i:i + k])
                                for i in range(len(real) - k + 1))
    want = np.zeros(9 ** k)
    for kmer, c in kmers.items():
      want[sum(t * 9 ** (k - 1 - j) for j, t in enumerate(kmer))] = c
    np.testing.assert_allclose(got, want / want.sum(), rtol=1e-6)
  assert features_lib.bag_of_kmers(9, 2) is features_lib.bag_of_kmers(9, 2)
