"""The Pallas kernels compiled for every TPU generation, without a TPU.

Needs `libtpu` (`make install` puts it in `.venv/libtpu-aot`; or `pip
install -e '.[aot]'`); skipped without it. The real
XLA:TPU and Mosaic compilers run on compile-only devices (`maskmodel.aot`),
VMEM allocator included, so a kernel that needs more VMEM than a chip has
fails here as it would there. The longest sequences come from
`python benchmarks/tpu_compile.py` (`benchmarks/results/tpu_compile.json`).
"""
import pathlib
import sys

import jax
import jax.numpy as jnp
import pytest

from maskmodel import aot  # pylint: disable=g-import-not-at-top
from maskmodel.kernels import attention, token_matching  # pylint: disable=g-import-not-at-top
from maskmodel.kernels import flash_attention as flash  # pylint: disable=g-import-not-at-top

if not aot.libtpu_available():
  pytest.skip("compile-only TPU checks need libtpu: make install puts it in "
              ".venv/libtpu-aot", allow_module_level=True)

# Longest N whose attention gradient (D = 64, bf16, batch 1, 2 heads)
# compiles; at 2N it runs out of HBM. The kernels stream their tiles through
# VMEM, so HBM is the bound (before they did, K and V, or Q and dO, stayed
# whole in VMEM and the longest N was 4,096 on v4 and 16,384-32,768 on the
# others).
LONGEST_BF16 = {"v4": 2097152, "v5e": 2097152, "v5p": 8388608,
                "v6e": 4194304, "tpu7x": 8388608}


sys.path.append(str(pathlib.Path(__file__).resolve().parents[1]
                       / "benchmarks"))
# The same programs as the compile table: forward, statistics, gradients.
from tpu_compile import attention_args as _args  # pylint: disable=g-import-not-at-top,wrong-import-position
from tpu_compile import attention_grad as _attention_grad  # pylint: disable=g-import-not-at-top,wrong-import-position


KERNELS = ("flash_attention_forward", "flash_attention_key_mass",
           "flash_attention_dkdv", "flash_attention_dq")


def _assert_all_kernels(compiled):
  """The four attention kernels are in the compiled program."""
  calls = [line for line in compiled.as_text().splitlines()
           if "custom-call(" in line and "tpu_custom_call" in line]
  for name in KERNELS:
    assert any(f"%{name}" in line for line in calls), name


@pytest.mark.parametrize("generation", sorted(aot.TPU_TOPOLOGIES))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_vit_b_kernels_compile(generation, dtype):
  """Forward, gradients, statistics and matching at ViT-B/16 shapes."""
  device = aot.tpu_device(generation)
  compiled = aot.compile_for(device, _attention_grad,
                             *_args(8, 197, 12, 64, dtype))
  _assert_all_kernels(compiled)
  a = jax.ShapeDtypeStruct((8, 99, 64), dtype)
  b = jax.ShapeDtypeStruct((8, 98, 64), dtype)
  aot.compile_for(device, lambda a, b: token_matching(
      a, b, class_token=True, impl="pallas"), a, b)


@pytest.mark.parametrize("generation", sorted(aot.TPU_TOPOLOGIES))
def test_masked_causal_kernels_compile(generation):
  """The key mask and the causal skip (`pl.when` steps, clamped index maps)
  with Nq != Nk, odd lengths and several tiles on both grid axes."""
  def grads(q, k, v, bias, mask):
    def loss(q, k, v, bias):
      out, stats = attention(q, k, v, bias=bias, kv_mask=mask, causal=True,
                             impl="pallas", return_stats=True)
      return (out.astype(jnp.float32).sum() + stats.cls_probs.sum()
              + stats.key_mass.sum())
    # The loss too: else the statistics' kernel is dead code.
    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias)

  q = jax.ShapeDtypeStruct((2, 700, 4, 64), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((2, 1001, 4, 64), jnp.bfloat16)
  compiled = aot.compile_for(
      aot.tpu_device(generation), grads, q, k, k,
      jax.ShapeDtypeStruct((2, 1001), jnp.float32),
      jax.ShapeDtypeStruct((2, 1001), jnp.bool_))
  _assert_all_kernels(compiled)


@pytest.mark.parametrize("generation", sorted(LONGEST_BF16))
def test_longest_sequence_per_generation(generation):
  device = aot.tpu_device(generation)
  n = LONGEST_BF16[generation]
  aot.compile_for(device, _attention_grad, *_args(1, n, 2, 64, jnp.bfloat16))
  with pytest.raises(Exception, match="Ran out of memory on HBM"):
    aot.compile_for(device, _attention_grad,
                    *_args(1, 2 * n, 2, 64, jnp.bfloat16))


def test_largest_automatic_tiles_fit_v4():
  """The largest tiles `_fit_mosaic_grid` picks by itself (1024 x 1024)
  compile for the TPU with the least VMEM, at the widest validated head dim
  in f32, with the causal skip, gradients and statistics."""
  n = flash._MOSAIC_MAX_AUTO_BLOCK
  blocks = flash.BlockSizes(n, n, n, n)

  def grads(q, k, v, bias):
    def loss(q, k, v, bias):
      out, cls_probs, key_mass = flash.flash_attention(
          q, k, v, bias, causal=True, backend="mosaic", block_sizes=blocks,
          return_stats=True)
      return out.sum() + cls_probs.sum() + key_mass.sum()
    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias)

  _assert_all_kernels(aot.compile_for(
      aot.tpu_device("v4"), grads, *_args(1, 4 * n, 2, 128, jnp.float32)))


def test_unknown_generation():
  with pytest.raises(ValueError, match="unknown TPU generation 'v9'"):
    aot.tpu_device("v9")
