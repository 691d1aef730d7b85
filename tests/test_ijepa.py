"""I-JEPA: the EMA teacher and its momentum, the multi-block masks against a
numpy port of the official collator, the predictor and encoder under
padding, the loss, and training on 8 devices with a bit-exact resume.

The ports follow facebookresearch/ijepa: `src/masks/multiblock.py`
(`MaskCollator`), `src/train.py` (the momentum generator, the loss) and
`src/utils/schedulers.py` (`WarmupCosineSchedule`, `CosineWDSchedule`).
"""
import math
import os

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from conftest import ROOT, assert_resumes_bit_exactly, load_config
from maskmodel import optim, partitioning, train
from maskmodel.config import ConfigError
from maskmodel.masking import multiblock
from maskmodel.models.jepa import (JEPAEncoder, JEPAPredictor, LocalAggregationHead,
                                   layer_norm_no_affine, local_window_index,
                                   top_neighbours)
from maskmodel.tasks import get_task, teachers
from maskmodel.tasks.ijepa import prediction_loss

SMOKE = os.path.join(ROOT, "configs", "ijepa", "mnist_vit_tiny.py") + ":smoke"


# ------------------------------------------------------------ numpy ports


def official_momentum(ema, total):
  """`momentum_scheduler` of `src/train.py` as a list (ipe * epochs *
  ipe_scale = total)."""
  return [ema[0] + i * (ema[1] - ema[0]) / total for i in range(int(total) + 1)]


def official_block_size(u, grid, scale, aspect):
  """`MaskCollator._sample_block_size` for the draw u."""
  height, width = grid
  max_keep = int(height * width * (scale[0] + u * (scale[1] - scale[0])))
  ar = aspect[0] + u * (aspect[1] - aspect[0])
  h, w = int(round(math.sqrt(max_keep * ar))), int(round(math.sqrt(max_keep / ar)))
  while h >= height:
    h -= 1
  while w >= width:
    w -= 1
  return h, w


def official_block(rng, grid, size, min_keep, regions=None):
  """`MaskCollator._sample_block_mask`: (sorted indices, complement, tries)."""
  height, width = grid
  h, w = size
  tries, timeout = 0, 20
  while True:
    top, left = rng.integers(0, height - h), rng.integers(0, width - w)
    mask = np.zeros(grid, np.int32)
    mask[top:top + h, left:left + w] = 1
    if regions is not None:
      for k in range(max(len(regions) - tries, 0)):
        mask *= regions[k]
    ids = np.flatnonzero(mask)
    if len(ids) > min_keep:
      break
    timeout -= 1
    if timeout == 0:
      tries, timeout = tries + 1, 20
  complement = np.ones(grid, np.int32)
  complement[top:top + h, left:left + w] = 0
  return ids, complement, tries


def official_collate(rng, batch_size, grid, npred=4, pred_scale=(0.15, 0.2),
                     aspect=(0.75, 1.5), enc_scale=(0.85, 1.0), min_keep=10):
  """`MaskCollator.__call__` (nenc = 1, allow_overlap False): the context
  lists [B, Kc] and target lists [npred, B, Kt] truncated to the batch's
  shortest, the two sizes, and the largest number of relaxed constraints."""
  p_size = official_block_size(rng.random(), grid, pred_scale, aspect)
  e_size = official_block_size(rng.random(), grid, enc_scale, (1.0, 1.0))
  preds, encs, most_tries = [], [], 0
  for _ in range(batch_size):
    ps, regions = [], []
    for _ in range(npred):
      ids, complement, _ = official_block(rng, grid, p_size, min_keep)
      ps.append(ids)
      regions.append(complement)
    preds.append(ps)
    ids, _, tries = official_block(rng, grid, e_size, min_keep, regions)
    encs.append(ids)
    most_tries = max(most_tries, tries)
  kp = min(len(m) for ps in preds for m in ps)
  ke = min(len(m) for m in encs)
  targets = np.asarray([[ps[j][:kp] for ps in preds] for j in range(npred)])
  return np.asarray([m[:ke] for m in encs]), targets, p_size, e_size, most_tries


