"""Where a compiled XLA CPU program spends its time, by class of op.

`breakdown` traces a few runs of a compiled computation with the JAX
profiler, sums the duration of every XLA CPU thunk (one per fused HLO op),
and sorts the thunks into classes from the compiled HLO text:

  matmul            dots with 2-D operands (dense layers), with their rate;
  attention_matmul  batched dots (rank > 2: per batch x head), with their rate;
  layernorm, gelu_and_bias, attention_softmax_and_layout, other_model:
                    fusions inside the model, by the Flax scope in their
                    `op_name` (norm*, mlp, attn, anything else);
  `outside_class`   everything outside the model's scope (for a train step:
                    the optimizer update and gradient norm).

The thunk times of the two threads add up, so the total can exceed the wall
time when thunks overlap. Shared by `mae_step.py` and `tome_speed.py`.
"""
from __future__ import annotations

import collections
import glob
import re
import tempfile

import jax
import numpy as np


def _hlo_index(hlo_text):
  """Instruction name -> (text, computation), and shapes per computation."""
  insts, shapes, comp = {}, {}, None
  for line in hlo_text.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if head:
      comp = head.group(1)
      continue
    m = re.match(r"\s+(?:ROOT )?%?([\w.\-]+) = (\S+) (.*)", line)
    if m and comp:
      insts.setdefault(m.group(1), (m.group(2) + " " + m.group(3), comp))
      dims = re.match(r"f32\[([\d,]*)\]", m.group(2))
      if dims:
        shapes[(comp, m.group(1))] = [int(x) for x in dims.group(1).split(",") if x]
  return insts, shapes


def _dots_in(name, insts, shapes):
  """(flops, output rank) of each dot that thunk `name` runs."""
  text, comp = insts.get(name, ("", None))
  called = re.search(r"calls=%?([\w.\-]+)", text)
  lines = ([(t, c) for t, c in insts.values() if c == called.group(1)]
           if called else [(text, comp)])
  out = []
  for t, c in lines:
    m = re.match(r"f32\[([\d,]*)\]\S* dot\(%?([\w.\-]+), ", t)
    if not m:
      continue
    out_dims = [int(x) for x in m.group(1).split(",") if x]
    lhs = shapes.get((c, m.group(2)), [])
    contract = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", t).group(1)
    k = int(np.prod([lhs[int(i)] for i in contract.split(",") if i])) if lhs else 0
    out.append((2.0 * np.prod(out_dims) * k, len(out_dims)))
  return out


def op_class(name, insts, shapes, model_scope, outside_class):
  """(class, matmul FLOPs) of thunk `name`."""
  dots = _dots_in(name, insts, shapes)
  if dots:
    return "attention_matmul" if max(r for _, r in dots) > 2 else "matmul", \
        sum(f for f, _ in dots)
  text = insts.get(name, ("", None))[0]
  op = re.search(r'op_name="([^"]*)"', text)
  op = op.group(1) if op else ""
  if model_scope not in op:
    return outside_class, 0.0
  parts = op.split("/")
  if any(p in ("norm", "norm1", "norm2") for p in parts):
    return "layernorm", 0.0
  if "attn" in parts or any(",b" in p for p in parts):
    return "attention_softmax_and_layout", 0.0
  if "mlp" in parts:
    return "gelu_and_bias", 0.0
  return "other_model", 0.0


def breakdown(hlo_text, run, *, steps, model_scope, outside_class="outside"):
  """Thunk time per run of `run()` (which runs the computation `steps`
  times and blocks), by op class; matmul classes also get FLOP/s."""
  from jax._src.lib import _profile_data  # pylint: disable=import-outside-toplevel
  insts, shapes = _hlo_index(hlo_text)
  with tempfile.TemporaryDirectory() as logdir:
    jax.profiler.start_trace(logdir)
    run()
    jax.profiler.stop_trace()
    trace = _profile_data.ProfileData.from_file(
        glob.glob(f"{logdir}/plugins/profile/*/*.xplane.pb")[0])
    ns = collections.Counter()
    for plane in trace.planes:
      for line in plane.lines:
        if not line.name.startswith(("tf_XLAEigen", "tf_XLAPjRt")):
          continue
        for ev in line.events:
          if not ev.name.startswith(("ThunkExecutor", "SlinkyThreadPool")):
            ns[ev.name] += ev.duration_ns
  total_ms, flops = collections.Counter(), collections.Counter()
  for name, t in ns.items():
    cls, f = op_class(name, insts, shapes, model_scope, outside_class)
    total_ms[cls] += t / 1e6 / steps
    flops[cls] += f
  all_ms = sum(total_ms.values())
  out = {cls: {"ms_per_step": round(ms, 1), "share": round(ms / all_ms, 3)}
         for cls, ms in total_ms.most_common()}
  for cls in ("matmul", "attention_matmul"):
    if cls in out:
      out[cls]["flop_per_s"] = flops[cls] / (total_ms[cls] / 1e3)
  return {"thunk_ms_per_step": round(all_ms, 1), "classes": out}
