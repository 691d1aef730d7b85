"""Partition rules: which dims of each parameter are split over which mesh
axes (`maskmodel.sharding`: "data", "fsdp", "tensor").

A rule is `(regex, spec)`. The regex is searched (`re.search`) in the
parameter's path, its keys joined by "/" ("encoder/encoder/block_0/attn/qkv/
kernel"); the first rule that matches decides. `spec` is one of

- a tuple with one entry per leading dim, as `PartitionSpec` takes: None
  (not split), an axis name, or a tuple of axis names; `()` replicates.
  Each split dim must be divisible by its axes' size, else start-up stops
  with a `ConfigError` naming the param (no silent fallback: a layout you
  asked for is the layout you get);
- `AUTO_FSDP`: FSDP's generic layout, the largest dim that the "fsdp" axis
  divides goes over "fsdp" (the first of equal dims). A leaf with fewer than
  2 dims, or with no divisible dim, is replicated: this is the documented
  fallback for odd shapes, and it is only a memory cost.

`config.partition_rules` (None: `DEFAULT_RULES`) replaces the defaults.
Given rules are checked at start-up: a param that no rule covers, and a rule
that covers no param, is a one-line `ConfigError`. (The defaults cover the
models of every family, so only their coverage is checked.)

The default rules: norms, biases, tokens and position embeddings are
replicated; FSDP shards every other param's largest divisible dim; tensor
parallelism splits the attention heads (the head axis of the fused qkv
kernel `[D, 3, H, Dh]`, the projection's input, which is head-major) and
the MLP's hidden units (first layer's output, second layer's input), in
ViT blocks (encoder and MAE/HPM decoders), the sequence model's blocks, the
cross-attention decoder and ConvNeXt's pointwise convs. Each device then
holds the queries, keys and values of whole heads ("tensor" must divide the
number of heads), and attention needs no communication until the
projection's reduction.

The optimizer state and the task state follow the params
(`mirror_specs`): a leaf whose path ends with a param's path and has its
shape (Adam's moments, an EMA teacher) gets that param's spec; every other
leaf (step counts, BatchNorm statistics, RNG keys) is replicated.
"""
from __future__ import annotations

import re

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from maskmodel.config import ConfigError

AUTO_FSDP = "auto_fsdp"

_TENSOR_IN = ("fsdp", "tensor")    # [in, out]: out split over tensor
_TENSOR_OUT = ("tensor", "fsdp")   # [in, out]: in split over tensor
_HEADS_IN = ("fsdp", None, "tensor")   # fused qkv [in, 3, heads, head dim]

DEFAULT_RULES = (
    # Small leaves: replicated on every device.
    (r"(^|/)(\w*norm\w*|bn_\d+)/(scale|bias)$", ()),
    (r"(^|/)(cls_token|dist_token|mask_token\w*|pos_embed\w*|gamma)$", ()),
    # ViT blocks (encoder, MAE/HPM decoders): heads and MLP units over tensor.
    (r"/attn/qkv/kernel$", _HEADS_IN),
    (r"/attn/qkv/bias$", (None, "tensor")),
    (r"/attn/proj/kernel$", _TENSOR_OUT),
    (r"/mlp/Dense_0/kernel$", _TENSOR_IN),
    (r"/mlp/Dense_0/bias$", ("tensor",)),
    (r"/mlp/Dense_1/kernel$", _TENSOR_OUT),
    # Cross-attention decoder blocks.
    (r"/mlp_in/kernel$", _TENSOR_IN),
    (r"/mlp_in/bias$", ("tensor",)),
    (r"/mlp_out/kernel$", _TENSOR_OUT),
    # ConvNeXt: the pointwise convs are the block's MLP.
    (r"/pwconv1/kernel$", _TENSOR_IN),
    (r"/pwconv1/bias$", ("tensor",)),
    (r"/pwconv2/kernel$", _TENSOR_OUT),
    # Everything else: biases replicated, the rest FSDP on its largest dim.
    (r"(^|/)bias$", ()),
    (r".*", AUTO_FSDP),
)


def path_str(path) -> str:
  return jax.tree_util.keystr(path, simple=True, separator="/")