def torch_smooth_l1(x, y, beta=1.0):
  d = np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))
  return np.where(d < beta, 0.5 * d ** 2 / beta, d - 0.5 * beta).mean()


# ------------------------------------------------------------ teachers


def test_ema_update_and_the_linear_momentum_schedule():
  teacher = {"a": jnp.asarray([1.0, 2.0]), "b": {"c": jnp.asarray(3.0)}}
  student = {"a": jnp.asarray([3.0, -2.0]), "b": {"c": jnp.asarray(5.0)}}
  out = teachers.ema_update(teacher, student, 0.75)
  np.testing.assert_allclose(out["a"], [1.5, 1.0])
  np.testing.assert_allclose(out["b"]["c"], 3.5)
  # No gradient flows into the student through the update.
  g = jax.grad(lambda s: teachers.ema_update(teacher, s, 0.5)["b"]["c"])(student)
  assert float(g["b"]["c"]) == 0.0
  total = 50
  expected = official_momentum((0.996, 1.0), total)
  got = [float(teachers.linear_momentum(s, total)) for s in range(total + 1)]
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)
  assert got[0] == pytest.approx(0.996, abs=1e-7) and got[-1] == 1.0
  # The last update of the run uses 1 - 0.004 / total.
  assert got[total - 1] == pytest.approx(1 - 0.004 / total, abs=1e-7)


# ------------------------------------------------------------ masks


@pytest.mark.parametrize("grid,scale,aspect", [
    ((14, 14), (0.15, 0.2), (0.75, 1.5)), ((16, 16), (0.15, 0.2), (0.75, 1.5)),
    ((7, 7), (0.15, 0.2), (0.75, 1.5)), ((14, 14), (0.85, 1.0), (1.0, 1.0))])
def test_block_size_table_is_the_official_step_function(grid, scale, aspect):
  edges, sizes = multiblock.block_size_table(grid, scale, aspect)
  us = np.random.default_rng(0).random(5000)
  got = sizes[np.searchsorted(edges, us, side="right")]
  want = np.asarray([official_block_size(u, grid, scale, aspect) for u in us])
  np.testing.assert_array_equal(got, want)
  assert multiblock.max_block_area(grid, scale, aspect) >= (want[:, 0] * want[:, 1]).max()


def _rectangle_of(ids, grid):
  rows, cols = np.divmod(ids, grid[1])
  top, left = rows.min(), cols.min()
  h, w = rows.max() - top + 1, cols.max() - left + 1
  return top, left, h, w


@pytest.fixture(scope="module")
def masks_14():
  """100 batches of 16 on the 14 x 14 grid (ViT-B/16 at 224), official
  defaults, truncation over groups of 8."""
  fn = jax.jit(jax.vmap(lambda k: multiblock.multiblock_mask(
      k, 16, (14, 14), group_size=8)))
  return jax.device_get(fn(jax.random.split(jax.random.PRNGKey(0), 100)))


def test_context_length_cuts_the_lists_in_order():
  """`context_length` gives the context lists that static length: the
  same lists, cut further where a group's shortest context is longer."""
  fn = jax.jit(lambda k: [multiblock.multiblock_mask(k, 16, (14, 14), group_size=8,
                                                     context_length=length)
                          for length in (None, 40)])
  full, cut = jax.device_get(fn(jax.random.PRNGKey(2)))
  assert cut.context.shape == (16, 40) and full.context.shape == (16, 169)
  np.testing.assert_array_equal(cut.context, full.context[:, :40])
  np.testing.assert_array_equal(cut.context_valid.sum(1),
                                np.minimum(full.context_valid.sum(1), 40))
  np.testing.assert_array_equal(cut.targets, full.targets)


