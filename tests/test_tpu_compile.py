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
from maskmodel.kernels import token_matching  # pylint: disable=g-import-not-at-top

if not aot.libtpu_available():
  pytest.skip("compile-only TPU checks need libtpu: make install puts it in "
              ".venv/libtpu-aot", allow_module_level=True)

# Longest N whose attention gradient (D = 64, bf16) compiles; 2N does not:
# K and V (Q and dO in the backward) stay whole in VMEM.
LONGEST_BF16 = {"v4": 4096, "v5e": 32768, "v5p": 16384, "v6e": 32768,
                "tpu7x": 16384}


sys.path.append(str(pathlib.Path(__file__).resolve().parents[1]
                       / "benchmarks"))
# The same programs as the compile table: forward, statistics, gradients.
from tpu_compile import attention_args as _args  # pylint: disable=g-import-not-at-top,wrong-import-position
from tpu_compile import attention_grad as _attention_grad  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.mark.parametrize("generation", sorted(aot.TPU_TOPOLOGIES))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_vit_b_kernels_compile(generation, dtype):
  """Forward, gradients, statistics and matching at ViT-B/16 shapes."""
  device = aot.tpu_device(generation)
  compiled = aot.compile_for(device, _attention_grad,
                             *_args(8, 197, 12, 64, dtype))
  assert "tpu_custom_call" in compiled.as_text()
  a = jax.ShapeDtypeStruct((8, 99, 64), dtype)
  b = jax.ShapeDtypeStruct((8, 98, 64), dtype)
  aot.compile_for(device, lambda a, b: token_matching(
      a, b, class_token=True, impl="pallas"), a, b)


@pytest.mark.parametrize("generation", sorted(LONGEST_BF16))
def test_longest_sequence_per_generation(generation):
  device = aot.tpu_device(generation)
  n = LONGEST_BF16[generation]
  aot.compile_for(device, _attention_grad, *_args(1, n, 2, 64, jnp.bfloat16))
  with pytest.raises(Exception, match="vmem"):
    aot.compile_for(device, _attention_grad,
                    *_args(1, 2 * n, 2, 64, jnp.bfloat16))


def test_unknown_generation():
  with pytest.raises(ValueError, match="unknown TPU generation 'v9'"):
    aot.tpu_device("v9")
