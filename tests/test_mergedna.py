"""MergeDNA: the local encoder's source map (contiguous groups inside one
window, L/N in the paper's [0.4, 0.6]), the unmerge back to the bases,
AMTM's 1/g^2 sampling, the frozen tokenizer of the second loss term,
one-line errors, and training on 8 devices with a bit-exact resume."""
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, assert_resumes_bit_exactly, load_config
from maskmodel.config import ConfigError
from maskmodel.data import sequences
from maskmodel.models import mergedna as net_lib
from maskmodel.tasks import get_task
from maskmodel.tasks import mergedna

CONFIG = os.path.join(ROOT, "configs", "mergedna", "genome_tiny.py")


@pytest.fixture(scope="module")
def genome_batch():
  """8 real 128-token genome windows ([CLS], 126 bases, [SEP])."""
  src = sequences.get_corpus("genome", "train", seq_len=128)
  return jnp.asarray(np.stack([src[i]["tokens"] for i in range(8)]))


@pytest.fixture(scope="module")
def full_task():
  """The tiny config's task (seq_len 128, windows of 16, keeps 7/8/9)."""
  return get_task(load_config(CONFIG))


@pytest.fixture(scope="module")
def tokenized(full_task, genome_batch):
  """Per compression level: (L, z, size, source) of the local encoder with
  one set of params (the params are the same for every level)."""
  nets = full_task.levels
  params = jax.jit(nets[0].local_encoder.init)(jax.random.PRNGKey(0),
                                               genome_batch)
  return [(net.num_latent,) + tuple(jax.device_get(
      jax.jit(net.local_encoder.apply)(params, genome_batch)))
          for net in nets]


def test_compressed_length_is_in_the_papers_range(full_task, tokenized):
  n = full_task.seq_len
  lengths = [l for l, *_ in tokenized]
  assert lengths == [56, 64, 72]
  for l, z, size, source in tokenized:
    assert 0.4 * n <= l <= 0.6 * n
    assert z.shape == (8, l, 64) and size.shape == (8, l)
    assert source.shape == (8, n) and source.min() == 0 and source.max() == l - 1


def test_source_map_partitions_bases_into_contiguous_groups_in_windows(
    tokenized):
  window = 16
  for l, _, size, source in tokenized:
    per_window = l // (128 // window)
    for b in range(8):
      # Tokens come in sequence order, so a token's bases are one run.
      assert (np.diff(source[b]) >= 0).all() and (np.diff(source[b]) <= 1).all()
      counts = np.bincount(source[b], minlength=l)
      assert (counts >= 1).all()
      np.testing.assert_array_equal(size[b], counts)   # sizes count bases
      first = np.searchsorted(source[b], np.arange(l))
      last = first + counts - 1
      assert (first // window == last // window).all()
      # Each window holds its own tokens, `per_window` of them.
      np.testing.assert_array_equal(first // window,
                                    np.arange(l) // per_window)
    # Merging is learned, not fixed: groups differ across sequences.
    assert len({tuple(s) for s in source}) > 1


def test_unmerge_gives_each_base_its_own_tokens_output(tokenized):
  l, z, _, source = tokenized[1]
  z = z + np.arange(l, dtype=np.float32)[None, :, None] * 100.0   # distinct
  out = np.asarray(net_lib.unmerge(jnp.asarray(z), jnp.asarray(source)))
  assert out.shape == (8, 128, z.shape[-1])
  for b in range(8):
    for n in range(128):
      np.testing.assert_array_equal(out[b, n], z[b, source[b, n]])


def test_local_merge_matches_only_neighbours():
  """Adjacent-only ToMe on random keys: every group is a run of positions
  (the metric's position code always beats the keys' cosine)."""
  rng = np.random.RandomState(0)
  keys = jnp.asarray(rng.randn(64, 16, 2, 8).astype(np.float32))
  x = jnp.asarray(rng.randn(64, 16, 4).astype(np.float32))
  size = jnp.ones((64, 16, 1))
  source = jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), (64, 16))
  x2, size2, source2 = jax.device_get(jax.jit(
      net_lib.local_merge, static_argnums=4)(x, size, source, keys, 8))
  assert x2.shape == (64, 8, 4)
  assert (np.diff(source2, axis=1) >= 0).all()
  assert (np.diff(source2, axis=1) <= 1).all()
  np.testing.assert_array_equal(size2[..., 0],
                                [np.bincount(s, minlength=8) for s in source2])
  # Merged tokens are the size-weighted means of their inputs.
  x = np.asarray(x)
  for b in range(4):
    for t in range(8):
      np.testing.assert_allclose(x2[b, t], x[b, source2[b] == t].mean(0),
                                 rtol=1e-5, atol=1e-6)
  # Without the position code, ToMe pairs far-apart tokens.
  assert max(np.abs(np.diff(np.asarray(jax.device_get(
      _plain_tome_source(keys)))[b])).max() for b in range(64)) > 1


def _plain_tome_source(keys):
  from maskmodel import tokens   # pylint: disable=g-import-not-at-top
  _, unmerge = tokens.bipartite_soft_matching(keys.mean(2), 8,
                                              class_token=False)
  return unmerge(jnp.broadcast_to(jnp.arange(8, dtype=jnp.int32), (64, 8)))


