"""Every config file loads, validates and builds its model (shapes only)."""
import glob
import os

import jax
import jax.numpy as jnp
import pytest

from conftest import ROOT, load_config
from maskmodel import config as config_lib
from maskmodel.tasks import get_task

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_builds(path):
  config = load_config(path)
  doc = open(path).read().split('"""')[1]
  for needle in ("python -m maskmodel.main", "Expected", "Hardware"):
    assert needle in doc, f"{path} docstring lacks {needle!r}"
  config_lib.validate(config, num_devices=1)
  task = get_task(config)
  d = config.data
  batch = {"image": jax.ShapeDtypeStruct((2, d.image_size, d.image_size, d.channels), jnp.float32),
           "label": jax.ShapeDtypeStruct((2,), jnp.int32)}
  params, _ = jax.eval_shape(lambda b: task.init(jax.random.PRNGKey(0), b), batch)
  n = sum(x.size for x in jax.tree.leaves(params))
  assert n > 0
  if "vit_b16" in path:  # ViT-B encoder (86M) + MAE decoder (26M incl. embed/pred)
    assert 105e6 < n < 120e6, n
