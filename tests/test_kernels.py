"""Pallas kernels (interpret mode on CPU) against their jnp references.

Tolerances: f32 results are compared with an absolute tolerance of 1e-5 (the
kernel and the reference differ only in summation order). bf16 results are
compared relative to the largest reference magnitude: 2% for outputs and 5%
for gradients, about a few bf16 ulps (2**-8 relative) after accumulation.
"""
import functools
import importlib
import json
import math
import os
import subprocess
import sys

import jax
import jax.extend  # noqa: F401  (jax.extend.core in the jaxpr walks)
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import SMOKE, run_cli, xla_env
from maskmodel.kernels import (AttentionStats, attention, attention_reference,
                               token_matching, token_matching_reference)
from maskmodel.kernels import dispatch
from maskmodel.kernels import flash_attention as flash
from maskmodel.kernels import matching

# The package re-exports the `attention` function under the module's name.
attention_module = importlib.import_module("maskmodel.kernels.attention")

F32_ATOL = 1e-5
SMALL_BLOCKS = flash.BlockSizes(block_q=16, block_k=16, block_q_bwd=16,
                                block_k_bwd=16)


def _inputs(seed, batch, nq, nk, heads, dim, dtype=jnp.float32, bias=True,
            mask=True):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(size=(batch, n, heads, dim)), dtype)
             for n in (nq, nk, nk))
  b = jnp.asarray(rng.normal(size=(batch, nk)), jnp.float32) if bias else None
  # Key 0 stays visible so only the dedicated test has rows that see nothing.
  m = None
  if mask:
    m = jnp.asarray(rng.random((batch, nk)) > 0.4).at[:, 0].set(True)
  return q, k, v, b, m


def _reference_stats(q, k, bias, kv_mask, causal):
  logits = attention_module._logits(q, k, bias, kv_mask, causal)
  probs = jax.nn.softmax(logits, axis=-1)
  return probs[:, :, 0, :], probs.sum(axis=2)


def _grads(fn, q, k, v, bias, cotangent):
  loss = lambda q, k, v, b: jnp.sum(fn(q, k, v, b).astype(jnp.float32)
                                    * cotangent)
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(q, k, v, bias)


def _max_abs(x, y):
  return float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))))


# (batch, nq, nk, heads, dim, causal, bias, mask, blocks)
FORWARD_CASES = [
    pytest.param(2, 37, 37, 2, 32, False, True, True, SMALL_BLOCKS,
                 id="odd-len-bias-mask"),
    pytest.param(2, 37, 37, 2, 32, True, False, False, SMALL_BLOCKS,
                 id="odd-len-causal"),
    pytest.param(2, 20, 45, 2, 32, True, True, True, SMALL_BLOCKS,
                 id="nq<nk-causal-bias-mask"),
    pytest.param(1, 45, 20, 1, 48, True, False, True, SMALL_BLOCKS,
                 id="nq>nk-causal-d48"),
    pytest.param(2, 7, 7, 2, 128, False, True, False, None,
                 id="shorter-than-block-d128"),
]


@pytest.mark.parametrize(
    "batch,nq,nk,heads,dim,causal,use_bias,use_mask,blocks", FORWARD_CASES)
def test_flash_forward_and_stats_match_reference(batch, nq, nk, heads, dim,
                                                 causal, use_bias, use_mask,
                                                 blocks):
  q, k, v, bias, mask = _inputs(0, batch, nq, nk, heads, dim, bias=use_bias,
                                mask=use_mask)
  out, cls_probs, key_mass = flash.flash_attention(
      q, k, v, bias, mask, causal=causal, interpret=True, block_sizes=blocks,
      return_stats=True)
  ref = attention_reference(q, k, v, bias=bias, kv_mask=mask, causal=causal)
  ref_cls, ref_mass = _reference_stats(q, k, bias, mask, causal)

  assert out.shape == ref.shape and out.dtype == ref.dtype
  np.testing.assert_allclose(out, ref, atol=F32_ATOL, rtol=0)
  assert cls_probs.shape == key_mass.shape == (batch, heads, nk)
  np.testing.assert_allclose(cls_probs, ref_cls, atol=F32_ATOL, rtol=0)
  np.testing.assert_allclose(key_mass, ref_mass, atol=F32_ATOL, rtol=1e-5)
  # Column sums of a row-stochastic matrix: total mass is Nq per head.
  np.testing.assert_allclose(key_mass.sum(-1), nq, rtol=1e-5)