def test_multiblock_geometry(masks_14):
  """Targets are h x w rectangles inside the grid, sharing one size per
  batch; each context list is ascending, inside one square block, free of
  the targets, and its valid part is its group's shortest context."""
  grid, n = (14, 14), 196
  edges, sizes = multiblock.block_size_table(grid, (0.15, 0.2), (0.75, 1.5))
  allowed = {tuple(s) for s in sizes}
  for i in range(20):
    t_ids, t_valid = masks_14.targets[i], masks_14.targets_valid[i]
    c_ids, c_valid = masks_14.context[i], masks_14.context_valid[i]
    area = t_valid[0, 0].sum()
    assert (t_valid.sum(-1) == area).all()
    shapes = set()
    for j in range(4):
      for b in range(16):
        ids = t_ids[j, b, :area]
        top, left, h, w = _rectangle_of(ids, grid)
        assert len(set(ids)) == area == h * w   # a full rectangle
        assert top + h <= 13 and left + w <= 13  # never the last row/column
        shapes.add((h, w))
    assert len(shapes) == 1 and shapes <= allowed
    for b in range(16):
      k = c_valid[b].sum()
      ids = c_ids[b, :k]
      assert (np.diff(ids) > 0).all() and ids.max() < n
      assert not set(ids) & set(t_ids[:, b, :area].ravel())
    counts = c_valid.sum(1).reshape(2, 8)
    assert (counts == counts[:, :1]).all()  # one truncation per group


def test_multiblock_distribution_matches_the_official_collator(masks_14):
  """Block sizes and the truncated context length follow the port of
  `MaskCollator` (same group of 8 per collation)."""
  rng = np.random.default_rng(0)
  port = [official_collate(rng, 8, (14, 14)) for _ in range(300)]
  port_area = np.asarray([p[2][0] * p[2][1] for p in port])
  port_context = np.asarray([p[0].shape[1] for p in port])
  ours_area = masks_14.targets_valid[:, 0, 0].sum(-1)
  ours_context = masks_14.context_valid.sum(-1).reshape(100, 2, 8)[..., 0].ravel()
  # The official lists: targets all h * w long, contexts their group minimum.
  assert all(p[1].shape[2] == p[2][0] * p[2][1] for p in port)
  assert abs(ours_area.mean() - port_area.mean()) < 1.0      # sd ~2.5 patches
  assert abs(ours_context.mean() - port_context.mean()) < 4.0  # sd ~12
  assert abs(ours_context.std() - port_context.std()) < 4.0


def test_context_constraints_relax_as_officially():
  """On a small grid with a large min_keep the official sampler drops
  target constraints after 20 failures; the contexts then overlap the
  targets, and their lengths follow the port's."""
  grid, scales = (8, 8), dict(target_scale=(0.25, 0.3), context_scale=(0.6, 0.7))
  fn = jax.jit(jax.vmap(lambda k: multiblock.multiblock_mask(
      k, 8, grid, min_keep=12, **scales)))
  m = jax.device_get(fn(jax.random.split(jax.random.PRNGKey(1), 40)))
  rng = np.random.default_rng(1)
  port = [official_collate(rng, 8, grid, pred_scale=scales["target_scale"],
                           enc_scale=scales["context_scale"], min_keep=12)
          for _ in range(40)]
  assert np.mean([p[4] > 0 for p in port]) > 0.5   # relaxed in most batches
  assert (m.context_valid.sum(-1) > 12).all()
  area = m.targets_valid[:, 0, 0].sum(-1)
  overlap = [bool(set(m.context[i, b, :m.context_valid[i, b].sum()])
                  & set(m.targets[i, :, b, :area[i]].ravel()))
             for i in range(40) for b in range(8)]
  assert any(overlap)
  ours = m.context_valid.sum(-1)[:, 0]
  theirs = np.asarray([p[0].shape[1] for p in port])
  assert abs(ours.mean() - theirs.mean()) < 2.0


def test_mask_config_errors():
  with pytest.raises(ConfigError, match="min_keep"):
    multiblock.check_config((7, 7), target_scale=(0.15, 0.2),
                            target_aspect=(0.75, 1.5), context_scale=(0.85, 1.0),
                            min_keep=10, num_targets=4)
  with pytest.raises(ConfigError, match="mask_group_size"):
    multiblock.multiblock_mask(jax.random.PRNGKey(0), 12, (14, 14), group_size=8)


# ------------------------------------------------------------ networks


