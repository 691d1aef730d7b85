"""The optimizer: warmup + cosine or multistep, weight-decay mask, layer-wise
lr decay."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, load_config
from maskmodel import optim
from maskmodel.models import build
from maskmodel.tasks import get_task


def _cfg():
  c = load_config("configs/classify/mnist_vit_tiny.py:smoke")
  c.model.depth = 3
  return c


def test_schedule_warmup_then_cosine():
  c = _cfg()
  c.total_steps, c.optimizer.warmup_steps, c.optimizer.lr = 100, 10, 1.0
  s = optim.lr_schedule(c)
  np.testing.assert_allclose([s(0), s(5), s(10)], [0.0, 0.5, 1.0], atol=1e-6)
  np.testing.assert_allclose(s(55), 0.5, atol=1e-6)  # half-way down the cosine
  np.testing.assert_allclose(s(100), 0.0, atol=1e-6)


def test_layer_ids_and_layer_decay():
  c = _cfg()
  task = get_task(c)
  params, _ = jax.jit(task.init)(jax.random.PRNGKey(0),
                                 {"image": jnp.zeros((2, 28, 28, 1))})
  ids = build.vit_layer_ids(params, c.model.depth)
  assert ids["patch_embed"]["kernel"] == 0 and ids["cls_token"] == 0
  assert ids["encoder"]["block_0"]["mlp"]["Dense_0"]["kernel"] == 1
  assert ids["encoder"]["block_2"]["attn"]["qkv"]["kernel"] == 3
  assert ids["encoder"]["norm"]["scale"] == 4 and ids["head"]["kernel"] == 4

  # Under decay d each leaf's update is the undecayed update times
  # d**(L+1 - layer). No warmup, so the first step's lr is the peak.
  c.optimizer.warmup_steps = 0
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip = 0.0
  grads = jax.tree.map(jnp.ones_like, params)
  c.optimizer.layer_decay = 1.0
  assert task.param_labels(params) is None
  tx0, _ = optim.make_optimizer(c, params)
  c.optimizer.layer_decay = 0.5
  tx1, _ = optim.make_optimizer(c, params, task.param_labels(params))
  first_update = lambda tx: jax.jit(
      lambda g, p: tx.update(g, tx.init(p), p)[0])(grads, params)
  u0, u1 = first_update(tx0), first_update(tx1)
  ratio = jax.tree.map(lambda a, b: float(jnp.mean(b / a)), u0, u1)
  np.testing.assert_allclose(ratio["patch_embed"]["kernel"], 0.5 ** 4, rtol=1e-5)
  np.testing.assert_allclose(ratio["encoder"]["block_1"]["attn"]["proj"]["kernel"],
                             0.5 ** 2, rtol=1e-5)
  np.testing.assert_allclose(ratio["head"]["kernel"], 1.0, rtol=1e-5)


def test_frozen_leaves_get_no_update_and_no_moments():
  c = _cfg()
  c.optimizer.warmup_steps, c.optimizer.grad_clip = 0, 1.0
  c.optimizer.weight_decay = 0.0
  params = {"student": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones((3,))},
            "teacher": {"kernel": jnp.ones((4, 3))}}
  scales = {"student": {"kernel": 1.0, "bias": 0.5}, "teacher": {"kernel": 0.0}}
  tx, _ = optim.make_optimizer(c, params, scales)
  opt_state = tx.init(params)
  grads = jax.tree.map(lambda p: 3.0 * jnp.ones_like(p), params)
  updates, _ = tx.update(grads, opt_state, params)
  assert float(jnp.abs(updates["teacher"]["kernel"]).max()) == 0.0
  assert float(jnp.abs(updates["student"]["kernel"]).min()) > 0.0
  # The bias moves at half the kernel's rate: same gradient, no weight
  # decay, and AdamW's first step is -lr per element for both.
  np.testing.assert_allclose(updates["student"]["bias"],
                             0.5 * updates["student"]["kernel"][0], rtol=1e-5)
  # AdamW keeps moments for the 15 trained numbers only.
  moments = sum(x.size for x in jax.tree.leaves(opt_state)
                if getattr(x, "ndim", 0) > 0)
  assert moments == 2 * 15, moments


def test_weight_decay_only_on_matrices():
  params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones((3,))},
            "norm": {"scale": jnp.ones((3,))}, "cls_token": jnp.ones((1, 1, 3))}
  mask = optim.decay_mask(params)
  assert mask == {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False},
                  "cls_token": False}


def test_multistep_schedule_warms_up_then_drops_at_each_milestone():
  from maskmodel import config as config_lib  # pylint: disable=g-import-not-at-top
  from maskmodel.optim import lr_schedule  # pylint: disable=g-import-not-at-top
  c = load_config(os.path.join(ROOT, "configs", "simmim", "mnist_vit_tiny.py"))
  c.total_steps, c.optimizer.warmup_steps, c.optimizer.lr = 100, 10, 1.0
  c.optimizer.schedule, c.optimizer.milestones = "multistep", (70, 90)
  config_lib.validate(c, 1)
  s = lr_schedule(c)
  got = [float(s(i)) for i in (0, 5, 10, 69, 70, 89, 90, 99)]
  np.testing.assert_allclose(got, [0, 0.5, 1, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
  c.optimizer.milestones = (5,)
  with pytest.raises(config_lib.ConfigError, match="milestones"):
    config_lib.validate(c, 1)
  c.optimizer.schedule = "step"
  with pytest.raises(config_lib.ConfigError, match="optimizer.schedule='step'"):
    config_lib.validate(c, 1)


def test_weight_decay_schedule_is_sparks_cosine():
  """SparK's `lr_wd_annealing` (`pretrain/utils/lr_control.py`):
  wd_end + (wd - wd_end)(0.5 + 0.5 cos(pi it / (max_it - 1)))."""
  c = _cfg()
  c.total_steps, c.optimizer.weight_decay, c.optimizer.weight_decay_end = 11, 0.04, 0.2
  s = optim.weight_decay_schedule(c)
  want = [0.2 + (0.04 - 0.2) * (0.5 + 0.5 * np.cos(np.pi * i / 10)) for i in range(11)]
  np.testing.assert_allclose([s(i) for i in range(11)], want, rtol=1e-6)
  c.optimizer.weight_decay_end = None
  np.testing.assert_allclose(optim.weight_decay_schedule(c)(7), 0.04)


def _official_lamb(params, grads_seq, lrs, wds, b1, b2, eps=1e-6):
  """A port of SparK's `TheSameAsTimmLAMB.step` (`pretrain/utils/lamb.py`)
  without its global clip: Adam's bias-corrected step plus weight decay,
  times ||p|| / ||update|| on the leaves with weight decay (matrices, as
  SparK's `get_param_groups` leaves 1-d tensors undecayed), times -lr."""
  p = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t, (g, lr, wd) in enumerate(zip(grads_seq, lrs, wds), start=1):
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      update = (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k]) / np.sqrt(1 - b2 ** t) + eps)
      if p[k].ndim > 1:  # the decayed group
        update = update + wd * p[k]
        w_norm, u_norm = np.linalg.norm(p[k]), np.linalg.norm(update)
        update = update * (w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0)
      p[k] = p[k] - lr * update
  return p


