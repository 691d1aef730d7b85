"""Real sequence corpora, offline: records `{"tokens": int32 [L], "mask":
bool [L], "label": int32}`, with `mask` True on real tokens.

Each record is one window of a corpus: `[CLS]`, up to `L - 2` tokens,
`[SEP]`, then padding. Records are in a fixed, seeded order (a permutation
of the split's windows), so `data.train_examples` / `data.test_examples`
(the first N records) is a random sample of the whole split.

pycode: the Python standard library's own `.py` files, from the running
  interpreter (`sysconfig`'s "stdlib" path; installed packages under
  site-packages / dist-packages are left out, and so are the few files that
  are not UTF-8). Files are sorted by relative path; a file is in the test
  split when the SHA-256 of its relative path, read as a fraction of 2^256,
  is below `PYCODE_TEST_FRACTION` (no file is in both). Each file is cut
  into consecutive windows of `L - 2` tokens; a file's last window is
  padded. Label, the enclosing construct of the window's central line
  (the line of its middle token), from the `ast` module: the innermost of
  a function (`def`, 0), a class body outside any method (`class`, 1), an
  import statement (`import`, 2), or anything else (`other`, 3: module-level
  code, docstrings and comments outside a def or class). A file that does
  not parse (Python 2 test data, bad-syntax tests) is all `other`.

genome: the complete *Corynebacterium diphtheriae* NCTC11397 chromosome
  (2,463,666 bp) that `pyrodigal` ships in its package data. The chromosome
  is cut into `GENOME_BLOCKS` equal contiguous blocks; every
  `GENOME_TEST_EVERY`-th block, from block `GENOME_TEST_FIRST`, is held out for the test
  split, so a test window never overlaps, or borders, a training window
  except at a block edge. Windows of `L - 2` bases tile each block (its
  remainder is dropped). Labels from the genes that pyrodigal itself
  predicts (`GeneFinder(meta=False)` trained on this chromosome, Prodigal's
  single-genome mode; about 1 s, once per process): with `data.label =
  "coding"`, 1 when at least half of the window's bases lie in a predicted
  gene (either strand), else 0; with "strand", 0 non-coding, 1 coding on
  the forward strand, 2 on the reverse strand (the strand holding the most
  of its coding bases).

wordnet: the glosses of WordNet 3.0's synsets (the text after `|` on each
  line of `data.noun`, `data.verb`, `data.adj`, `data.adv`), from Debian's
  `wordnet-base` (`WORDNET_DIR`; `make data` installs it). One window per
  gloss: its first `L - 2` tokens (longer glosses are cut). A synset is in
  the test split when the SHA-256 of `"<file>:<offset>"` (e.g.
  "noun:00001740"), read as a fraction of 2^256, is below
  `WORDNET_TEST_FRACTION`. Label (`data.label = "pos"`), the synset's part
  of speech: noun 0, verb 1, adjective 2 (satellite adjectives, type `s`,
  included), adverb 3.

species: the 16 complete bacterial genomes of Debian's `ragout-examples`
  (`RAGOUT_DIR/<species>/references/<genome>.fasta.gz`; 4 species, 2-5
  genomes each, 48 Mbp; `make data` installs it). Label: the species (the
  folders in sorted order: E.Coli, H.Pylori, S.Aureus, V.Cholerae). The
  first genome of each species in sorted file-name order (DH1, ELS37, COL,
  H1) is held out whole for the test split; the others are train, so a
  probe is scored on genomes it never saw. Windows of `L - 2` bases tile
  each FASTA record (a chromosome or plasmid; its remainder is dropped).
  Genomes are read only for the split asked for, once per process, and
  kept as uint8 token ids.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import gzip
import hashlib
import importlib.resources
import importlib.util
import os
import sysconfig
import threading

import numpy as np

from maskmodel.data.tokenizers import Tokenizer, get_tokenizer

PYCODE_TEST_FRACTION = 0.1
PYCODE_LABELS = ("def", "class", "import", "other")
GENOME_FILE = "tests/data/GCF_001457455.1_NCTC11397_genomic.fna.gz"
GENOME_BLOCKS = 40
GENOME_TEST_EVERY = 10
GENOME_TEST_FIRST = 4
GENOME_LABELS = {"coding": ("non-coding", "coding"),
                 "strand": ("non-coding", "forward", "reverse")}
WORDNET_DIR = "/usr/share/wordnet"
WORDNET_FILES = ("noun", "verb", "adj", "adv")
WORDNET_TEST_FRACTION = 0.1
WORDNET_LABELS = ("noun", "verb", "adjective", "adverb")
WORDNET_POS = {"n": 0, "v": 1, "a": 2, "s": 2, "r": 3}
RAGOUT_DIR = "/usr/share/doc/ragout/examples"
MAKE_DATA = "run `make data` (as root: it installs Debian's {})"
INSTALL = "run `make install` (it installs the package's [data] extra)"
_ORDER_SEED = 0
# CPython 3.11's parser is not safe to run from several threads at once (the
# grain pipeline's readers): it fails with "AST constructor recursion depth
# mismatch" (python/cpython#106905). One parse at a time.
_AST_LOCK = threading.Lock()


class CorpusError(ValueError):
  """A corpus that is missing or unusable as configured."""


@dataclasses.dataclass(frozen=True)
class WindowSource:
  """Windows of token ids as grain random-access records.

  `ids`: every token of the split, concatenated; window `w` is
  `ids[starts[w]:starts[w] + lengths[w]]`, and `label(w)` its label.
  Record `i` is window `order[i]`.
  """
  tokenizer: Tokenizer
  seq_len: int
  ids: np.ndarray
  starts: np.ndarray
  lengths: np.ndarray
  order: np.ndarray
  label_fn: object
  num_classes: int
  class_names: tuple

  def __len__(self):
    return len(self.order)

  def __getitem__(self, i):
    if not 0 <= i < len(self.order):
      raise IndexError(f"record {i} is outside the {len(self.order)} windows")
    w = int(self.order[i])
    start = int(self.starts[w])
    tokens, mask = self.tokenizer.window(
        self.ids[start:start + int(self.lengths[w])], self.seq_len)
    return {"tokens": tokens, "mask": mask, "label": np.int32(self.label_fn(w))}

  def labels(self) -> np.ndarray:
    """Every record's label, in record order."""
    return np.asarray([self.label_fn(int(w)) for w in self.order], np.int32)


