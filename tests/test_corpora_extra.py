"""The wordnet and species corpora on tiny fixture files in the layouts of
Debian's wordnet-base and ragout-examples: labels, disjoint splits (no
held-out genome in train), window shapes, determinism, one-line errors."""
import gzip

import numpy as np
import pytest

from maskmodel import data
from maskmodel.data import DataError
from maskmodel.data import sequences
from maskmodel.data.tokenizers import get_tokenizer

HEADER = ("  1 This software and database is being provided to you, the LICENSEE, by  \n"
          "  2 Princeton University under the following license.  \n")
# (file, offset, synset type, gloss), as WordNet 3.0 writes them.
SYNSETS = [
    ("noun", "00001740", "n", "that which is perceived or known or inferred "
     "to have its own distinct existence (living or nonliving)"),
    ("noun", "00001930", "n", "a general concept that marks the divisions "
     "of coordinate things"),
    ("noun", "00002137", "n", "a general concept formed by extracting common "
     "features from specific examples"),
    ("verb", "00001740", "v", "draw air into, and expel out of, the lungs; "
     "\"I can breathe better when the air is clean\""),
    ("verb", "00002325", "v", "breathe noisily, as when one is exhausted"),
    ("adj", "00001740", "a", "(usually followed by `to') having the necessary "
     "means or skill or know-how or authority to do something"),
    ("adj", "00002312", "s", "facing away from the axis of an organ or organism"),
    ("adj", "00002527", "s", "nearest to or facing toward the axis of an organ"),
    ("adv", "00001740", "r", "(often used as a combining form) in a good or "
     "proper or satisfactory manner or to a high standard"),
    ("adv", "00002325", "r", "to a great extent"),
]
POS = {"n": 0, "v": 1, "a": 2, "s": 2, "r": 3}


def _synset_line(offset, kind, gloss):
  return (f"{offset} 03 {kind} 01 word 0 001 @ 00001930 {kind} 0000 "
          f"| {gloss}  \n")


@pytest.fixture
def wordnet_dir(tmp_path, monkeypatch):
  for name in sequences.WORDNET_FILES:
    lines = [_synset_line(o, k, g) for f, o, k, g in SYNSETS if f == name]
    (tmp_path / f"data.{name}").write_text(HEADER + "".join(lines))
  # Ten synsets: half of them test, so both splits hold several.
  monkeypatch.setattr(sequences, "WORDNET_TEST_FRACTION", 0.5)
  monkeypatch.setattr(sequences, "WORDNET_DIR", str(tmp_path))
  return tmp_path


def test_wordnet_windows_are_glosses_labelled_by_part_of_speech(wordnet_dir):
  tok = get_tokenizer("bytes")
  seq_len = 64
  seen = {}
  for split in ("train", "test"):
    source = data.get_source("wordnet", split, seq_len=seq_len, num_classes=4)
    want = {g: POS[k] for f, o, k, g in SYNSETS
            if sequences.wordnet_split(f"{f}:{o}") == split}
    assert len(source) == len(want) >= 2
    assert source.class_names == ("noun", "verb", "adjective", "adverb")
    for i in range(len(source)):
      r = source[i]
      assert r["tokens"].shape == r["mask"].shape == (seq_len,)
      n = int(r["mask"].sum())
      assert r["tokens"][0] == tok.cls_id and r["tokens"][n - 1] == tok.sep_id
      assert (r["tokens"][n:] == tok.pad_id).all()
      text = tok.decode(r["tokens"])
      # The gloss itself (cut to seq_len - 2 bytes), never a header line.
      gloss = [g for g in want if g.encode()[:seq_len - 2].decode() == text]
      assert len(gloss) == 1, text
      assert r["label"] == want[gloss[0]]
      seen[gloss[0]] = split
  # Every synset is in exactly one split (satellites, s, are adjectives).
  assert sorted(seen) == sorted(g for *_, g in SYNSETS)


def test_wordnet_is_deterministic_and_reads_wordpiece(wordnet_dir):
  a = sequences.wordnet("train", seq_len=32)
  sequences._wordnet.cache_clear()  # pylint: disable=protected-access
  sequences.wordnet_synsets.cache_clear()
  b = sequences.wordnet("train", seq_len=32)
  assert a is not b
  for i in range(len(a)):
    np.testing.assert_array_equal(a[i]["tokens"], b[i]["tokens"])
    assert a[i]["label"] == b[i]["label"]
  wp = sequences.wordnet("train", seq_len=128, tokenizer="wordpiece")
  glosses = {g.lower() for f, o, _, g in SYNSETS
             if sequences.wordnet_split(f"{f}:{o}") == "train"}
  decoded = {wp.tokenizer.decode(wp[i]["tokens"]).replace(" ", "")
             for i in range(len(wp))}
  assert decoded == {g.replace(" ", "") for g in glosses}


def test_wordnet_missing_or_bad_is_one_line(tmp_path, monkeypatch):
  monkeypatch.setattr(sequences, "WORDNET_DIR", str(tmp_path / "none"))
  with pytest.raises(DataError, match="make data") as e:
    data.get_source("wordnet", "train", num_classes=4)
  assert "\n" not in str(e.value) and "wordnet-base" in str(e.value)
  for kw, match in (({"label": "lexfile"}, "data.label"),
                    ({"tokenizer": "nucleotides"}, "data.tokenizer")):
    with pytest.raises(DataError, match=match) as e:
      data.get_source("wordnet", "train", num_classes=4, **kw)
    assert "\n" not in str(e.value)
  with pytest.raises(sequences.CorpusError, match="not a WordNet synset"):
    sequences.parse_wordnet_line("00001740 03 x 01 word | a gloss\n")


