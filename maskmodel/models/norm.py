"""LayerNorm (Ba et al. 2016) with a hand-written backward pass.

The forward computes `flax.linen.LayerNorm`'s function (f32 statistics,
the one-pass variance `max(0, E[x^2] - E[x]^2)`, the same params `scale`
and `bias`), so checkpoints are interchangeable with it and outputs agree
to rounding. The backward is the
closed form, with x_hat = (x - mean) * rstd and g = dy * scale:

  dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)),
  d_scale = sum(dy * x_hat),  d_bias = sum(dy),

summed over all but the last axis. It saves x_hat and reads it back, where
autodiff of the forward rebuilt x_hat from a broadcast of rstd that XLA's
CPU backend wrote out in full for the d_scale reduction; the ViT-B/16 MAE
train step before and after is in `benchmarks/README.md`.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


def _forward(x, scale, bias, epsilon):
  mean = x.mean(axis=-1, keepdims=True)
  var = jnp.maximum((x * x).mean(axis=-1, keepdims=True) - mean * mean, 0.0)
  rstd = jax.lax.rsqrt(var + epsilon)
  x_hat = (x - mean) * rstd
  return x_hat * scale + bias, (x_hat, rstd, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x, scale, bias, epsilon):
  """LayerNorm over the last axis of f32 `x`; `scale`, `bias` are `[D]`."""
  return _forward(x, scale, bias, epsilon)[0]


def _layer_norm_bwd(epsilon, residuals, dy):
  del epsilon
  x_hat, rstd, scale = residuals
  g = dy * scale
  dx = rstd * (g - g.mean(axis=-1, keepdims=True)
               - x_hat * (g * x_hat).mean(axis=-1, keepdims=True))
  batch_axes = tuple(range(dy.ndim - 1))
  return dx, (dy * x_hat).sum(batch_axes), dy.sum(batch_axes)


layer_norm.defvjp(_forward, _layer_norm_bwd)


class LayerNorm(nn.Module):
  """Drop-in for `nn.LayerNorm(epsilon=...)`: f32 statistics and output."""
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (width,))
    bias = self.param("bias", nn.initializers.zeros, (width,))
    return layer_norm(x.astype(jnp.float32), scale, bias, self.epsilon)