GRAD_CASES = [
    pytest.param(2, 37, 37, 2, 32, False, SMALL_BLOCKS, id="bias-mask"),
    pytest.param(2, 20, 45, 2, 32, True, SMALL_BLOCKS, id="nq<nk-causal"),
    pytest.param(1, 37, 29, 2, 64, True,
                 flash.BlockSizes(block_q=32, block_k=16, block_q_bwd=16,
                                  block_k_bwd=32), id="nq>nk-causal-mixed-blocks"),
]


@pytest.mark.parametrize("batch,nq,nk,heads,dim,causal,blocks", GRAD_CASES)
def test_flash_gradients_match_reference(batch, nq, nk, heads, dim, causal,
                                         blocks):
  q, k, v, bias, mask = _inputs(1, batch, nq, nk, heads, dim)
  cot = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32)
  kernel = lambda q, k, v, b: flash.flash_attention(
      q, k, v, b, mask, causal=causal, interpret=True, block_sizes=blocks)
  reference = lambda q, k, v, b: attention_reference(
      q, k, v, bias=b, kv_mask=mask, causal=causal)
  got = _grads(kernel, q, k, v, bias, cot)
  want = _grads(reference, q, k, v, bias, cot)
  for name, g, w in zip(("dq", "dk", "dv", "dbias"), got, want):
    assert g.shape == w.shape, name
    assert float(jnp.abs(w).max()) > 1e-2, name  # Non-trivial gradient.
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=0, err_msg=name)


def test_flash_queries_that_see_no_key_match_reference():
  """All keys of example 0 hidden: the reference averages all values."""
  q, k, v, bias, mask = _inputs(3, 2, 37, 37, 1, 32)
  mask = mask.at[0].set(False)
  cot = jnp.asarray(np.random.default_rng(4).normal(size=q.shape), jnp.float32)
  kernel = lambda q, k, v, b: flash.flash_attention(
      q, k, v, b, mask, causal=True, interpret=True, block_sizes=SMALL_BLOCKS)
  reference = lambda q, k, v, b: attention_reference(
      q, k, v, bias=b, kv_mask=mask, causal=True)

  out = kernel(q, k, v, bias)
  np.testing.assert_allclose(out[0], jnp.broadcast_to(v[0].mean(0), out[0].shape),
                             atol=F32_ATOL)
  np.testing.assert_allclose(out, reference(q, k, v, bias), atol=F32_ATOL)
  for g, w in zip(_grads(kernel, q, k, v, bias, cot),
                  _grads(reference, q, k, v, bias, cot)):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=0)
  _, cls_probs, key_mass = flash.flash_attention(
      q, k, v, bias, mask, causal=True, interpret=True,
      block_sizes=SMALL_BLOCKS, return_stats=True)
  ref_cls, ref_mass = _reference_stats(q, k, bias, mask, True)
  np.testing.assert_allclose(cls_probs, ref_cls, atol=F32_ATOL)
  np.testing.assert_allclose(key_mass, ref_mass, atol=1e-4)


def test_flash_bf16_within_documented_tolerance():
  q, k, v, bias, mask = _inputs(5, 2, 37, 37, 2, 64, dtype=jnp.bfloat16)
  cot = jnp.asarray(np.random.default_rng(6).normal(size=q.shape), jnp.float32)
  kernel = lambda q, k, v, b: flash.flash_attention(
      q, k, v, b, mask, causal=True, interpret=True, block_sizes=SMALL_BLOCKS)
  reference = lambda q, k, v, b: attention_reference(
      q, k, v, bias=b, kv_mask=mask, causal=True)

  out, ref = kernel(q, k, v, bias), reference(q, k, v, bias)
  assert out.dtype == jnp.bfloat16
  assert _max_abs(out, ref) <= 0.02 * float(jnp.abs(ref.astype(float)).max())
  for name, g, w in zip(("dq", "dk", "dv", "dbias"),
                        _grads(kernel, q, k, v, bias, cot),
                        _grads(reference, q, k, v, bias, cot)):
    assert g.dtype == w.dtype, name
    scale = float(jnp.abs(w.astype(jnp.float32)).max())
    assert _max_abs(g, w) <= 0.05 * scale, (name, _max_abs(g, w), scale)


MOSAIC_CASES = [
    # Not causal: 3 key tiles streamed per query tile, 3 query tiles per key
    # tile, odd lengths.
    pytest.param(37, 300, 32, False,
                 flash.BlockSizes(block_q=8, block_k=128, block_q_bwd=16,
                                  block_k_bwd=128), id="nq<nk"),
    # Nq > Nk causal: the first 10 queries see no key, and each kernel skips
    # whole tiles (the dK/dV kernel 8 of 10 query tiles for the last keys).
    pytest.param(300, 290, 16, True,
                 flash.BlockSizes(block_q=64, block_k=128, block_q_bwd=32,
                                  block_k_bwd=128),
                 id="nq>nk-causal-rows-without-keys"),
]