# species --------------------------------------------------------------------

# species folder -> genome file -> records (lengths); the first file by name
# of each species is held out for test.
GENOMES = {"A.alpha": {"g1": (100,), "g2": (90, 40), "g3": (70,)},
           "B.beta": {"k1": (80,), "k2": (120,)}}
WIDTH = 16


@pytest.fixture
def ragout_dir(tmp_path, monkeypatch):
  rng = np.random.RandomState(0)
  seqs = {}
  for species, genomes in GENOMES.items():
    folder = tmp_path / species / "references"
    folder.mkdir(parents=True)
    for name, lengths in genomes.items():
      records = ["".join(rng.choice(list("ACGT"), n)) for n in lengths]
      seqs[species, name] = records
      # Lower case (soft-masked) and line wrapping as real FASTA files have.
      text = "".join(f">{name}_{i} a record\n{r[:50].lower()}\n{r[50:]}\n"
                     for i, r in enumerate(records))
      (folder / f"{name}.fasta.gz").write_bytes(gzip.compress(text.encode()))
  (tmp_path / "README").write_text("not a species")
  monkeypatch.setattr(sequences, "RAGOUT_DIR", str(tmp_path))
  return seqs


def test_species_test_split_is_held_out_genomes(ragout_dir):
  tok = get_tokenizer("nucleotides")
  names, genomes = sequences.species_genomes(sequences.RAGOUT_DIR)
  assert names == ("A.alpha", "B.beta")
  test_files = {p.split("/")[-1] for _, p in genomes["test"]}
  assert test_files == {"g1.fasta.gz", "k1.fasta.gz"}
  assert not test_files & {p.split("/")[-1] for _, p in genomes["train"]}
  for split, held_out in (("test", True), ("train", False)):
    source = data.get_source("species", split, seq_len=WIDTH + 2,
                             num_classes=2)
    mine = {k: v for k, v in ragout_dir.items()
            if (k[1] in ("g1", "k1")) == held_out}
    # Each record is tiled by whole windows; none crosses a record.
    assert len(source) == sum(len(r) // WIDTH for rs in mine.values()
                              for r in rs)
    assert source.ids.dtype == np.uint8
    for i in range(len(source)):
      r = source[i]
      assert r["tokens"].shape == (WIDTH + 2,) and r["mask"].all()
      bases = tok.decode(r["tokens"])
      assert len(bases) == WIDTH
      homes = [k for k, rs in ragout_dir.items() if any(bases in x for x in rs)]
      # From a genome of its own split, of the species of its label.
      assert homes and all(k in mine for k in homes), (bases, homes)
      assert {names.index(k[0]) for k in homes} == {int(r["label"])}
    assert set(source.labels().tolist()) == {0, 1}


def test_species_is_deterministic(ragout_dir):
  a = sequences.species("train", seq_len=WIDTH + 2)
  sequences._species.cache_clear()  # pylint: disable=protected-access
  b = sequences.species("train", seq_len=WIDTH + 2)
  assert a is not b
  np.testing.assert_array_equal(a.order, b.order)
  np.testing.assert_array_equal(a.labels(), b.labels())
  for i in (0, len(a) - 1):
    np.testing.assert_array_equal(a[i]["tokens"], b[i]["tokens"])


def test_species_missing_or_unusable_is_one_line(tmp_path, monkeypatch):
  monkeypatch.setattr(sequences, "RAGOUT_DIR", str(tmp_path / "none"))
  with pytest.raises(DataError, match="make data") as e:
    data.get_source("species", "train", num_classes=4)
  assert "\n" not in str(e.value) and "ragout-examples" in str(e.value)
  # A species with a single genome leaves nothing to hold out.
  folder = tmp_path / "one" / "C.gamma" / "references"
  folder.mkdir(parents=True)
  (folder / "x.fasta.gz").write_bytes(gzip.compress(b">x\nACGT\n"))
  monkeypatch.setattr(sequences, "RAGOUT_DIR", str(tmp_path / "one"))
  with pytest.raises(DataError, match="one genome") as e:
    data.get_source("species", "test", num_classes=4)
  assert "\n" not in str(e.value)
  # A genome that is not DNA names its file.
  (tmp_path / "one" / "D.delta" / "references").mkdir(parents=True)
  for name, body in (("a", b">a\nACGT\n"), ("b", b">b\nACGTX\n")):
    (tmp_path / "one" / "D.delta" / "references" / f"{name}.fasta").write_bytes(body)
  (folder / "y.fasta.gz").write_bytes(gzip.compress(b">y\nACGT\n"))
  with pytest.raises(DataError, match="b.fasta: character 'X'") as e:
    data.get_source("species", "train", num_classes=2)
  assert "\n" not in str(e.value)
  with pytest.raises(DataError, match="data.tokenizer"):
    data.get_source("species", "test", num_classes=4, tokenizer="bytes")
