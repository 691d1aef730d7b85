"""The peer of `mae_step.py`: the same MAE ViT-B/16 train step in PyTorch.

A PyTorch MAE written after the paper (He et al. 2021) and its reference
code's structure: conv patch embedding of all 196 patches, per-sample random
masking by argsort of noise (keep 49), timm `Block`s (pre-LN, qkv bias,
exact GELU, LayerNorm eps 1e-6) for the 12 x 768 encoder and the 8 x 512
decoder, mask tokens and un-shuffle, normalized-pixel MSE on the masked
patches, `torch.optim.AdamW` (0.9, 0.95), weight decay 0.05 on matrices
only. Float32, batch 8, 224x224x3 synthetic images.

MFU is computed as in `mae_step.py`: FLOPs per step / median step time /
best f32 matmul peak, the peak measured with `torch.matmul` on square
matrices in this process before every timed repeat. PyTorch has no cost
analysis, so the FLOPs are `mae_step.py`'s analytic count (matmuls only;
XLA's count for the same step is 0.8% higher); the JSON repeats
`mfu_analytic` so the two scripts compare like with like.

  pip install torch timm                               # benchmark-only
  python benchmarks/mae_step_torch.py --repeats 5 --out mae_step_torch.json
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time

import torch
from timm.models.vision_transformer import Block
from torch import nn

import common  # pylint: disable=g-bad-import-order
import mae_step  # pylint: disable=g-bad-import-order

PATCH, IMAGE = 16, 224


class MAE(nn.Module):
  """MAE with a ViT-B/16 encoder and the 8 x 512 decoder."""

  def __init__(self, width=768, depth=12, heads=12, dec_width=512,
               dec_depth=8, dec_heads=16, mask_ratio=0.75):
    super().__init__()
    n = (IMAGE // PATCH) ** 2
    self.keep = int(n * (1 - mask_ratio))
    norm = functools.partial(nn.LayerNorm, eps=1e-6)
    block = lambda w, h: Block(w, h, 4.0, qkv_bias=True, norm_layer=norm)
    self.patch_embed = nn.Conv2d(3, width, PATCH, PATCH)
    self.cls = nn.Parameter(torch.zeros(1, 1, width))
    # Fixed (non-trained) position embeddings; their values do not change
    # the cost, so zeros stand in for the sin-cos table.
    self.register_buffer("pos", torch.zeros(1, n + 1, width))
    self.blocks = nn.ModuleList(block(width, heads) for _ in range(depth))
    self.norm = nn.LayerNorm(width, eps=1e-6)
    self.dec_embed = nn.Linear(width, dec_width)
    self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_width))
    self.register_buffer("dec_pos", torch.zeros(1, n + 1, dec_width))
    self.dec_blocks = nn.ModuleList(block(dec_width, dec_heads)
                                    for _ in range(dec_depth))
    self.dec_norm = nn.LayerNorm(dec_width, eps=1e-6)
    self.pred = nn.Linear(dec_width, PATCH * PATCH * 3)

  def forward(self, images):
    b = images.shape[0]
    x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos[:, 1:]
    n, width = x.shape[1], x.shape[2]
    ids_shuffle = torch.argsort(torch.rand(b, n), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :self.keep]
    x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, width))
    mask = torch.ones(b, n)
    mask[:, :self.keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    x = torch.cat([(self.cls + self.pos[:, :1]).expand(b, -1, -1), x], 1)
    for blk in self.blocks:
      x = blk(x)
    x = self.dec_embed(self.norm(x))
    dw = x.shape[2]
    hidden = self.mask_token.expand(b, n - self.keep, -1)
    y = torch.cat([x[:, 1:], hidden], 1)
    y = torch.gather(y, 1, ids_restore[..., None].expand(-1, -1, dw))
    x = torch.cat([x[:, :1], y], 1) + self.dec_pos
    for blk in self.dec_blocks:
      x = blk(x)
    pred = self.pred(self.dec_norm(x))[:, 1:]
    # Patchify as (p, p, C) per patch, patches in row-major order.
    g = IMAGE // PATCH
    target = images.reshape(b, 3, g, PATCH, g, PATCH)
    target = torch.einsum("nchpwq->nhwpqc", target).reshape(b, n, -1)
    mean = target.mean(-1, keepdim=True)
    var = target.var(-1, keepdim=True)
    target = (target - mean) / (var + 1e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(-1)
    return (loss * mask).sum() / mask.sum()


def matmul_peak(size=2048, reps=3):
  a, b = torch.randn(size, size), torch.randn(size, size)
  best = 0.0
  for _ in range(reps):
    t0 = time.perf_counter()
    torch.matmul(a, b)
    best = max(best, 2.0 * size**3 / (time.perf_counter() - t0))
  return best


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count())
  model = MAE()
  decay = [q for q in model.parameters() if q.ndim > 1]
  no_decay = [q for q in model.parameters() if q.ndim <= 1]
  opt = torch.optim.AdamW([dict(params=decay, weight_decay=0.05),
                           dict(params=no_decay, weight_decay=0.0)],
                          lr=1.5e-4 * args.batch / 256, betas=(0.9, 0.95))
  images = torch.randn(args.batch, 3, IMAGE, IMAGE)

  def step():
    opt.zero_grad(set_to_none=True)
    loss = model(images)
    loss.backward()
    opt.step()
    return loss

  for _ in range(args.warmup):
    step()
  flops = mae_step.analytic_step_flops(
      mae_step.vit_b16_mae_config(args.batch))["total"]
  step_s, peaks = [], []
  for _ in range(args.repeats):
    peaks.append(matmul_peak())
    t0 = time.perf_counter()
    for _ in range(args.steps):
      loss = step()
    step_s.append((time.perf_counter() - t0) / args.steps)
  peaks.append(matmul_peak())
  med, best_peak = statistics.median(step_s), max(peaks)
  result = dict(
      benchmark="mae_vit_b16_train_step_torch", batch=args.batch,
      params=sum(q.numel() for q in model.parameters()),
      step_ms_median=1e3 * med,
      step_ms_per_repeat=[round(1e3 * s, 1) for s in step_s],
      img_per_s=args.batch / med, flops_per_step_analytic=flops,
      matmul_peak_flop_per_s=best_peak,
      matmul_peak_per_repeat=[round(x / 1e9, 1) for x in peaks],
      mfu_analytic=flops / med / best_peak,
      mfu_analytic_paired=statistics.median(
          flops / s / q for s, q in zip(step_s, peaks)),
      loss=loss.item(), torch=torch.__version__,
      threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
      python=platform.python_version())
  common.emit_json(result, args.out, indent=2)


if __name__ == "__main__":
  sys.exit(main())