def test_padding_changes_nothing_real():
  """The encoder and the predictor on padded lists give, at the real
  entries, what they give on the exact lists."""
  grid, b, d = (4, 4), 2, 32
  images = jax.random.normal(jax.random.PRNGKey(0), (b, 16, 16, 1))
  enc = JEPAEncoder(patch_size=4, width=d, depth=1, num_heads=2)
  ctx = jnp.asarray([[0, 2, 5, 7, 9], [1, 3, 4, 6, 8]])
  exact, padded = ctx[:, :3], ctx.at[:, 3:].set(jnp.asarray([15, 11]))
  valid = jnp.arange(5) < 3
  valid = jnp.broadcast_to(valid, (b, 5))
  pred = JEPAPredictor(grid, width=16, depth=1, num_heads=2, out_width=d)
  targets = jnp.asarray([[[10, 11, 14, 0], [12, 13, 15, 1]],
                         [[1, 2, 3, 4], [0, 5, 10, 6]]])          # [M=2, B, 4]
  t_valid = jnp.broadcast_to(jnp.arange(4) < 3, targets.shape)

  @jax.jit
  def run(images):   # one program: both networks, padded and exact
    params = enc.init(jax.random.PRNGKey(1), images)
    out_exact = enc.apply(params, images, exact)
    out_pad = enc.apply(params, images, padded, valid)
    pp = pred.init(jax.random.PRNGKey(2), out_pad["tokens"], padded, valid,
                   targets, t_valid)
    got = pred.apply(pp, out_pad["tokens"], padded, valid, targets, t_valid)
    want = pred.apply(pp, out_exact["tokens"], exact, jnp.ones((b, 3), bool),
                      targets[..., :3], jnp.ones((2, b, 3), bool))
    return out_exact, out_pad, got, want

  out_exact, out_pad, got, want = run(images)
  np.testing.assert_allclose(out_pad["tokens"][:, :3], out_exact["tokens"], atol=1e-5)
  np.testing.assert_allclose(out_pad["pooled"], out_exact["pooled"], atol=1e-5)
  assert got.shape == (2, b, 4, d)
  np.testing.assert_allclose(got[..., :3, :], want, atol=1e-5)


def test_losses_and_target_norm():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(4, 3, 5, 8)).astype(np.float32) * 2
  target = rng.normal(size=(4, 3, 5, 8)).astype(np.float32)
  valid = np.ones((4, 3, 5), bool)
  assert float(prediction_loss(pred, target, valid)) == pytest.approx(
      torch_smooth_l1(pred, target), rel=1e-5)
  assert float(prediction_loss(pred, target, valid, "l2")) == pytest.approx(
      ((pred - target) ** 2).mean(), rel=1e-5)
  # Padded entries do not count.
  valid[..., 3:] = False
  assert float(prediction_loss(pred, target, valid)) == pytest.approx(
      torch_smooth_l1(pred[..., :3, :], target[..., :3, :]), rel=1e-5)
  # F.layer_norm without affine, eps 1e-5.
  h = rng.normal(size=(2, 3, 8)) * 3 + 1
  want = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(layer_norm_no_affine(jnp.asarray(h, jnp.float32)),
                             want, atol=1e-5)