def test_amtm_sampling_follows_inverse_square_group_size():
  groups = np.array([0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 5, 5, 6])   # g = 1..4
  sizes = np.bincount(groups)[groups].astype(np.float32)
  np.testing.assert_array_equal(
      jax.device_get(mergedna.group_sizes(jnp.asarray(groups)[None], 7))[0],
      sizes)
  rows = 40000
  batch = jnp.broadcast_to(jnp.asarray(sizes), (rows, len(sizes)))
  want = (1 / sizes**2) / (1 / sizes**2).sum()
  np.testing.assert_allclose(
      jax.device_get(mergedna.amtm_probs(batch[:1]))[0], want, rtol=1e-6)
  one = jax.device_get(mergedna.amtm_select(jax.random.PRNGKey(0), batch, 1))
  assert (one.sum(1) == 1).all()
  np.testing.assert_allclose(one.mean(0), want, atol=0.008)
  # k = 4 without replacement: the exact inclusion probabilities of drawing
  # one token at a time from the renormalized weights of those left.
  four = jax.device_get(mergedna.amtm_select(jax.random.PRNGKey(1), batch, 4))
  assert (four.sum(1) == 4).all()
  incl = np.zeros(len(sizes))
  for seq in itertools.permutations(range(len(sizes)), 4):
    p, left = 1.0, 1.0
    for j in seq:
      p *= want[j] / left
      left -= want[j]
    incl[list(seq)] += p
  np.testing.assert_allclose(four.mean(0), incl, atol=0.01)
  # Size 1 tokens are drawn far more often than size 4 ones.
  assert four.mean(0)[0] > 4 * four.mean(0)[6]


@pytest.fixture(scope="module")
def smoke():
  """The smoke config's task with two compression levels (8 and 9 of 16)."""
  config = load_config(CONFIG + ":smoke")
  config.model.window_keep = (8, 9)
  task = get_task(config)
  src = sequences.get_corpus("genome", "train", seq_len=64)
  batch = {k: jnp.asarray(np.stack([src[i][k] for i in range(4)]))
           for k in ("tokens", "mask")}
  params, _ = jax.jit(task.init)(jax.random.PRNGKey(0), batch)
  return task, batch, params


def test_each_step_draws_its_compression(smoke):
  """One jitted loss serves every level; the step's key picks one."""
  task, batch, params = smoke
  compression = jax.jit(lambda rng: task.loss(
      params, {}, batch, rng, 0)[1][0]["compression"])
  seen = [float(compression(jax.random.PRNGKey(i))) for i in range(12)]
  assert set(seen) == {0.5, 0.5625}


def test_latent_term_leaves_the_tokenizer_frozen_and_amtm_masks_bases(smoke):
  """The second term trains everything but the local encoder."""
  task, batch, params = smoke
  net = task.eval_net

  @jax.jit
  def grads(params):
    def latent(p):
      out = task.objective(net, p, batch["tokens"], batch["mask"],
                           jax.random.PRNGKey(2))
      return out["latent_mtr_loss"], {k: out[k] for k in (
          "num_masked", "num_bases", "compression")}
    return jax.grad(latent, has_aux=True)(params)
  latent, out = jax.device_get(grads(params))
  norm = lambda tree: sum(float(np.abs(x).sum()) for x in jax.tree.leaves(tree))
  assert norm(latent["local_encoder"]) == 0.0
  for part in ("latent_encoder", "latent_decoder", "local_decoder"):
    assert norm(latent[part]) > 0
  # AMTM masks the bases of K = L / 2 local tokens: about half the bases.
  assert 0.25 < float(out["num_masked"]) / float(out["num_bases"]) < 0.75
  assert out["compression"] == pytest.approx(0.5)


def test_train_on_8_devices_and_resume_bit_exactly(tmp_path):
  final = assert_resumes_bit_exactly(CONFIG + ":smoke", tmp_path / "mergedna")
  assert 0 < final["knn_accuracy"] <= 1
  assert 0 < final["mtr_accuracy"] <= 1 and np.isfinite(final["mtr_loss"])
  assert 0 < final["amtm_accuracy"] <= 1
  assert final["compression"] == pytest.approx(0.5)


@pytest.mark.parametrize("override,match", [
    (dict(seq_len=256), "max_len=128"),
    (dict(seq_len=120), "multiple of model.window=16"),
    (dict(window_keep=(2,)), "cannot merge 16 tokens per window to 2"),
    (dict(window_keep=(17,)), "must be tokens per window"),
    (dict(name="pycode", tokenizer="bytes", seq_len=128), "vocab_size=9"),
])
def test_bad_config_is_one_line(override, match):
  config = load_config(CONFIG)
  for k, v in override.items():
    (config.model if k == "window_keep" else config.data)[k] = v
  with pytest.raises(ConfigError, match=match) as e:
    get_task(config)
  assert "\n" not in str(e.value)


def test_bad_token_id_and_long_sequence_are_one_line(full_task, genome_batch):
  record = {"tokens": np.asarray(genome_batch[0]).copy(),
            "mask": np.ones(128, bool), "label": np.int32(0)}
  record["tokens"][5] = 42
  with pytest.raises(ValueError, match=r"token id 42 .* outside \[0, 9\)") as e:
    full_task.preprocess(record, None, True)
  assert "\n" not in str(e.value)
  encoder = full_task.eval_net.local_encoder
  with pytest.raises(ValueError, match="max_len=128") as e:
    encoder.init(jax.random.PRNGKey(0), jnp.zeros((1, 144), jnp.int32) + 4)
  assert "\n" not in str(e.value)


def test_fixed_tokenizer_ablation_cuts_equal_runs(genome_batch):
  config = load_config(CONFIG)
  config.model.local_merge = "fixed"
  net = get_task(config).levels[1]     # 8 of 16 per window: 2-mers
  params = jax.jit(net.local_encoder.init)(jax.random.PRNGKey(0), genome_batch)
  _, size, source = jax.device_get(jax.jit(net.local_encoder.apply)(
      params, genome_batch))
  np.testing.assert_array_equal(source, np.broadcast_to(np.arange(128) // 2,
                                                        (8, 128)))
  assert (size == 2).all()