def _check_split(name, split):
  if split not in ("train", "test"):
    raise CorpusError(f"split={split!r} is not available for {name}; use "
                      "'train' or 'test'.")


def _windows(total: int, width: int):
  """(starts, lengths) of consecutive windows of `width` over `total`
  tokens, the last one shorter."""
  starts = np.arange(0, total, width)
  return starts, np.minimum(width, total - starts)


def _order(n):
  return np.random.RandomState(_ORDER_SEED).permutation(n)


# pycode ---------------------------------------------------------------------


def stdlib_dir() -> str:
  return sysconfig.get_paths()["stdlib"]


@functools.lru_cache(maxsize=None)
def stdlib_files(root: str) -> tuple[tuple[str, str], ...]:
  """`(relative path, text)` of every UTF-8 `.py` file under `root`, sorted
  by path; installed packages and bytecode caches are skipped."""
  if not os.path.isdir(root):
    raise CorpusError(f"pycode: the standard library folder {root} of this "
                      "interpreter does not exist; run with a full Python "
                      "installation.")
  paths = []
  for folder, dirs, files in os.walk(root):
    dirs[:] = [d for d in dirs
               if d not in ("site-packages", "dist-packages", "__pycache__")]
    paths += [os.path.relpath(os.path.join(folder, f), root)
              for f in files if f.endswith(".py")]
  out = []
  for rel in sorted(paths):
    with open(os.path.join(root, rel), "rb") as f:
      raw = f.read()
    try:
      out.append((rel, raw.decode("utf-8")))
    except UnicodeDecodeError:
      continue   # a handful of encoding tests in Latin-1 or KOI8-R
  if not out:
    raise CorpusError(f"pycode: no .py file under {root}; run with a full "
                      "Python installation.")
  return tuple(out)