def rules_from_config(config):
  """`(rules, given)`: `config.partition_rules` or the defaults, and whether
  they were given (and so must each match a param)."""
  rules = config.get("partition_rules")
  if rules is None:
    return DEFAULT_RULES, False
  out = []
  for rule in rules:
    if (not isinstance(rule, (tuple, list)) or len(rule) != 2
        or not isinstance(rule[0], str)):
      raise ConfigError(f"partition rule {rule!r} must be (regex, spec), e.g. "
                        "(r'mlp/Dense_0/kernel$', ('fsdp', 'tensor')).")
    regex, spec = rule
    try:
      re.compile(regex)
    except re.error as e:
      raise ConfigError(f"partition rule {regex!r} is not a regex ({e}).") from None
    out.append((regex, spec if spec == AUTO_FSDP else tuple(spec)))
  return tuple(out), True


def _axes_size(mesh, entry):
  names = entry if isinstance(entry, tuple) else (entry,)
  for n in names:
    if n not in mesh.shape:
      raise ConfigError(f"partition spec axis {n!r} is not a mesh axis; use "
                        f"{tuple(mesh.axis_names)}.")
  size = 1
  for n in names:
    size *= mesh.shape[n]
  return size


def _auto_fsdp(shape, mesh):
  n = mesh.shape.get("fsdp", 1)
  if n == 1 or len(shape) < 2:
    return P()
  dims = [d for d in sorted(range(len(shape)), key=lambda d: -shape[d])
          if shape[d] % n == 0]
  if not dims:
    return P()
  spec = [None] * len(shape)
  spec[dims[0]] = "fsdp"
  return P(*spec)


def spec_for(name, shape, spec, mesh):
  """The `PartitionSpec` of one param `name` of `shape` under a rule's spec."""
  if spec == AUTO_FSDP:
    return _auto_fsdp(shape, mesh)
  spec = tuple(tuple(e) if isinstance(e, list) else e for e in spec)
  if len(spec) > len(shape):
    raise ConfigError(f"partition spec {spec} for {name} has {len(spec)} "
                      f"entries but the param has shape {tuple(shape)}.")
  for dim, entry in enumerate(spec):
    if entry is None:
      continue
    size = _axes_size(mesh, entry)
    if shape[dim] % size:
      raise ConfigError(
          f"{name} dim {dim} ({shape[dim]}) is not divisible by mesh axes "
          f"{entry!r} (size {size}); choose a mesh that divides it, or add a "
          "rule for it to config.partition_rules.")
  return P(*spec)


def param_specs(params, mesh, rules=DEFAULT_RULES, check_unused=False):
  """A tree like `params` (arrays or ShapeDtypeStructs) of PartitionSpecs."""
  compiled = [(re.compile(r), s) for r, s in rules]
  used = [False] * len(rules)

  def one(path, leaf):
    name = path_str(path)
    for i, (regex, spec) in enumerate(compiled):
      if regex.search(name):
        used[i] = True
        return spec_for(name, leaf.shape, spec, mesh)
    raise ConfigError(f"no partition rule covers param {name} "
                      f"{tuple(leaf.shape)}; add one to config.partition_rules "
                      "(e.g. (r'.*', 'auto_fsdp') last).")

  specs = jax.tree_util.tree_map_with_path(one, params)
  if check_unused:
    for (regex, _), u in zip(rules, used):
      if not u:
        raise ConfigError(f"partition rule {regex!r} matches no param; fix "
                          "or remove it from config.partition_rules.")
  return specs


def mirror_specs(tree, params, specs):
  """PartitionSpecs for a tree that mirrors params (optimizer or task state):
  a leaf whose path ends with a param's path, with that param's shape, gets
  its spec; any other leaf is replicated."""
  by_path = {}
  for (path, leaf), spec in zip(
      jax.tree_util.tree_flatten_with_path(params)[0],
      jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))):
    by_path[path_str(path)] = (tuple(leaf.shape), spec)

  def one(path, leaf):
    keys = path_str(path).split("/")
    shape = tuple(getattr(leaf, "shape", ()))
    for i in range(len(keys)):
      hit = by_path.get("/".join(keys[i:]))
      if hit is not None and hit[0] == shape:
        return hit[1]
    return P()
  return jax.tree_util.tree_map_with_path(one, tree)


def state_specs(state, mesh, rules=DEFAULT_RULES, check_unused=False):
  """PartitionSpecs for the loop's train state {"params", "opt_state",
  "task_state", ...}: params by the rules, the rest mirroring them."""
  params = param_specs(state["params"], mesh, rules, check_unused)
  rest = {k: v for k, v in state.items() if k != "params"}
  return dict(mirror_specs(rest, state["params"], params), params=params)


def to_shardings(specs, mesh):
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))
