"""Every config file loads, validates and builds its model (shapes only); the
commands its docstring gives parse as the CLI parses them; and the values its
docstring states are the config's."""
import ast
import glob
import os
import re
import shlex

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import pytest

from conftest import ROOT, load_config
from maskmodel import config as config_lib
from maskmodel.tasks import get_task

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True))
IDS = lambda p: os.path.relpath(p, ROOT)
# (width, depth, heads) of ViT-B, -L, -H (Dosovitskiy et al. 2021, Table 1).
VIT_SIZES = {"B": (768, 12, 12), "L": (1024, 24, 16), "H": (1280, 32, 16)}


def _docstring(path):
  with open(path) as f:
    return ast.get_docstring(ast.parse(f.read()))


def _commands(doc):
  """The argv (after `python -m maskmodel.main`) of each command in `doc`."""
  text = re.sub(r"\\\n\s*", " ", doc)
  return [shlex.split(line.split("maskmodel.main", 1)[1])
          for line in text.splitlines() if "python -m maskmodel.main" in line]


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_config_builds(path):
  config = load_config(path)
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


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_documented_commands_parse(path):
  """Each command in the docstring, parsed by absl as `main.py` parses it:
  the file exists, every `--config.key=value` names a key, and the result
  validates. One of them runs this very file."""
  commands = _commands(_docstring(path))
  runs_this_file = False
  for argv in commands:
    # The docstrings give paths from the repository root.
    argv = ["main.py"] + [os.path.join(ROOT, a) if a.startswith("configs/") else a
                          for a in argv]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    flags.DEFINE_string("workdir", None, "", flag_values=fv)
    fv(argv)
    assert fv.workdir, argv
    config_lib.validate(fv.config, num_devices=1)
    runs_this_file |= fv["config"].config_filename.split(":")[0] == path
  assert runs_this_file, f"no command in the docstring of {path} runs it"


def _stated_values(doc, config, path):
  """(claim, stated, actual) for each value the docstring states that this
  test knows how to read."""
  c, out = config, []
  def claim(pattern, actual, parse=float):
    m = re.search(pattern, doc)
    if m:
      out.append((m.group(0), parse(m.group(1)), actual(m)))
  claim(r"ViT-([BLH])/\d+", lambda m: (c.model.width, c.model.depth, c.model.num_heads),
        VIT_SIZES.get)
  claim(r"ViT-[BLH]/(\d+)", lambda m: c.model.patch_size, int)
  claim(r"batch (\d+)", lambda m: c.batch_size, int)
  claim(r"blr ([\d.e-]+)", lambda m: c.optimizer.lr * 256 / c.batch_size)
  claim(r"mask (0\.\d+)", lambda m: c.task.mask_ratio)
  claim(r"(norm-pix) loss", lambda m: c.task.norm_pix_loss, bool)
  claim(r"(\d+)x\d+ decoder", lambda m: c.task.decoder.depth, int)
  claim(r"\d+x(\d+) decoder", lambda m: c.task.decoder.width, int)
  claim(r"layer-wise lr decay ([\d.]+)", lambda m: c.optimizer.layer_decay)
  claim(r"(embedded MNIST) sample", lambda m: c.data.name, lambda s: "mnist5k")
  claim(r"leave `task.init_from` (empty)", lambda m: c.task.init_from, lambda s: "")
  # "The argument is the number of epochs (default 800 ...)".
  m = re.search(r"number of epochs \(default (\d+)", doc)
  if m:
    epochs = int(m.group(1))
    claim(r"(\d+) warmup epochs",
          lambda m: c.optimizer.warmup_steps * epochs / c.total_steps, int)
    out.append((m.group(0), load_config(f"{path}:{epochs}").to_dict(), c.to_dict()))
  # `:smoke` "runs a few steps with a smaller model".
  if re.search(r"`:smoke` runs a few steps with a smaller model", doc):
    smoke = load_config(f"{path}:smoke")
    out.append(("`:smoke` is smaller", True, smoke.total_steps < c.total_steps / 10
                and smoke.model.width < c.model.width))
  return out


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_docstring_states_the_config(path):
  doc, config = _docstring(path), load_config(path)
  claims = _stated_values(doc, config, path)
  assert claims, f"the docstring of {path} states no value this test reads"
  for text, stated, actual in claims:
    same = stated == (pytest.approx(actual) if isinstance(actual, float) else actual)
    assert same, f"{path}: the docstring says {text!r}; the config has {actual}"
  # Expected numbers kept in the README: the section exists and has a table.
  for section in re.findall(r'README "([^"]+)"', doc):
    with open(os.path.join(ROOT, "README.md")) as f:
      readme = f.read()
    m = re.search(rf"^#+ [^\n]*{re.escape(section)}[^\n]*$(.*?)(?=^#+ |\Z)", readme,
                  re.MULTILINE | re.IGNORECASE | re.DOTALL)
    assert m, f"{path} points to README section {section!r}, which does not exist"
    assert re.search(r"^\|.*\d\.\d+", m.group(1), re.MULTILINE), \
        f"README section {section!r} has no table of numbers"