def test_official_lr_and_weight_decay_schedules():
  """The loop's schedules are the official ones one step earlier (the
  official schedulers count from 1)."""
  c = load_config(SMOKE)
  c.total_steps, c.optimizer.warmup_steps = 40, 8
  lr = optim.lr_schedule(c)
  wd = optim.weight_decay_schedule(c)
  o = c.optimizer
  for step in range(1, 40):
    if step < 8:
      want = o.warmup_init + step / 8 * (o.lr - o.warmup_init)
    else:
      progress = (step - 8) / (40 - 8)
      want = o.min_lr + (o.lr - o.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    assert float(lr(step)) == pytest.approx(want, rel=1e-5)
  assert float(lr(0)) == pytest.approx(o.warmup_init)
  assert float(wd(0)) == pytest.approx(0.04) and float(wd(39)) == pytest.approx(0.4)


# ------------------------------------------------------------ the task


@pytest.fixture(scope="module")
def smoke_task():
  config = load_config(SMOKE)
  task = get_task(config)
  images = jax.random.normal(jax.random.PRNGKey(0), (16, 28, 28, 1))
  batch = {"image": images, "label": jnp.zeros((16,), jnp.int32)}
  return config, task, batch


def test_teacher_gets_no_gradient_and_moves_only_by_ema(smoke_task):
  """The loss neither differentiates through the teacher nor changes it;
  `after_update` moves it by exactly the EMA of the new encoder. (The loop
  calls the two in its step, `train.train_step`; the resume test runs it.)"""
  config, task, batch = smoke_task
  init, _, _ = train._state_init(config, task, batch)  # pylint: disable=protected-access

  @jax.jit
  def run(batch):   # one program: a fresh state and the loss's state gradient
    state = init(jax.random.PRNGKey(0), batch)
    return state, jax.grad(lambda s: task.loss(
        state["params"], s, batch, jax.random.PRNGKey(3), 7), has_aux=True)(
            state["task_state"])

  state, (grads, (metrics, out)) = run(batch)
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads))
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(state["task_state"])):
    np.testing.assert_array_equal(a, b)
  assert float(metrics["ema_momentum"]) == pytest.approx(
      0.996 + 7 * 0.004 / config.total_steps)
  before = state["task_state"]["teacher"]
  student = jax.tree.map(lambda x: x + 1.0, state["params"])   # a moved student
  new = dict(task_state=task.after_update(student, state["task_state"], 3),
             params=student)
  m = 0.996 + 3 * 0.004 / config.total_steps
  for t, b, s in zip(jax.tree.leaves(new["task_state"]["teacher"]),
                     jax.tree.leaves(before), jax.tree.leaves(student["encoder"])):
    np.testing.assert_allclose(t, m * b + (1 - m) * s, rtol=1e-6, atol=1e-7)
  # Evaluation reads the target encoder; "context" reads the trained one.
  assert task.eval_params(new["params"], new["task_state"])["encoder"] is \
      new["task_state"]["teacher"]["encoder"]
  context = load_config(SMOKE)
  context.task.eval_encoder = "context"
  assert get_task(context).eval_params(new["params"], new["task_state"]) is new["params"]


def test_teacher_is_sharded_like_the_student(smoke_task):
  """On an fsdp = 8 mesh the EMA teacher's leaves get the context
  encoder's specs, FSDP-sharded where the params are."""
  config, task, batch = smoke_task
  init, _, _ = train._state_init(config, task, batch)  # pylint: disable=protected-access
  shapes = jax.eval_shape(lambda b: init(jax.random.PRNGKey(0), b), batch)
  mesh = jax.sharding.AbstractMesh((1, 8, 1), ("data", "fsdp", "tensor"))
  specs = partitioning.state_specs(shapes, mesh)
  leaves = lambda t: jax.tree.leaves(t, is_leaf=lambda x: isinstance(x, P))
  teacher = leaves(specs["task_state"]["teacher"]["encoder"])
  assert teacher == leaves(specs["params"]["encoder"])
  assert any("fsdp" in spec for spec in teacher)


def test_task_config_errors():
  for key, value, match in (("loss", "l1", "task.loss"),
                            ("eval_encoder", "online", "task.eval_encoder"),
                            ("ema", (1.0, 0.9), "task.ema"),
                            ("min_keep", 20, "min_keep"),
                            ("mask_group_size", 5, "mask_group_size"),
                            ("context_length", -1, "context_length")):
    bad = load_config(SMOKE)
    bad.task[key] = value
    with pytest.raises(ConfigError, match=match):
      get_task(bad)
  bad = load_config(SMOKE)
  bad.model.pool = "cls"
  with pytest.raises(ConfigError, match="model.pool"):
    get_task(bad)


def test_both_tasks_train_and_resume_bit_exactly_on_8_devices(tmp_path):
  """I-JEPA, then DMT-JEPA, in one process on 8 simulated devices."""
  finals = assert_resumes_bit_exactly(SMOKE, tmp_path / "ijepa",
                                      (DMT_SMOKE, tmp_path / "dmtjepa"))
  for final in finals:
    assert 0.1 < final["knn_accuracy"] <= 1.0


# ------------------------------------------------------------ DMT-JEPA

DMT_SMOKE = os.path.join(ROOT, "configs", "dmtjepa", "mnist_vit_tiny.py") + ":smoke"