@pytest.mark.parametrize("nq,nk,dim,causal,blocks", MOSAIC_CASES)
def test_flash_mosaic_streamed_grid_in_interpreter(nq, nk, dim, causal,
                                                   blocks):
  """The TPU variant ([B, H, N, D] layout, 128-wide key tiles, the streamed
  operand on an inner grid axis with scratch accumulators) computes the same
  function, with bias, key mask, statistics and gradients; compiled Mosaic
  is not run here (tests/test_tpu_compile.py compiles it)."""
  q, k, v, bias, mask = _inputs(7, 1, nq, nk, 2, dim)
  cot = jnp.asarray(np.random.default_rng(8).normal(size=q.shape), jnp.float32)

  @jax.jit  # One program: the forward runs once for outputs and gradients.
  def kernel(q, k, v, b):
    (out, cls_probs, key_mass), pullback = jax.vjp(
        lambda *a: flash.flash_attention(
            *a, kv_mask=mask, causal=causal, backend="mosaic", interpret=True,
            block_sizes=blocks, return_stats=True), q, k, v, b)
    grads = pullback((cot, jnp.zeros_like(cls_probs),
                      jnp.zeros_like(key_mass)))
    return out, cls_probs, key_mass, grads

  @jax.jit
  def reference(q, k, v, b):
    out, pullback = jax.vjp(lambda *a: attention_reference(
        *a[:3], bias=a[3], kv_mask=mask, causal=causal), q, k, v, b)
    return out, pullback(cot)

  out, cls_probs, key_mass, grads = kernel(q, k, v, bias)
  ref_out, ref_grads = reference(q, k, v, bias)
  np.testing.assert_allclose(out, ref_out, atol=F32_ATOL)
  ref_cls, ref_mass = _reference_stats(q, k, bias, mask, causal)
  np.testing.assert_allclose(cls_probs, ref_cls, atol=F32_ATOL)
  np.testing.assert_allclose(key_mass, ref_mass, atol=1e-4, rtol=1e-5)
  for name, g, w in zip(("dq", "dk", "dv", "dbias"), grads, ref_grads):
    assert float(jnp.abs(w).max()) > 1e-2, name
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=0, err_msg=name)


