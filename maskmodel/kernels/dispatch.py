"""The `impl` switch shared by every kernel entry point.

- `xla`: the plain-jnp reference, compiled by XLA on any backend.
- `pallas`: the Pallas kernel compiled for the default backend: Triton on
  GPU, Mosaic on TPU. There is no compiled Pallas on CPU.
- `interpret`: the same Pallas kernel run by the Pallas interpreter
  (`interpret=True`); slow, but runs anywhere, so CPU tests use it.
- `auto`: `pallas` on GPU/TPU, `xla` elsewhere.
"""
from __future__ import annotations

import jax

IMPLS = ("auto", "xla", "pallas", "interpret")

_TRITON_PLATFORMS = ("gpu", "cuda", "rocm")


def kernel_backend(platform: str | None = None) -> str | None:
  """'triton' on GPU, 'mosaic' on TPU, None where Pallas cannot compile."""
  platform = jax.default_backend() if platform is None else platform
  if platform in _TRITON_PLATFORMS:
    return "triton"
  if platform == "tpu":
    return "mosaic"
  return None


def resolve_impl(impl: str, op: str = "kernel") -> str:
  """Validates `impl` and resolves `auto`; returns xla|pallas|interpret."""
  if impl not in IMPLS:
    raise ValueError(f"{op} impl={impl!r} is unknown; use one of {IMPLS}.")
  backend = kernel_backend()
  if impl == "auto":
    return "pallas" if backend is not None else "xla"
  if impl == "pallas" and backend is None:
    raise ValueError(
        f"{op} impl='pallas' compiles for GPU (Triton) or TPU (Mosaic), but the "
        f"default backend is {jax.default_backend()!r}; use impl='interpret' "
        "to run the same kernel on CPU, or impl='xla'.")
  return impl