def pycode_split(rel_path: str) -> str:
  """'test' or 'train' by the SHA-256 of a file's relative path."""
  digest = int.from_bytes(hashlib.sha256(rel_path.encode()).digest(), "big")
  return "test" if digest < PYCODE_TEST_FRACTION * 2**256 else "train"


def line_constructs(text: str) -> np.ndarray:
  """Per line (0-based) of `text`, the index in `PYCODE_LABELS` of the
  innermost construct holding it: def (function or method body, its
  signature and decorators too), class (a class body outside its methods),
  import, else other."""
  n_lines = text.count("\n") + 1
  kinds = np.full(n_lines, PYCODE_LABELS.index("other"), np.int32)
  try:
    with _AST_LOCK:
      tree = ast.parse(text)
  except (SyntaxError, ValueError, RecursionError):
    return kinds
  kind_of = {ast.FunctionDef: "def", ast.AsyncFunctionDef: "def",
             ast.ClassDef: "class", ast.Import: "import",
             ast.ImportFrom: "import"}
  # Outer before inner, so an inner construct overwrites its outer one.
  # Only statements can hold these constructs: expressions are not walked.
  stack = [tree]
  while stack:
    node = stack.pop()
    kind = kind_of.get(type(node))
    if kind is not None:
      first = min([node.lineno] + [d.lineno for d in
                                   getattr(node, "decorator_list", [])])
      kinds[first - 1:node.end_lineno] = PYCODE_LABELS.index(kind)
    stack += [c for c in ast.iter_child_nodes(node)
              if isinstance(c, (ast.stmt, ast.excepthandler, ast.match_case))]
  return kinds


