"""Analytic FLOPs of a ViT forward pass under a per-layer token schedule.

Counts the matrix multiplications, 2 FLOPs per multiply-add (the convention
of XLA's cost analysis and of the token-reduction papers' GFLOPs): patch
embedding, per layer the qkv and output projections, the two attention
matmuls (q k^T and probs v) and the MLP, then the classifier head. Layer
norms, softmax, activations, biases and the reducers' own matching are left
out; for ViT widths they are around 1% of the total.

Token reduction happens between attention and MLP (as in ToMe), so layer l
runs attention on the tokens left by layer l - 1 and its MLP on the tokens
it keeps.
"""
from __future__ import annotations

from typing import Optional, Sequence

from maskmodel.tokens.common import static_int


def block_flops(n_in, n_out, width, mlp_ratio):
  """FLOPs per component (dict) of one block on one image: attention on
  `n_in` tokens, then the MLP on the `n_out` tokens its reduction keeps."""
  hidden = int(width * mlp_ratio)
  return {"qkv": 2.0 * n_in * width * 3 * width,
          "attn_scores": 2.0 * n_in * n_in * width,  # heads * n^2 * head_dim
          "attn_values": 2.0 * n_in * n_in * width,
          "attn_proj": 2.0 * n_in * width * width,
          "mlp": 2.0 * 2.0 * n_out * width * hidden}


def vit_flops_breakdown(image_size, patch_size, depth, width, mlp_ratio, heads,
                        tokens_per_layer: Optional[Sequence[int]] = None, *,
                        in_chans=3, num_classes=1000, class_token=True):
  """FLOPs per component (dict of floats) of one image's ViT forward.

  Args:
    image_size, patch_size: ints (square images and patches).
    depth, width, mlp_ratio, heads: transformer shape; width % heads == 0.
    tokens_per_layer: tokens left after each layer's reduction (length
      depth, class token included); None means no reduction.
    in_chans, num_classes: input channels and classifier outputs (0: no
      head).
    class_token: whether a [CLS] token is prepended.
  """
  depth = static_int(depth, "depth")
  if width % heads:
    raise ValueError(f"width={width} is not divisible by heads={heads}.")
  num_patches = (image_size // patch_size) ** 2
  n0 = num_patches + int(bool(class_token))
  kept = [n0] * depth if tokens_per_layer is None else list(tokens_per_layer)
  if len(kept) != depth:
    raise ValueError(f"tokens_per_layer has {len(kept)} entries for depth="
                     f"{depth}; give one per layer.")
  out = {
      "patch_embed": 2.0 * num_patches * patch_size * patch_size * in_chans
                     * width,
      "qkv": 0.0, "attn_scores": 0.0, "attn_values": 0.0, "attn_proj": 0.0,
      "mlp": 0.0,
      "head": 2.0 * width * num_classes,
  }
  n_in = n0
  for n_out in kept:
    if n_out > n_in:
      raise ValueError(f"tokens_per_layer must be non-increasing from {n0}; "
                       f"got {kept}.")
    for name, flops in block_flops(n_in, n_out, width, mlp_ratio).items():
      out[name] += flops
    n_in = n_out
  out["total"] = sum(out.values())
  return out


def vit_flops(image_size, patch_size, depth, width, mlp_ratio, heads,
              tokens_per_layer=None, **kwargs):
  """Total FLOPs of one image's ViT forward (see `vit_flops_breakdown`)."""
  return vit_flops_breakdown(image_size, patch_size, depth, width, mlp_ratio,
                             heads, tokens_per_layer, **kwargs)["total"]