def _pallas_calls(jaxpr):
  """Every pallas_call equation in a jaxpr, nested ones included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "pallas_call":
      found.append(eqn)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          found += _pallas_calls(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          found += _pallas_calls(sub)
  return found


def test_mosaic_kernels_hold_tiles_not_sequences():
  """On TPU every kernel's blocks are tiles, whatever N: the streamed
  operand moves along a last, sequential ("arbitrary") grid axis, so VMEM
  does not grow with the sequence (the kernels used to keep K and V, or Q
  and dO, whole in VMEM)."""
  n, dim = 65536, 64
  q = jax.ShapeDtypeStruct((1, n, 2, dim), jnp.bfloat16)
  bias = jax.ShapeDtypeStruct((1, n), jnp.float32)

  def loss(q, k, v, b, blocks):
    out, cls_probs, key_mass = flash.flash_attention(
        q, k, v, b, causal=True, backend="mosaic", block_sizes=blocks,
        return_stats=True)
    return out.astype(jnp.float32).sum() + cls_probs.sum() + key_mass.sum()

  def calls(blocks=None):
    run = functools.partial(loss, blocks=blocks)
    jaxpr = jax.make_jaxpr(jax.value_and_grad(run, argnums=(0, 1, 2, 3)))(
        q, q, q, bias)
    return {e.params["name"]: e for e in _pallas_calls(jaxpr.jaxpr)}

  default = calls()
  assert set(default) == {"flash_attention_forward", "flash_attention_dkdv",
                          "flash_attention_dq", "flash_attention_key_mass"}
  for name, eqn in default.items():
    mapping = eqn.params["grid_mapping"]
    assert mapping.grid == (1, 2, n // 128, n // 128), name
    params = eqn.params["compiler_params"]
    assert params.dimension_semantics == (
        "parallel", "parallel", "parallel", "arbitrary"), name
    # The VMEM estimate stays under 8 MiB: the default scoped limit is kept.
    assert params.vmem_limit_bytes is None, name
    for block in mapping.block_mappings:
      tile = block.transformed_block_aval.shape  # Squeezed dims dropped.
      assert math.prod(tile) <= 128 * dim, (name, tile)
  # 1024 x 1024 tiles ask for the VMEM of the smallest TPU (v4), no more.
  for name, eqn in calls(flash.BlockSizes(1024, 1024, 1024, 1024)).items():
    assert eqn.params["compiler_params"].vmem_limit_bytes == 16 * 2**20, name
  # Tiles grow only where the grid would pass Mosaic's int32 step count.
  assert flash._fit_mosaic_grid(flash.DEFAULT_BLOCK_SIZES["mosaic"], 2, n, n,
                                explicit=False).block_q == 128
  bigger = flash._fit_mosaic_grid(flash.DEFAULT_BLOCK_SIZES["mosaic"], 2,
                                  2**22, 2**22, explicit=False)
  assert bigger == flash.BlockSizes(256, 256, 256, 256)
  with pytest.raises(ValueError, match="pass larger block_sizes"):
    flash._fit_mosaic_grid(flash.DEFAULT_BLOCK_SIZES["mosaic"], 2, 2**22,
                           2**22, explicit=True)


def test_attention_entry_point_interpret_with_stats():
  q, k, v, bias, mask = _inputs(9, 2, 33, 33, 2, 32)
  out, stats = attention(q, k, v, bias=bias, kv_mask=mask, impl="interpret",
                         return_stats=True)
  ref_out, ref_stats = attention(q, k, v, bias=bias, kv_mask=mask, impl="xla",
                                 return_stats=True)
  assert isinstance(stats, AttentionStats)
  assert isinstance(ref_stats, AttentionStats)
  np.testing.assert_allclose(out, ref_out, atol=F32_ATOL)
  np.testing.assert_allclose(stats.cls_probs, ref_stats.cls_probs,
                             atol=F32_ATOL)
  np.testing.assert_allclose(stats.key_mass, ref_stats.key_mass, atol=F32_ATOL)
  # Stats are constants for autodiff.
  g = jax.jit(jax.grad(lambda q: attention(
      q, k, v, impl="interpret", return_stats=True)[1].key_mass.sum()))(q)
  assert not np.any(np.asarray(g))


def _largest_intermediate(jaxpr) -> int:
  """Largest array (elements) anywhere in a jaxpr, kernels included."""
  largest = 0
  for eqn in jaxpr.eqns:
    for var in list(eqn.invars) + list(eqn.outvars):
      shape = getattr(var.aval, "shape", ())
      largest = max(largest, int(np.prod(shape)) if shape else 1)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          largest = max(largest, _largest_intermediate(sub.jaxpr))
        elif isinstance(sub, jax.extend.core.Jaxpr):
          largest = max(largest, _largest_intermediate(sub))
  return largest


def test_flash_never_materializes_scores():
  n, dim = 512, 32
  q, k, v, bias, mask = _inputs(10, 1, n, n, 1, dim)

  def loss(q, k, v, b):
    out, cls_probs, key_mass = flash.flash_attention(
        q, k, v, b, mask, causal=True, interpret=True, return_stats=True)
    return out.sum() + cls_probs.sum() + key_mass.sum()

  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2, 3)))(q, k, v, bias)
  assert "pallas_call" in str(jaxpr)
  assert _largest_intermediate(jaxpr.jaxpr) <= n * 128  # Far below n * n.
  ref_jaxpr = jax.make_jaxpr(
      lambda q, k, v: attention_reference(q, k, v).sum())(q, k, v)
  assert _largest_intermediate(ref_jaxpr.jaxpr) >= n * n  # The check bites.


@pytest.mark.parametrize("platform,backend,custom_call", [
    ("cuda", "triton", "__gpu$xla.gpu.triton"),
    ("tpu", "mosaic", "tpu_custom_call"),
])
def test_compiled_paths_lower_for_gpu_and_tpu(platform, backend, custom_call):
  """Lowers the compiled (non-interpret) kernels for GPU and TPU from CPU.

  Pallas lowers to Triton IR / the Mosaic dialect in Python, so this checks
  that every primitive has a lowering rule and that block shapes satisfy the
  backend's rules (powers of two for Triton; (8, 128) tiling for Mosaic). The
  backend compilers themselves only run on the device.
  """
  n = 197  # ViT-B/16 at 224px, with [CLS].
  for dtype, dim, causal in ((jnp.bfloat16, 64, True), (jnp.float32, 48, False),
                            (jnp.bfloat16, 128, False)):
    q, k, v, bias, mask = _inputs(16, 2, n, n, 2, dim, dtype=dtype)

    def loss(q, k, v, b):
      out, cls_probs, key_mass = flash.flash_attention(
          q, k, v, b, mask, causal=causal, backend=backend, return_stats=True)
      return out.astype(jnp.float32).sum() + cls_probs.sum() + key_mass.sum()

    text = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).trace(
        q, k, v, bias).lower(lowering_platforms=(platform,)).as_text()
    # Forward, dK/dV, dQ and key mass: four kernels.
    assert text.count(f"custom_call @{custom_call}") == 4, text[:2000]

  a, b = q[:, :98, 0].astype(jnp.float32), k[:, :99, 0].astype(jnp.float32)
  text = jax.jit(functools.partial(matching.token_matching_pallas,
                                   backend=backend)).trace(a, b).lower(
                                       lowering_platforms=(platform,)).as_text()
  assert text.count(f"custom_call @{custom_call}") == 1


@jax.default_matmul_precision("highest")  # No TF32 when run on a GPU.
def test_xla_dot_product_attention_path_matches_reference():
  """The GPU `xla` branch (jax.nn.dot_product_attention) runs on CPU too."""
  q, k, v, bias, mask = _inputs(11, 2, 24, 24, 2, 32)
  for causal in (False, True):
    got = attention_module._xla_attention(q, k, v, bias, mask, causal,
                                          use_dot_product_attention=True)
    want = attention_reference(q, k, v, bias=bias, kv_mask=mask, causal=causal)
    np.testing.assert_allclose(got, want, atol=F32_ATOL)
  # The reference normalizes after the values product; its gradients must
  # still be those of the textbook softmax form.
  cotangent = jax.random.normal(jax.random.PRNGKey(3), q.shape)
  got = _grads(lambda q, k, v, b: attention_module._xla_attention(
      q, k, v, b, mask, False, use_dot_product_attention=True),
               q, k, v, bias, cotangent)
  want = _grads(lambda q, k, v, b: attention_reference(q, k, v, bias=b,
                                                       kv_mask=mask),
                q, k, v, bias, cotangent)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-4)


ON_CPU = jax.default_backend() == "cpu"


def _lowered(fn, platform, *args):
  return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def test_triton_configuration_follows_the_target_arch():
  """Tiles and warps are chosen when the program is traced, for the arch
  that `compiling_for_gpu` names (else this process's GPU; none here)."""
  assert dispatch.triton_target() is None
  q = jnp.zeros((1, 256, 2, 64), jnp.bfloat16)
  warps = {}
  for arch in (None, "sm_86", "sm_90a"):
    with dispatch.compiling_for_gpu(arch):
      assert dispatch.triton_target() == arch
      # A fresh function: a cached trace would keep the earlier kernels.
      text = _lowered(lambda q: attention(q, q, q, impl="pallas"), "cuda", q)
    warps[arch] = text.count("num_warps = 8")
  assert dispatch.triton_target() is None
  # bf16 at D = 64: 8 warps off sm_90a, which keeps the 4 the H100 timed.
  assert warps[None] == warps["sm_86"] == 1 and warps["sm_90a"] == 0
  with pytest.raises(ValueError, match="unknown GPU arch 'sm_75'"):
    with dispatch.compiling_for_gpu("sm_75"):
      pass


@pytest.mark.parametrize("validated", [(), ("cuda", "tpu")])
def test_auto_runs_the_kernel_only_where_validated(monkeypatch, validated):
  """`auto` picks per lowering platform: the kernel where it is validated,
  the XLA path elsewhere, and never the kernel on CPU."""
  for op in dispatch.VALIDATED_PLATFORMS:
    monkeypatch.setitem(dispatch.VALIDATED_PLATFORMS, op, validated)
  q, k, v, bias, mask = _inputs(12, 1, 16, 16, 2, 32)
  a, b = q[:, :, 0], k[:, :, 0]
  attend = lambda q, k, v: attention(q, k, v, bias=bias, kv_mask=mask)
  match = lambda a, b: token_matching(a, b, impl="auto")
  for platform, call in (("cpu", None), ("cuda", "__gpu$xla.gpu.triton"),
                         ("tpu", "tpu_custom_call")):
    for fn, args in ((attend, (q, k, v)), (match, (a, b))):
      text = _lowered(fn, platform, *args)
      kernel = call is not None and platform in validated
      assert (call is not None and call in text) == kernel, (platform, fn)
  # Head dims up to 128 take the kernel (checked by ptxas for every arch,
  # tests/test_gpu_compile.py); wider ones stay on XLA.
  for dim, kernel in ((80, True), (128, True), (160, False)):
    for dtype in (jnp.float32, jnp.bfloat16):
      text = _lowered(lambda q: attention(q, q, q), "cuda",
                      jnp.zeros((1, 16, 2, dim), dtype))
      assert ("__gpu$xla.gpu.triton" in text) == (
          kernel and "cuda" in validated), (dim, dtype)
  with jax.default_matmul_precision("highest"):  # No TF32 on a GPU.
    np.testing.assert_allclose(
        attention(q, k, v, bias=bias, kv_mask=mask),
        attention_reference(q, k, v, bias=bias, kv_mask=mask), atol=F32_ATOL)


def test_entry_points_lower_for_gpu_and_tpu_from_any_host():
  """impl='pallas' through the public API, gradients included, lowers for
  each accelerator from this host (AOT), and exports for one."""
  q, k, v, bias, mask = _inputs(13, 2, 40, 40, 2, 32, dtype=jnp.bfloat16)
  loss = lambda q, k, v, b: jnp.sum(attention(
      q, k, v, bias=b, kv_mask=mask, impl="pallas").astype(jnp.float32))
  grad = jax.grad(loss, argnums=(0, 1, 2, 3))
  a, b = q[:, :, 0].astype(jnp.float32), k[:, :, 0].astype(jnp.float32)
  match = lambda a, b: token_matching(a, b, impl="pallas")
  for platform, call in (("cuda", "__gpu$xla.gpu.triton"),
                         ("tpu", "tpu_custom_call")):
    # Forward, dK/dV and dQ.
    assert _lowered(grad, platform, q, k, v, bias).count(call) == 3
    assert _lowered(match, platform, a, b).count(call) == 1
  # Triton calls carry no serialization guarantee, so export must allow them.
  exported = jax.export.export(
      jax.jit(grad), platforms=("cuda",),
      disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(
          "__gpu$xla.gpu.triton")])(q, k, v, bias)
  assert exported.platforms == ("cuda",)
  assert "__gpu$xla.gpu.triton" in exported.mlir_module()