@functools.lru_cache(maxsize=None)
def _pycode(root, split, tokenizer_name, seq_len):
  tok = get_tokenizer(tokenizer_name)
  width = seq_len - 2
  files = [(rel, text) for rel, text in stdlib_files(root)
           if pycode_split(rel) == split]
  ids, starts, lengths, file_of, center_char = [], [], [], [], []
  offset = 0
  for f, (_, text) in enumerate(files):
    file_ids, chars = tok.encode(text)
    if not len(file_ids):
      continue
    s, n = _windows(len(file_ids), width)
    ids.append(file_ids)
    starts.append(s + offset)
    lengths.append(n)
    file_of.append(np.full(len(s), f))
    center_char.append(chars[s + n // 2])
    offset += len(file_ids)
  dtype = np.uint16 if tok.vocab_size <= 2**16 else np.int32
  ids = np.concatenate(ids).astype(dtype)
  file_of, center_char = np.concatenate(file_of), np.concatenate(center_char)

  @functools.lru_cache(maxsize=None)
  def lines_of(f):
    text = files[f][1]
    newlines = np.flatnonzero(np.frombuffer(text.encode("utf-32-le"),
                                            np.uint32) == ord("\n"))
    return newlines, line_constructs(text)

  def label(w):
    newlines, kinds = lines_of(int(file_of[w]))
    return kinds[np.searchsorted(newlines, center_char[w])]

  starts, lengths = np.concatenate(starts), np.concatenate(lengths)
  return WindowSource(tok, seq_len, ids, starts, lengths, _order(len(starts)),
                      label, len(PYCODE_LABELS), PYCODE_LABELS)


def pycode(split, *, seq_len=128, tokenizer="bytes", label="construct",
           root=None):
  """The `pycode` corpus (module docstring): windows of `seq_len` tokens."""
  _check_split("pycode", split)
  if label != "construct":
    raise CorpusError(f"pycode: data.label={label!r} is unknown; use "
                      "'construct'.")
  if tokenizer not in ("bytes", "wordpiece"):
    raise CorpusError(f"pycode: data.tokenizer={tokenizer!r} does not fit "
                      "source code; use 'bytes' or 'wordpiece'.")
  _check_seq_len(seq_len)
  _tokenizer(tokenizer)   # a missing MiniLM package is named here
  return _pycode(root or stdlib_dir(), split, tokenizer, seq_len)


def _tokenizer(name) -> Tokenizer:
  try:
    return get_tokenizer(name)
  except ValueError as e:
    raise CorpusError(f"data.tokenizer: {e}") from None


def _check_seq_len(seq_len):
  if seq_len < 3:
    raise CorpusError(f"data.seq_len={seq_len} leaves no room for a token "
                      "between [CLS] and [SEP]; use at least 3.")


# genome ---------------------------------------------------------------------


def genome_path():
  """The chromosome's FASTA in pyrodigal's package data; a one-line error
  naming the fix when pyrodigal is not installed."""
  if importlib.util.find_spec("pyrodigal") is None:
    raise CorpusError("genome: the chromosome ships with the package "
                      f"pyrodigal, which is not installed; {INSTALL}, or "
                      "`pip install pyrodigal==3.7.1`.")
  path = importlib.resources.files("pyrodigal").joinpath(GENOME_FILE)
  if not path.is_file():
    raise CorpusError(f"genome: pyrodigal has no {GENOME_FILE} in its "
                      f"package data; reinstall it ({INSTALL}).")
  return path


def read_fasta(raw: bytes) -> str:
  """The first record's sequence of a (gzipped) FASTA file."""
  if raw[:2] == b"\x1f\x8b":
    raw = gzip.decompress(raw)
  lines = raw.decode("ascii").splitlines()
  starts = [i for i, line in enumerate(lines) if line.startswith(">")]
  if not starts:
    raise CorpusError("genome: the FASTA file has no '>' header line.")
  end = starts[1] if len(starts) > 1 else len(lines)
  return "".join(line.strip() for line in lines[starts[0] + 1:end])


@functools.lru_cache(maxsize=None)
def chromosome() -> str:
  return read_fasta(genome_path().read_bytes())


@functools.lru_cache(maxsize=None)
def gene_coverage() -> np.ndarray:
  """`[2, n]` bool: which bases lie in a gene pyrodigal predicts on the
  forward (row 0) and the reverse (row 1) strand."""
  import pyrodigal  # pylint: disable=g-import-not-at-top
  sequence = chromosome()
  finder = pyrodigal.GeneFinder(meta=False)
  finder.train(sequence)
  cover = np.zeros((2, len(sequence)), bool)
  for gene in finder.find_genes(sequence):
    cover[0 if gene.strand == 1 else 1, gene.begin - 1:gene.end] = True
  return cover


def genome_blocks(n: int, split: str):
  """`(start, end)` of the split's contiguous blocks of an `n`-base
  chromosome."""
  edges = np.linspace(0, n, GENOME_BLOCKS + 1).astype(int)
  test = lambda b: b % GENOME_TEST_EVERY == GENOME_TEST_FIRST
  return [(int(edges[b]), int(edges[b + 1])) for b in range(GENOME_BLOCKS)
          if test(b) == (split == "test")]


def window_label(cover: np.ndarray, scheme: str) -> int:
  """The label of a window from its `[2, w]` gene coverage (module
  docstring)."""
  coding = cover.any(0).mean() >= 0.5
  if scheme == "coding" or not coding:
    return int(coding)
  return 1 if cover[0].sum() >= cover[1].sum() else 2


@functools.lru_cache(maxsize=None)
def _genome(split, seq_len, label):
  tok = get_tokenizer("nucleotides")
  sequence = chromosome()
  width = seq_len - 2
  starts = np.concatenate([np.arange(a, b - width + 1, width)
                           for a, b in genome_blocks(len(sequence), split)])
  ids, _ = tok.encode(sequence)

  @functools.lru_cache(maxsize=None)
  def labels():
    cover = gene_coverage()
    return np.asarray([window_label(cover[:, s:s + width], label)
                       for s in starts], np.int32)

  names = GENOME_LABELS[label]
  return WindowSource(tok, seq_len, ids.astype(np.uint8), starts,
                      np.full(len(starts), width), _order(len(starts)),
                      lambda w: labels()[w], len(names), names)


def genome(split, *, seq_len=128, tokenizer="nucleotides", label="coding"):
  """The `genome` corpus (module docstring): windows of `seq_len - 2`
  bases."""
  _check_split("genome", split)
  if tokenizer != "nucleotides":
    raise CorpusError(f"genome: data.tokenizer={tokenizer!r} does not fit "
                      "DNA; use 'nucleotides'.")
  if label not in GENOME_LABELS:
    raise CorpusError(f"genome: data.label={label!r} is unknown; use one of "
                      f"{sorted(GENOME_LABELS)}.")
  _check_seq_len(seq_len)
  genome_path()   # a missing package is named before anything else runs
  return _genome(split, seq_len, label)


# wordnet --------------------------------------------------------------------


def wordnet_split(key: str) -> str:
  """'test' or 'train' by the SHA-256 of a synset's `"<file>:<offset>"`."""
  digest = int.from_bytes(hashlib.sha256(key.encode()).digest(), "big")
  return "test" if digest < WORDNET_TEST_FRACTION * 2**256 else "train"


def parse_wordnet_line(line: str):
  """`(offset, pos label, gloss)` of one synset line of a WordNet data file,
  or None for the license header (lines that start with spaces)."""
  if line.startswith(" ") or not line.strip():
    return None
  head, _, gloss = line.partition("|")
  fields = head.split()
  if len(fields) < 4 or fields[2] not in WORDNET_POS:
    raise CorpusError(f"wordnet: the line {line[:40]!r}... is not a WordNet "
                      "synset; reinstall wordnet-base (`make data`).")
  return fields[0], WORDNET_POS[fields[2]], gloss.strip()


@functools.lru_cache(maxsize=None)
def wordnet_synsets(root: str) -> tuple[tuple[str, int, str], ...]:
  """`(key, pos label, gloss)` of every synset in `root`'s data files, in
  file order (noun, verb, adj, adv), then line order."""
  paths = [os.path.join(root, f"data.{f}") for f in WORDNET_FILES]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise CorpusError(f"wordnet: {missing[0]} does not exist; "
                      + MAKE_DATA.format("wordnet-base") + ".")
  out = []
  for name, path in zip(WORDNET_FILES, paths):
    with open(path, encoding="utf-8", errors="replace") as f:
      for line in f:
        parsed = parse_wordnet_line(line)
        if parsed and parsed[2]:
          out.append((f"{name}:{parsed[0]}", parsed[1], parsed[2]))
  if not out:
    raise CorpusError(f"wordnet: no synset in {root}'s data files; "
                      "reinstall wordnet-base (`make data`).")
  return tuple(out)


@functools.lru_cache(maxsize=None)
def _wordnet(root, split, tokenizer_name, seq_len):
  tok = get_tokenizer(tokenizer_name)
  synsets = [s for s in wordnet_synsets(root) if wordnet_split(s[0]) == split]
  # One encode over all glosses, one per line; each token goes to the gloss
  # holding its first character, and the newlines themselves are dropped.
  text = "\n".join(g for _, _, g in synsets)
  first_char = np.cumsum([0] + [len(g) + 1 for _, _, g in synsets[:-1]])
  ids, chars = tok.encode(text)
  keep = np.frombuffer(text.encode("utf-32-le"), np.uint32)[chars] != ord("\n")
  ids, chars = ids[keep], chars[keep]
  gloss_of = np.searchsorted(first_char, chars, side="right") - 1
  counts = np.bincount(gloss_of, minlength=len(synsets))
  token_starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  has = counts > 0
  labels = np.asarray([pos for _, pos, _ in synsets], np.int32)[has]
  starts = token_starts[has]
  lengths = np.minimum(counts[has], seq_len - 2)
  dtype = np.uint16 if tok.vocab_size <= 2**16 else np.int32
  return WindowSource(tok, seq_len, ids.astype(dtype), starts, lengths,
                      _order(len(starts)), lambda w: labels[w],
                      len(WORDNET_LABELS), WORDNET_LABELS)


def wordnet(split, *, seq_len=128, tokenizer="bytes", label="pos", root=None):
  """The `wordnet` corpus (module docstring): one window per gloss."""
  _check_split("wordnet", split)
  if label != "pos":
    raise CorpusError(f"wordnet: data.label={label!r} is unknown; use "
                      "'pos'.")
  if tokenizer not in ("bytes", "wordpiece"):
    raise CorpusError(f"wordnet: data.tokenizer={tokenizer!r} does not fit "
                      "English text; use 'bytes' or 'wordpiece'.")
  _check_seq_len(seq_len)
  _tokenizer(tokenizer)
  return _wordnet(root or WORDNET_DIR, split, tokenizer, seq_len)


# species --------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def species_genomes(root: str):
  """`{split: ((species index, file path), ...)}` of the ragout-examples
  genomes under `root`; the first genome of each species (sorted by file
  name) is test."""
  fix = MAKE_DATA.format("ragout-examples")
  if not os.path.isdir(root):
    raise CorpusError(f"species: {root} does not exist; {fix}.")
  names = sorted(d for d in os.listdir(root)
                 if os.path.isdir(os.path.join(root, d, "references")))
  out = {"train": [], "test": []}
  species = []
  for name in names:
    folder = os.path.join(root, name, "references")
    files = sorted(f for f in os.listdir(folder)
                   if f.endswith((".fasta.gz", ".fasta")))
    if not files:
      continue
    if len(files) < 2:
      raise CorpusError(f"species: {folder} holds one genome, and one per "
                        f"species is held out for test; {fix}.")
    for i, f in enumerate(files):
      out["test" if i == 0 else "train"].append(
          (len(species), os.path.join(folder, f)))
    species.append(name)
  if len(species) < 2:
    raise CorpusError(f"species: {root} holds the genomes of "
                      f"{len(species)} species, fewer than 2; {fix}.")
  return tuple(species), {k: tuple(v) for k, v in out.items()}


def fasta_records(raw: bytes) -> list[str]:
  """Every record's sequence of a (gzipped) FASTA file."""
  if raw[:2] == b"\x1f\x8b":
    raw = gzip.decompress(raw)
  records = raw.decode("ascii", errors="replace").split(">")[1:]
  if not records:
    raise CorpusError("species: a FASTA file has no '>' header line.")
  return ["".join(r.splitlines()[1:]) for r in records]


@functools.lru_cache(maxsize=None)
def _species(root, split, seq_len):
  tok = get_tokenizer("nucleotides")
  names, genomes = species_genomes(root)
  width = seq_len - 2
  ids, starts, labels, offset = [], [], [], 0
  for species_index, path in genomes[split]:
    with open(path, "rb") as f:
      records = fasta_records(f.read())
    for record in records:
      try:
        record_ids, _ = tok.encode(record)
      except ValueError as e:
        raise CorpusError(f"species: {path}: {e}") from None
      s = np.arange(0, len(record_ids) - width + 1, width)
      ids.append(record_ids.astype(np.uint8))
      starts.append(s + offset)
      labels.append(np.full(len(s), species_index, np.int32))
      offset += len(record_ids)
  starts, labels = np.concatenate(starts), np.concatenate(labels)
  return WindowSource(tok, seq_len, np.concatenate(ids), starts,
                      np.full(len(starts), width), _order(len(starts)),
                      lambda w: labels[w], len(names), names)


def species(split, *, seq_len=128, tokenizer="nucleotides", label="species",
            root=None):
  """The `species` corpus (module docstring): windows of `seq_len - 2`
  bases, the test split from held-out genomes."""
  _check_split("species", split)
  if tokenizer != "nucleotides":
    raise CorpusError(f"species: data.tokenizer={tokenizer!r} does not fit "
                      "DNA; use 'nucleotides'.")
  if label != "species":
    raise CorpusError(f"species: data.label={label!r} is unknown; use "
                      "'species'.")
  _check_seq_len(seq_len)
  return _species(root or RAGOUT_DIR, split, seq_len)


CORPORA = {"pycode": (pycode, "bytes", "construct"),
           "genome": (genome, "nucleotides", "coding"),
           "wordnet": (wordnet, "bytes", "pos"),
           "species": (species, "nucleotides", "species")}


def get_corpus(name, split, *, seq_len=128, tokenizer=None, label=None):
  """The sequence source `name` (a key of `CORPORA`), with the corpus'
  default tokenizer and label where they are None."""
  fn, default_tokenizer, default_label = CORPORA[name]
  return fn(split, seq_len=seq_len, tokenizer=tokenizer or default_tokenizer,
            label=label or default_label)


def corpus_tokenizer(data_config) -> Tokenizer:
  """The tokenizer of a config's `data` section (its corpus' default when
  `data.tokenizer` is not set)."""
  return _tokenizer(data_config.get("tokenizer") or
                    CORPORA[data_config.name][1])
