"""A key-value retrieval probe for causal models, built from real code.

MEAP (Zhuang et al. 2025, Sec. 4.1) claims better retrieval of key
information from the context, and the most at its middle ("lost in the
middle"). This probe asks for it in the language the `pycode` models learn:
the Python standard library's own assignments.

Facts: every one-line assignment `NAME = VALUE` of a file in pycode's
*test* split (no file of it is pretrained on), found by the `ast` module,
with VALUE a number or a string literal (not None / True / False, which a
model guesses without reading anything), the line at most
`max_line` characters, ASCII, with no comment. The line is kept as the
file writes it (`LAST='last'`, `framerate = 11025`).

An example is a window `[CLS] fact_1\\n ... fact_k\\n NAME = VALUE [SEP]`:
`num_facts` facts with distinct names, drawn from the pool, then a query
that repeats one of them, the fact at `position` (0 is the first line).
The query repeats that line's own spacing up to the value, so what is left
to predict is the value's tokens alone. The score is the accuracy of
greedy next-token prediction on them, teacher-forced (each value token
given the tokens before it), and exact match (all of a value's tokens).

`closed_book=True` builds the control: the same windows with the queried
fact's line replaced by another fact, so the value is nowhere in context;
what a model scores there it scores without retrieval.

Everything is drawn from a seeded `numpy` generator, so the same arguments
give the same examples.
"""
from __future__ import annotations

import ast
import functools

import numpy as np

from maskmodel.data import sequences
from maskmodel.data.tokenizers import get_tokenizer


class ProbeError(ValueError):
  """A probe that cannot be built as asked."""


def assignments(text: str, max_line: int) -> list[tuple[str, str, str]]:
  """`(name, line, value)` of the one-line `NAME = number-or-string`
  assignments of a module's source (module docstring), in source order;
  `line` stripped of its indentation, `value` its source text. Empty for a
  file that does not parse."""
  try:
    with sequences._AST_LOCK:  # pylint: disable=protected-access
      tree = ast.parse(text)
  except (SyntaxError, ValueError, RecursionError):
    return []
  lines = text.split("\n")
  out = []
  for node in ast.walk(tree):
    if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and
            isinstance(node.targets[0], ast.Name) and
            isinstance(node.value, ast.Constant) and
            node.lineno == node.end_lineno):
      continue
    value = node.value.value
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
      continue
    source = lines[node.lineno - 1]
    line = source.strip()
    if len(line) > max_line or not line.isascii() or "#" in line or ";" in line:
      continue
    # ASCII, so the AST's byte offsets are character offsets.
    value_text = source[node.value.col_offset:node.value.end_col_offset]
    if not value_text or not line.endswith(value_text):
      continue
    out.append((node.targets[0].id, line, value_text))
  return sorted(out, key=lambda f: text.find(f[1]))


@functools.lru_cache(maxsize=None)
def fact_pool(max_line: int = 24, root: str | None = None
              ) -> tuple[tuple[str, str, str], ...]:
  """Every fact of pycode's test split, one per distinct line, in file
  order (module docstring)."""
  seen, pool = set(), []
  for rel, text in sequences.stdlib_files(root or sequences.stdlib_dir()):
    if sequences.pycode_split(rel) != "test":
      continue
    for fact in assignments(text, max_line):
      if fact[1] not in seen:
        seen.add(fact[1])
        pool.append(fact)
  return tuple(pool)