def official_local_index(num_patches, k_size):
  """`LocalAggHead.get_local_index` of DMTJEPA/DMTJEPA
  `src/models/local_agg_head.py`, in numpy: a row mask and a column mask
  with wrapped offsets, their outer product minus the centre."""
  side = int(math.sqrt(num_patches))
  out = []
  for i in range(num_patches):
    ix, iy = i // side, i % side
    wx, wy = np.zeros(side), np.zeros(side)
    wx[ix] = wy[iy] = 1
    for j in range(1, k_size // 2 + 1):
      wx[(ix + j) % side] = wx[(ix - j) % side] = 1
      wy[(iy + j) % side] = wy[(iy - j) % side] = 1
    weight = (wy[None, :] * wx[:, None]).reshape(-1)
    weight[i] = 0
    out.append(np.flatnonzero(weight))
  return np.stack(out)


@pytest.mark.parametrize("side,k_size", [(4, 3), (14, 3), (6, 5)])
def test_local_window_is_the_official_wrapped_window(side, k_size):
  np.testing.assert_array_equal(local_window_index((side, side), k_size),
                                official_local_index(side * side, k_size))


def test_neighbour_selection_picks_the_true_top4_with_wraparound():
  """Patch 0 of a 4 x 4 grid: its wrapped window is {1, 3, 4, 5, 7, 12, 13,
  15}; the four made most similar to it (3, 12, 13, 15: all across a
  border) are the ones kept."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 16, 8)).astype(np.float32)
  for j, w in ((3, 0.9), (12, 0.8), (13, 0.7), (15, 0.6)):
    x[0, j] = w * x[0, 0] + (1 - w) * x[0, j]       # similar to patch 0
  for j in (1, 4, 5, 7):
    x[0, j] = -x[0, 0] + 0.1 * x[0, j]              # the inner neighbours: not
  x[0, 2] = x[0, 8] = x[0, 10] = x[0, 0]            # identical, but outside
  near = top_neighbours(jnp.asarray(x), local_window_index((4, 4), 3), 4)
  got = {int(np.argmin(np.abs(x[0] - v).sum(-1))) for v in np.asarray(near[0, 0])}
  assert got == {3, 12, 13, 15}


def test_local_head_queries_start_from_each_images_own_mean():
  """The target head's output for one image does not depend on the other
  images of the batch (the official tiling would mix them), and the
  context head ignores padded tokens."""
  head = LocalAggregationHead((4, 4), num_heads=2)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16))
  other = x.at[1].set(jax.random.normal(jax.random.PRNGKey(1), (16, 16)))
  valid = jnp.arange(16)[None, :] < jnp.asarray([[10], [16]])

  @jax.jit
  def run(x, other):
    params = head.init(jax.random.PRNGKey(2), x, local=True)
    return (head.apply(params, x, local=True), head.apply(params, other, local=True),
            head.apply(params, x, valid), head.apply(params, x[:, :10]))

  a, b, ctx, exact = run(x, other)
  np.testing.assert_allclose(a[0], b[0], atol=1e-6)
  assert not np.allclose(a[1], b[1])
  np.testing.assert_allclose(ctx[0, :10], exact[0], atol=1e-5)


def test_dmtjepa_teacher_heads_move_by_ema():
  config = load_config(DMT_SMOKE)
  task = get_task(config)
  batch = {"image": jnp.zeros((16, 28, 28, 1))}
  shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0), batch)
  params, state = jax.tree.map(   # random values: only the EMA runs here
      lambda x: jnp.asarray(np.random.default_rng(x.size).normal(size=x.shape),
                            x.dtype), shapes)
  assert set(state["teacher"]) == {"encoder", "head"}
  student = jax.tree.map(lambda x: x + 1.0, params)
  new = task.after_update(student, state, 0)["teacher"]
  for t, b, s in zip(jax.tree.leaves(new["head"]), jax.tree.leaves(state["teacher"]["head"]),
                     jax.tree.leaves(student["head"])):
    np.testing.assert_allclose(t, 0.996 * b + 0.004 * s, rtol=1e-6, atol=1e-7)
  for key, value in (("neighbours", 9), ("window", 4)):
    bad = load_config(DMT_SMOKE)
    bad.task[key] = value
    with pytest.raises(ConfigError, match="task.neighbours"):
      get_task(bad)
