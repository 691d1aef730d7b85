"""Tokenizers for sequence corpora: bytes, nucleotides, MiniLM's WordPiece.

Every tokenizer has the same attributes, so corpora and tasks never ask
which one they hold:

- `vocab_size`, and the ids of the specials `pad_id`, `cls_id`, `sep_id`,
  `mask_id`;
- `special_ids`: the ids a masking policy must never pick (pad, [CLS],
  [SEP], and [MASK] itself; [UNK] too where there is one);
- `encode(text) -> (ids int32 [n], starts int64 [n])`: the ids without any
  special, and the character offset in `text` where each token starts (a
  corpus maps a token back to its line with it);
- `decode(ids) -> str`, skipping specials;
- `check(ids)`: a one-line ValueError for an id outside `[0, vocab_size)`.

Names (`get_tokenizer`): "bytes" (UTF-8 bytes 0-255, then the specials),
"nucleotides" (A, C, G, T, N, after the specials) and "wordpiece" (the
uncased WordPiece of all-MiniLM-L6-v2, read from its installed
`tokenizer.json` with the `tokenizers` package).
"""
from __future__ import annotations

import functools

import numpy as np

from maskmodel.models import seq as seq_lib


class Tokenizer:
  """Shared attributes and checks; subclasses define the vocabulary."""
  name = ""
  vocab_size = 0
  pad_id = cls_id = sep_id = mask_id = -1

  @property
  def special_ids(self) -> tuple[int, ...]:
    return (self.pad_id, self.cls_id, self.sep_id, self.mask_id)

  def check(self, ids):
    seq_lib.check_token_ids(ids, self.vocab_size)

  def window(self, ids, seq_len: int):
    """`([CLS] ids [SEP])` right-padded to `seq_len`: `(tokens int32 [L],
    mask bool [L])`, mask True on real tokens. A window that does not fit
    is a one-line ValueError."""
    ids = np.asarray(ids)
    if len(ids) + 2 > seq_len:
      raise ValueError(f"{len(ids)} tokens and [CLS], [SEP] do not fit a "
                       f"window of seq_len={seq_len}; cut them to "
                       f"{seq_len - 2}.")
    self.check(ids)
    tokens = np.full(seq_len, self.pad_id, np.int32)
    tokens[0], tokens[1:len(ids) + 1], tokens[len(ids) + 1] = (
        self.cls_id, ids, self.sep_id)
    mask = np.zeros(seq_len, bool)
    mask[:len(ids) + 2] = True
    return tokens, mask


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes as ids 0-255; [PAD], [CLS], [SEP], [MASK] are 256-259."""
  name = "bytes"
  vocab_size = 260
  pad_id, cls_id, sep_id, mask_id = 256, 257, 258, 259

  def encode(self, text: str):
    raw = np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
    if text.isascii():
      return raw, np.arange(len(raw))
    widths = [len(c.encode("utf-8")) for c in text]
    return raw, np.repeat(np.arange(len(text)), widths)

  def decode(self, ids) -> str:
    ids = np.asarray(ids)
    return bytes(ids[ids < 256].astype(np.uint8).tolist()).decode(
        "utf-8", errors="replace")


class NucleotideTokenizer(Tokenizer):
  """A, C, G, T and N (any other IUPAC ambiguity code) after the specials
  [PAD], [CLS], [SEP], [MASK] (0-3). Lower case (soft-masked repeats in
  FASTA files) reads as upper case; anything else is a ValueError."""
  name = "nucleotides"
  vocab_size = 9
  pad_id, cls_id, sep_id, mask_id = 0, 1, 2, 3
  BASES = "ACGTN"

  @functools.cached_property
  def _table(self):
    table = np.full(256, -1, np.int32)
    for i, base in enumerate(self.BASES):
      table[ord(base)] = table[ord(base.lower())] = 4 + i
    for code in "RYSWKMBDHV":   # IUPAC ambiguity codes read as N
      table[ord(code)] = table[ord(code.lower())] = 4 + self.BASES.index("N")
    return table

  def encode(self, text: str):
    raw = np.frombuffer(text.encode("ascii", errors="replace"), np.uint8)
    ids = self._table[raw]
    if (ids < 0).any():
      i = int(np.argmax(ids < 0))
      raise ValueError(f"character {text[i]!r} at position {i} is not a "
                       "nucleotide (A, C, G, T or an IUPAC code); remove it "
                       "from the sequence.")
    return ids, np.arange(len(ids))

  def decode(self, ids) -> str:
    ids = np.asarray(ids)
    return "".join(self.BASES[i - 4] for i in ids.tolist() if i >= 4)


class WordPieceTokenizer(Tokenizer):
  """all-MiniLM-L6-v2's uncased WordPiece (BERT's), from the installed
  package's `tokenizer.json`; its own [PAD] 0, [UNK] 100, [CLS] 101, [SEP]
  102, [MASK] 103. Lossy by design: lower case, whitespace dropped."""
  name = "wordpiece"

  def __init__(self):
    import tokenizers  # pylint: disable=g-import-not-at-top
    from maskmodel.models import minilm  # pylint: disable=g-import-not-at-top
    self._tok = tokenizers.Tokenizer.from_file(
        str(minilm.minilm_dir() / "tokenizer.json"))
    self._tok.no_padding()
    self._tok.no_truncation()   # the corpus cuts its own windows
    self.vocab_size = self._tok.get_vocab_size()
    ids = {t: self._tok.token_to_id(t)
           for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")}
    self.pad_id, self.cls_id, self.sep_id, self.mask_id, self.unk_id = (
        ids.values())

  @property
  def special_ids(self):
    return super().special_ids + (self.unk_id,)

  def encode(self, text: str):
    e = self._tok.encode(text, add_special_tokens=False)
    return (np.asarray(e.ids, np.int32),
            np.asarray([start for start, _ in e.offsets], np.int64))

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in np.asarray(ids)],
                            skip_special_tokens=True)


TOKENIZERS = {"bytes": ByteTokenizer, "nucleotides": NucleotideTokenizer,
              "wordpiece": WordPieceTokenizer}


@functools.lru_cache(maxsize=None)
def get_tokenizer(name: str) -> Tokenizer:
  """The tokenizer `name`, built once per process."""
  if name not in TOKENIZERS:
    raise ValueError(f"tokenizer {name!r} is unknown; use one of "
                     f"{sorted(TOKENIZERS)}.")
  try:
    return TOKENIZERS[name]()
  except FileNotFoundError as e:   # the MiniLM package is not installed
    raise ValueError(str(e)) from None