def kv_examples(*, num_examples: int, num_facts: int = 4, seq_len: int = 128,
                tokenizer: str = "bytes", max_line: int = 24, seed: int = 0,
                closed_book: bool = False, pool=None) -> dict:
  """The probe's windows (module docstring), as arrays:

    tokens   int32 [N, seq_len]   [CLS] facts, query, value, [SEP], padding
    mask     bool  [N, seq_len]   True on real tokens
    targets  bool  [N, seq_len]   True on the value's tokens in the query
    position int32 [N]            which fact the query repeats (0-based)

  The queried position cycles through `0..num_facts-1`, so every position
  has the same number of examples (give a multiple of `num_facts`).
  """
  if num_facts < 2:
    raise ProbeError(f"num_facts={num_facts}: retrieval needs at least 2 "
                     "facts in the window; use 2 or more.")
  if num_examples < 1 or num_examples % num_facts:
    raise ProbeError(f"num_examples={num_examples} must be a positive "
                     f"multiple of num_facts={num_facts}, so every position "
                     "is asked as often.")
  tok = get_tokenizer(tokenizer)
  pool = fact_pool(max_line) if pool is None else tuple(pool)
  need = (num_facts + 1) * (max_line + 1) + 2
  if need > seq_len:
    raise ProbeError(f"{num_facts} facts of up to {max_line} characters and "
                     f"the query need {need} tokens, more than seq_len="
                     f"{seq_len}; use fewer facts or a shorter max_line.")
  if len({f[0] for f in pool}) < num_facts + 1:
    raise ProbeError(f"the fact pool has {len(pool)} facts, too few distinct "
                     f"names for {num_facts} facts and a stand-in.")
  rng = np.random.default_rng(seed)
  tokens = np.full((num_examples, seq_len), tok.pad_id, np.int32)
  mask = np.zeros((num_examples, seq_len), bool)
  targets = np.zeros((num_examples, seq_len), bool)
  position = np.arange(num_examples, dtype=np.int32) % num_facts
  for i in range(num_examples):
    facts = _distinct_names(rng, pool, num_facts + 1)
    shown, stand_in = facts[:num_facts], facts[num_facts]
    _, line, value = shown[position[i]]
    if closed_book:
      shown = list(shown)
      shown[position[i]] = stand_in
    context = "".join(f[1] + "\n" for f in shown) + line[:-len(value)]
    ctx_ids, value_ids = tok.encode(context)[0], tok.encode(value)[0]
    ids = np.concatenate([ctx_ids, value_ids])
    if len(ids) + 2 > seq_len:   # a word-piece tokenizer may run longer
      raise ProbeError(f"an example needs {len(ids) + 2} tokens, more than "
                       f"seq_len={seq_len}; use fewer facts.")
    tokens[i], mask[i] = tok.window(ids, seq_len)
    start = 1 + len(ctx_ids)
    targets[i, start:start + len(value_ids)] = True
  return {"tokens": tokens, "mask": mask, "targets": targets,
          "position": position}


def _distinct_names(rng, pool, n):
  """`n` facts of the pool with distinct names, uniformly at random."""
  out, names = [], set()
  for j in rng.permutation(len(pool)):
    if pool[j][0] not in names:
      names.add(pool[j][0])
      out.append(pool[j])
      if len(out) == n:
        return out
  raise ProbeError(f"the fact pool has fewer than {n} distinct names.")


def retrieval_scores(predicted, tokens, targets, position) -> dict:
  """Scores of next-token predictions on the probe.

  `predicted [N, L]`: the model's argmax at each position, the prediction
  of the *next* token (`predicted[:, t]` guesses `tokens[:, t + 1]`).
  Returns token accuracy over all value tokens, exact match over values,
  and both per queried position (`token_accuracy_at`, `exact_match_at`,
  lists indexed by position)."""
  predicted, tokens = np.asarray(predicted), np.asarray(tokens)
  targets, position = np.asarray(targets, bool), np.asarray(position)
  if targets[:, 0].any():
    raise ProbeError("a target at position 0 has no token before it.")
  if not targets.any(-1).all():
    raise ProbeError("an example has no target token.")
  hit = np.zeros_like(targets)
  hit[:, 1:] = predicted[:, :-1] == tokens[:, 1:]
  correct = (hit & targets).sum(-1)
  count = targets.sum(-1)
  exact = correct == count
  positions = range(int(position.max()) + 1)
  return {
      "token_accuracy": float(correct.sum() / count.sum()),
      "exact_match": float(exact.mean()),
      "token_accuracy_at": [float(correct[position == p].sum() /
                                  count[position == p].sum()) for p in positions],
      "exact_match_at": [float(exact[position == p].mean()) for p in positions],
      "examples": int(len(tokens)),
  }