def test_pallas_does_not_lower_for_cpu():
  """No compiled Pallas on CPU: JAX refuses to lower it, and a run with
  `model.attn_impl='pallas'` on a CPU backend is a config error."""
  q = jnp.zeros((1, 4, 1, 32))
  a = jnp.zeros((1, 4, 8))
  with pytest.raises(NotImplementedError, match="platform cpu"):
    _lowered(lambda q: attention(q, q, q, impl="pallas"), "cpu", q)
  with pytest.raises(NotImplementedError, match="platform cpu"):
    _lowered(lambda a: token_matching(a, a, impl="pallas"), "cpu", a)


@pytest.mark.skipif(dispatch.kernel_backend() is not None,
                    reason="checks a CPU backend")
@pytest.mark.parametrize("impl,error", [("pallas", "compiles for GPU or TPU"),
                                        ("cuda", "is unknown")])
def test_config_attn_impl_errors(smoke_config, impl, error):
  from maskmodel import config as config_lib  # pylint: disable=g-import-not-at-top
  smoke_config.model.attn_impl = impl
  with pytest.raises(config_lib.ConfigError, match=error):
    config_lib.validate(smoke_config, 1)


def test_inference_compiler_options():
  rows = dispatch.CPU_XLA_DOTS_MIN_ROWS
  assert dispatch.inference_compiler_options(rows, "cpu") == dispatch.CPU_XLA_DOTS
  assert dispatch.inference_compiler_options(rows - 1, "cpu") == {}
  assert dispatch.inference_compiler_options(10**6, "gpu") == {}
  assert dispatch.inference_compiler_options(10**6, "tpu") == {}
  if not ON_CPU:
    return
  # The options compile on this jaxlib, move the dot out of YNNPACK, and
  # leave the result as it was.
  rng = np.random.default_rng(0)
  x, w = (jnp.asarray(rng.normal(size=s), jnp.float32)
          for s in ((rows, 64), (64, 96)))
  fn = lambda x, w: jax.nn.gelu(x @ w)
  default = jax.jit(fn).lower(x, w).compile()
  tuned = jax.jit(fn, compiler_options=dispatch.inference_compiler_options(
      rows)).lower(x, w).compile()
  assert "__ynn_fusion" in default.as_text()
  assert "__ynn_fusion" not in tuned.as_text()
  np.testing.assert_allclose(tuned(x, w), default(x, w), rtol=1e-5, atol=1e-5)