def test_lamb_matches_sparks_lamb_with_its_weight_decay_schedule():
  c = _cfg()
  c.optimizer.name, c.optimizer.b2 = "lamb", 0.95
  c.optimizer.weight_decay, c.optimizer.weight_decay_end = 0.04, 0.2
  c.total_steps, c.optimizer.warmup_steps, c.optimizer.grad_clip = 4, 1, 0.0
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(5, 3)).astype(np.float32),
            "b": rng.normal(size=(3,)).astype(np.float32)}
  grads_seq = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
               for _ in range(4)]
  tx, schedule = optim.make_optimizer(c, params)
  wd = optim.weight_decay_schedule(c)
  state, p = tx.init(params), params
  for g in grads_seq:
    updates, state = tx.update(g, state, p)
    p = jax.tree.map(lambda a, u: a + u, p, updates)
  want = _official_lamb(params, grads_seq, [float(schedule(i)) for i in range(4)],
                        [float(wd(i)) for i in range(4)], c.optimizer.b1, c.optimizer.b2)
  for k in params:
    np.testing.assert_allclose(np.asarray(p[k]), want[k], rtol=2e-5, atol=1e-6)
  # The trust ratio matters: plain AdamW with the same decay differs.
  c.optimizer.name = "adamw"
  tx, _ = optim.make_optimizer(c, params)
  state, q = tx.init(params), params
  for g in grads_seq:
    updates, state = tx.update(g, state, q)
    q = jax.tree.map(lambda a, u: a + u, q, updates)
  assert not np.allclose(np.asarray(q["w"]), want["w"], atol=1e-4)
