"""Token reduction inside a real pretrained transformer: all-MiniLM-L6-v2.

Runs ToMe, and the other reducers of `maskmodel.tokens` that need no [CLS]
attention (`maskmodel.models.seq.SEQ_REDUCERS`: tome, pitome, atc,
divprune, dart), inside the six post-LN blocks of the installed
all-MiniLM-L6-v2 (`maskmodel.models.minilm`), off the shelf, at ToMe's
constant schedules r (tokens removed per block). For each method and r it
records, against the unreduced model on the same inputs:

- the cosine similarity of every text's sentence embedding (mean pooled,
  L2-normalized) to the unreduced one: mean and minimum;
- nearest-neighbour agreement: the fraction of texts whose nearest other
  text (cosine, among all texts of the setting) is the same as without
  reduction;
- throughput (texts/s of the jitted, warmed-up encoder on one batch) and
  the speed-up over the unreduced encoder. The encoders are timed
  round-robin, so a change in the machine's load hits all of them alike;
  the speed-up is the median over rounds of each round's ratio.

Every method runs at the same tokens kept per block (ToMe's cap at half of
the tokens per block never binds at these r), with proportional attention
as its official code has it off the shelf (`maskmodel.tokens.REDUCERS`: on
for ToMe and ATC); ToMe also runs with it off.

Texts, offline and deterministic: the prose of the Python reference
documentation that the interpreter ships (`pydoc_data.topics`, the text of
`help()` on statements and operators). Prose paragraphs are those whose
lines start without indentation (grammar rules and code examples are
indented) and are no heading; topics in sorted order.
- passages: each topic's prose tokenized with MiniLM's WordPiece and cut
  into consecutive windows of 126 word pieces, each framed by [CLS] and
  [SEP]: 128 tokens, no padding (the encoder gets no mask);
- sentences: the prose split at sentence ends, those of 12 to 32 tokens
  ([CLS] and [SEP] included), padded to 32; the padding exercises the
  model's handling of pads (`seq.reduce_block_tokens`).
Each setting takes an evenly spaced subset (`--passages`, `--sentences`).

  python experiments/sequences/run.py --out workdirs/sequences

`--smoke` runs a few texts, one r and one round (for tests).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import platform
import re
import shlex
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

try:
  import maskmodel  # noqa: F401  pylint: disable=unused-import
except ImportError:  # Run from a checkout without installing.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from maskmodel import config as config_lib  # pylint: disable=g-import-not-at-top
from maskmodel import tokens
from maskmodel.models import minilm, seq

import ml_collections  # pylint: disable=g-import-not-at-top,g-bad-import-order

SETTINGS = {
    # name: (tokens per text, r values)
    "passages": (128, (4, 8, 12, 16)),
    "sentences": (32, (1, 2, 3, 4)),
}
SENTENCE_MIN_TOKENS = 12
HEADING = re.compile(r"^[*=\-~^]{3,}$")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"(])")


def prose_paragraphs():
  """`[(topic, paragraph)]`: the unindented, non-heading paragraphs of
  `pydoc_data.topics`, lines joined by spaces, topics in sorted order."""
  from pydoc_data.topics import topics  # pylint: disable=g-import-not-at-top
  out = []
  for topic in sorted(topics):
    for block in re.split(r"\n\s*\n", topics[topic]):
      lines = block.split("\n")
      if not block.strip() or any(l[:1].isspace() for l in lines if l):
        continue
      if any(HEADING.match(l.strip()) for l in lines):
        continue
      out.append((topic, " ".join(l.strip() for l in lines)))
  return out


def evenly(items, count):
  """`count` items at evenly spaced indices (all when there are fewer)."""
  if count >= len(items):
    return list(items)
  idx = np.linspace(0, len(items) - 1, count).round().astype(int)
  return [items[i] for i in idx]


def raw_tokenizer():
  """MiniLM's WordPiece tokenizer with no truncation and no padding."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  tok = tokenizers.Tokenizer.from_file(
      str(minilm.minilm_dir() / "tokenizer.json"))
  tok.no_truncation()
  tok.no_padding()
  return tok