def test_unknown_impl_raises():
  q = jnp.zeros((1, 4, 1, 32))
  a = jnp.zeros((1, 4, 8))
  with pytest.raises(ValueError, match="unknown"):
    attention(q, q, q, impl="cuda")
  with pytest.raises(ValueError, match="unknown"):
    token_matching(a, a, impl="triton")


# ----------------------------------------------------------------------------
# Token matching.
# ----------------------------------------------------------------------------


def _unit(rng, shape):
  x = rng.normal(size=shape)
  return jnp.asarray(x / np.linalg.norm(x, axis=-1, keepdims=True), jnp.float32)


@pytest.mark.parametrize("backend,batch,na,nb,dim,blocks", [
    pytest.param("triton", 2, 99, 98, 64, matching.MatchingBlocks(16, 32),
                 id="triton-multi-tile"),
    pytest.param("triton", 2, 5, 3, 24, None, id="triton-shorter-than-tile"),
    pytest.param("mosaic", 2, 50, 300, 32, matching.MatchingBlocks(16, 128),
                 id="mosaic-layout"),
])
def test_matching_kernel_matches_reference(backend, batch, na, nb, dim,
                                           blocks):
  rng = np.random.default_rng(13)
  a, b = _unit(rng, (batch, na, dim)), _unit(rng, (batch, nb, dim))
  node_max, node_idx = matching.token_matching_pallas(
      a, b, backend=backend, interpret=True, blocks=blocks)
  ref_max, ref_idx = token_matching_reference(a, b)
  assert node_idx.dtype == jnp.int32 and node_max.dtype == jnp.float32
  np.testing.assert_array_equal(node_idx, ref_idx)
  np.testing.assert_allclose(node_max, ref_max, atol=1e-5)