def passages(tok, paragraphs, length, count):
  """`(ids [P, length] int32, texts)`: windows of each topic's word pieces."""
  cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
  by_topic = {}
  for topic, text in paragraphs:
    by_topic.setdefault(topic, []).extend(
        tok.encode(text, add_special_tokens=False).ids)
  windows = []
  for topic in sorted(by_topic):
    ids = by_topic[topic]
    for start in range(0, len(ids) - (length - 2) + 1, length - 2):
      windows.append([cls] + ids[start:start + length - 2] + [sep])
  windows = evenly(windows, count)
  texts = [tok.decode(w[1:-1]) for w in windows]
  return np.asarray(windows, np.int32), texts


def sentences(tok, paragraphs, length, count):
  """`(batch, texts)`: sentences of 12..`length` tokens, padded to
  `length` (`batch` as `minilm.tokenize` gives it)."""
  texts = []
  for _, text in paragraphs:
    for s in SENTENCE_END.split(text):
      n = len(tok.encode(s).ids)
      if SENTENCE_MIN_TOKENS <= n <= length:
        texts.append(s)
  texts = evenly(texts, count)
  _, _, st_tok, _ = minilm.load_minilm()
  batch = minilm.tokenize(texts, st_tok, 30522, multiple=length)
  assert batch["ids"].shape[1] == length, batch["ids"].shape
  return batch, texts


@functools.partial(jax.jit, static_argnums=0)
def embed(model, params, ids, mask, types):
  """Mean-pooled, L2-normalized embeddings (sentence-transformers')."""
  pooled = model.apply({"params": params}, ids, mask, types)["pooled"]
  return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True),
                              1e-12)


def plan(method, r, num_tokens, depth, prop_attn=None):
  """The model's `SeqTokenReduction` for constant r, through the config."""
  m = ml_collections.ConfigDict(dict(depth=depth))
  m.token_reduction = config_lib.token_reduction(
      method, ("r", r), prop_attn=prop_attn, off_the_shelf=True)
  return seq.seq_token_reduction(m, num_tokens)


def embed_all(model, params, data, batch_size):
  out = []
  for s in range(0, len(data["ids"]), batch_size):
    part = {k: (None if v is None else v[s:s + batch_size])
            for k, v in data.items()}
    out.append(np.asarray(embed(model, params, part["ids"], part["mask"],
                                part["types"])))
  return np.concatenate(out)


def nearest(emb):
  sim = emb @ emb.T
  np.fill_diagonal(sim, -np.inf)
  return sim.argmax(1)


def timed_rounds(fns, rounds):
  """Seconds of each warmed-up fn per round, run round-robin."""
  for fn in fns:
    fn().block_until_ready()
  times = [[] for _ in fns]
  for _ in range(rounds):
    for i, fn in enumerate(fns):
      t0 = time.perf_counter()
      fn().block_until_ready()
      times[i].append(time.perf_counter() - t0)
  return times


def run_setting(name, length, rs, model, params, data, methods, batch_size,
                rounds):
  base_emb = embed_all(model, params, data, batch_size)
  base_nn = nearest(base_emb)
  configs = [("none", 0, False)]
  for r in rs:
    for method in methods:
      configs.append((method, r, None))
    if "tome" in methods:
      configs.append(("tome", r, False))
  rows, fns = [], []
  timing = {k: (None if v is None else v[:batch_size]) for k, v in data.items()}
  for method, r, prop in configs:
    if method == "none":
      m, keep, prop_attn = model, [length] * model.depth, False
    else:
      p = plan(method, r, length, model.depth, prop)
      m, keep, prop_attn = model.clone(token_reduction=p), list(p.keep), p.prop_attn
      assert keep == tokens.tokens_per_layer(("r", r), model.depth, length,
                                             class_token=False), keep
    t0 = time.perf_counter()
    emb = base_emb if method == "none" else embed_all(m, params, data,
                                                      batch_size)
    cos = (emb * base_emb).sum(1)
    rows.append(dict(setting=name, method=method, r=r, prop_attn=prop_attn,
                     keep=keep, cos_mean=float(cos.mean()),
                     cos_min=float(cos.min()),
                     nn_agreement=float((nearest(emb) == base_nn).mean())))
    fns.append(functools.partial(embed, m, params, timing["ids"],
                                 timing["mask"], timing["types"]))
    print(f"{name} {method} r={r} prop_attn={prop_attn}: cos "
          f"{rows[-1]['cos_mean']:.4f} (min {rows[-1]['cos_min']:.4f}), NN "
          f"{rows[-1]['nn_agreement']:.3f}  [{time.perf_counter() - t0:.1f}s]",
          flush=True)
  times = timed_rounds(fns, rounds)
  n = len(timing["ids"])
  for row, t in zip(rows, times):
    ratios = [b / x for b, x in zip(times[0], t)]
    row.update(texts_per_s=n / statistics.median(t),
               speedup=statistics.median(ratios),
               speedup_rounds=[round(v, 3) for v in ratios])
  return rows


def label(row):
  if row["method"] == "none":
    return "none"
  official = tokens.REDUCERS[row["method"]].default_prop_attn(True)
  if row["prop_attn"] == official:
    return row["method"]
  return row["method"] + (" (prop. attn on)" if row["prop_attn"]
                          else " (prop. attn off)")


def write_md(path, rows, meta):
  lines = [f"# all-MiniLM-L6-v2 with token reduction (off the shelf)", "",
           f"Command: `{meta['command']}`  ", f"Wall time: {meta['wall_s']:.0f} s "
           f"on {meta['machine']}  ", f"Python {meta['python']} (its "
           f"pydoc_data), jax {meta['jax']}. Timing: {meta['rounds']} "
           f"round-robin rounds over a batch of {meta['batch_size']}; speed-up "
           "= median of the per-round ratios.", ""]
  for name, (length, _) in SETTINGS.items():
    sub = [r for r in rows if r["setting"] == name]
    if not sub:
      continue
    lines += [f"## {name}: {meta['counts'][name]} texts of {length} tokens"
              + (" (padded)" if name == "sentences" else ""), "",
              "| method | r | tokens after each block | cos to unreduced "
              "(mean) | cos (min) | NN agreement | texts/s | speed-up |",
              "|---|---|---|---|---|---|---|---|"]
    for r in sub:
      lines.append(
          f"| {label(r)} | {r['r']} | {','.join(map(str, r['keep']))} | "
          f"{r['cos_mean']:.4f} | {r['cos_min']:.4f} | "
          f"{r['nn_agreement']:.3f} | {r['texts_per_s']:.1f} | "
          f"{r['speedup']:.2f} |")
    lines.append("")
  pathlib.Path(path).write_text("\n".join(lines))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--passages", type=int, default=128)
  parser.add_argument("--sentences", type=int, default=256)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--methods", default=",".join(seq.SEQ_REDUCERS))
  parser.add_argument("--smoke", action="store_true",
                      help="8 texts per setting, r = the first value, 1 round")
  args = parser.parse_args(argv)
  methods = [m for m in args.methods.split(",") if m]
  bad = sorted(set(methods) - set(seq.SEQ_REDUCERS))
  if bad:
    parser.error(f"--methods {bad} are not among {list(seq.SEQ_REDUCERS)}.")
  if args.smoke:
    args.passages = args.sentences = args.batch_size = 8
    args.rounds = 1
  start = time.perf_counter()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  model, params, _, _ = minilm.load_minilm()
  tok = raw_tokenizer()
  paragraphs = prose_paragraphs()
  rows, counts = [], {}
  for name, (length, rs) in SETTINGS.items():
    if name == "passages":
      ids, texts = passages(tok, paragraphs, length, args.passages)
      data = dict(ids=ids, mask=None, types=np.zeros_like(ids))
    else:
      batch, texts = sentences(tok, paragraphs, length, args.sentences)
      data = dict(ids=batch["ids"], mask=batch["mask"],
                  types=batch["token_types"])
    counts[name] = len(texts)
    rows += run_setting(name, length, rs[:1] if args.smoke else rs, model,
                        params, data, methods, args.batch_size, args.rounds)
  meta = dict(
      command="python experiments/sequences/run.py " + " ".join(
          "OUT" if a == args.out else shlex.quote(a)
          for a in (argv if argv is not None else sys.argv[1:])),
      wall_s=time.perf_counter() - start, python=platform.python_version(),
      jax=jax.__version__,
      machine=f"{os.cpu_count()} CPU cores shared with other jobs",
      rounds=args.rounds, batch_size=args.batch_size, counts=counts,
      paragraphs=len(paragraphs))
  (out / "results.json").write_text(json.dumps(dict(meta=meta, rows=rows),
                                               indent=1))
  write_md(out / "results.md", rows, meta)
  print(f"wrote {out / 'results.json'} and results.md in {meta['wall_s']:.0f} s")


if __name__ == "__main__":
  main()