def test_matching_breaks_ties_like_argmax():
  """Integer-valued metrics make exact ties; the first index must win."""
  rng = np.random.default_rng(14)
  a = jnp.asarray(rng.integers(-1, 2, size=(2, 40, 16)), jnp.float32)
  b = jnp.asarray(rng.integers(-1, 2, size=(2, 70, 16)), jnp.float32)
  b = b.at[:, 50].set(b[:, 3])  # The same best row in two different tiles.
  scores = np.einsum("bac,bnc->ban", a, b)
  assert np.any((scores == scores.max(-1, keepdims=True)).sum(-1) > 1)
  node_max, node_idx = matching.token_matching_pallas(
      a, b, interpret=True, blocks=matching.MatchingBlocks(16, 16))
  np.testing.assert_array_equal(node_idx, scores.argmax(-1))
  np.testing.assert_array_equal(node_max, scores.max(-1))


def test_token_matching_entry_point_class_token():
  rng = np.random.default_rng(15)
  a, b = _unit(rng, (2, 9, 64)), _unit(rng, (2, 8, 64))
  node_max, node_idx = token_matching(a, b, class_token=True,
                                      impl="interpret")
  ref_max, ref_idx = token_matching(a, b, class_token=True, impl="xla")
  assert np.all(np.isneginf(node_max[:, 0]))
  np.testing.assert_array_equal(node_idx, ref_idx)
  np.testing.assert_allclose(node_max[:, 1:], ref_max[:, 1:], atol=1e-5)


# ----------------------------------------------------------------------------
# Compiled kernels: run only where a GPU or TPU is present.
# ----------------------------------------------------------------------------


@pytest.mark.skipif(dispatch.kernel_backend() is None,
                    reason="needs a GPU (Triton) or TPU (Mosaic)")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_compiled_kernels_match_reference(dtype):
  """impl='pallas' against the reference on the device. f32 matmuls run at
  the backend's default precision (TF32 on recent NVIDIA GPUs), so both
  dtypes use the relative tolerances of the bf16 test."""
  q, k, v, bias, mask = _inputs(17, 2, 197, 197, 4, 64, dtype=dtype)
  cot = jnp.asarray(np.random.default_rng(18).normal(size=q.shape),
                    jnp.float32)
  for causal in (False, True):
    kernel = lambda q, k, v, b: attention(q, k, v, bias=b, kv_mask=mask,
                                          causal=causal, impl="pallas")
    reference = lambda q, k, v, b: attention_reference(
        q, k, v, bias=b, kv_mask=mask, causal=causal)
    out, ref = kernel(q, k, v, bias), reference(q, k, v, bias)
    assert _max_abs(out, ref) <= 0.02 * float(jnp.abs(ref.astype(float)).max())
    for name, g, w in zip(("dq", "dk", "dv", "dbias"),
                          _grads(kernel, q, k, v, bias, cot),
                          _grads(reference, q, k, v, bias, cot)):
      scale = float(jnp.abs(w.astype(jnp.float32)).max())
      assert _max_abs(g, w) <= 0.05 * scale, (name, causal)
    _, stats = attention(q, k, v, bias=bias, kv_mask=mask, causal=causal,
                         impl="pallas", return_stats=True)
    ref_cls, ref_mass = _reference_stats(q, k, bias, mask, causal)
    np.testing.assert_allclose(stats.cls_probs, ref_cls, atol=2e-3)
    np.testing.assert_allclose(stats.key_mass, ref_mass, rtol=2e-2, atol=2e-3)

  rng = np.random.default_rng(19)
  a, b = _unit(rng, (4, 99, 64)), _unit(rng, (4, 98, 64))
  node_max, node_idx = token_matching(a, b, impl="pallas")
  ref_max, ref_idx = token_matching_reference(a, b)
  np.testing.assert_array_equal(node_idx, ref_idx)
  np.testing.assert_allclose(node_max, ref_max, atol=1e-5)


SHARDED_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from maskmodel import sharding
from maskmodel.kernels import (attention, attention_reference, token_matching,
                               token_matching_reference)

assert jax.device_count() == 8, jax.devices()
mesh = sharding.make_mesh()
put = lambda x: jax.device_put(x, sharding.batch_sharded(mesh))
keys = jax.random.split(jax.random.PRNGKey(0), 6)
q, k, v = (put(jax.random.normal(kk, (8, 24, 2, 32))) for kk in keys[:3])
bias = put(jax.random.normal(keys[3], (8, 24)))
unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
a = put(unit(jax.random.normal(keys[4], (8, 12, 16))))
b = put(unit(jax.random.normal(keys[5], (8, 13, 16))))

def loss(impl):
  return lambda q, k, v, bias: jnp.sum(
      attention(q, k, v, bias=bias, impl=impl) ** 2)
grad = lambda impl: jax.jit(jax.grad(loss(impl), argnums=(0, 1, 2, 3)))
fwd = jax.jit(lambda q, k, v, bias: attention(q, k, v, bias=bias,
                                              impl="interpret"))
match = jax.jit(lambda a, b: token_matching(a, b, impl="interpret"))

assert "shard_map" not in str(jax.make_jaxpr(fwd)(q, k, v, bias))
with jax.set_mesh(mesh):
  # One kernel call per device on its own rows, not a gathered batch.
  assert "shard_map" in str(jax.make_jaxpr(fwd)(q, k, v, bias))
  assert "shard_map" in str(jax.make_jaxpr(match)(a, b))
  out, grads, (node_max, node_idx) = (fwd(q, k, v, bias),
                                      grad("interpret")(q, k, v, bias),
                                      match(a, b))
assert len(out.sharding.device_set) == 8
np.testing.assert_allclose(out, attention_reference(q, k, v, bias=bias),
                           atol=1e-5)
for g, want in zip(grads, grad("xla")(q, k, v, bias)):
  # Gradients reach ~160 here, where one float32 ulp is 1.5e-5.
  np.testing.assert_allclose(g, want, rtol=1e-6, atol=2e-5)
want_max, want_idx = token_matching_reference(a, b)
np.testing.assert_allclose(node_max, want_max, atol=1e-6)
np.testing.assert_array_equal(node_idx, want_idx)
print("OK")
"""


def test_kernels_run_per_device_under_a_mesh():
  """With a mesh set (as the training loop sets it), the Pallas paths run
  once per device on its batch rows, with the reference's results."""
  env = xla_env(8)
  proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "OK" in proc.stdout


def test_training_with_the_kernel_on_8_devices_matches_xla(tmp_path):
  """The CLI trains the smoke MAE on 8 simulated devices with the Pallas
  attention (interpret mode, one call per device) and logs the same losses
  as with the xla path."""
  losses = {}
  for impl in ("interpret", "xla"):
    workdir = tmp_path / impl
    proc = run_cli("--config", SMOKE, "--workdir", str(workdir),
                   f"--config.model.attn_impl={impl}",
                   "--config.total_steps=4", "--config.optimizer.warmup_steps=1",
                   "--config.log_every=1", "--config.checkpoint_every=0",
                   "--config.evals.names=()",
                   "--config.evals.compare_random_init=False",
                   env=xla_env(8))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "devices=8" in proc.stdout
    rows = [json.loads(line) for line in
            (workdir / "metrics.jsonl").read_text().splitlines()]
    losses[impl] = [r["train/loss"] for r in rows if "train/loss" in r]
  assert len(losses["xla"]) == 4
  np.testing.assert_allclose(losses["interpret"], losses["xla"], rtol=1e-4)
