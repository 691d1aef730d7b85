"""grain input pipelines: deterministic, seekable, sharded across processes.

A training pipeline is `source -> shard(process) -> shuffle(seed) -> repeat ->
random_map(preprocess) -> batch`, where `preprocess` is the task's
(`Task.preprocess`; images by default). Every random choice is derived from the seed
and the element index, so the iterator state (`{"next_index": k}`) restores
the exact same stream after a restart.

Across processes: each process reads its own shard (every
`process_count`-th record), and its random crops and flips are drawn from
`augment_seed(seed, process_index)`. grain seeds an element's random map
from the seed and the *local* index, so with one seed for all, element k of
every host would get the same crop and flip. Process 0 keeps `seed` itself,
so single-process runs draw exactly what they drew before.
"""
from __future__ import annotations

import dataclasses

import grain
import jax
import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class ImageSpec:
  """Output image size and normalization: (x/255 - mean) / std.

  Eval images are resized so their shorter side is `size / eval_crop`, then
  center-cropped to `size` x `size` (the standard ImageNet eval is
  `eval_crop=0.875`: resize to 256, crop 224). A square image at 1.0 is
  simply resized.
  """
  size: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  eval_crop: float = 1.0


def image_spec(data_config) -> ImageSpec:
  """The `ImageSpec` of a config's `data` section."""
  d = data_config
  return ImageSpec(size=d.image_size, mean=tuple(d.mean), std=tuple(d.std),
                   eval_crop=d.eval_crop)


def _resize(image: np.ndarray, size: int, box=None) -> np.ndarray:
  squeeze = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  out = np.asarray(pil.resize((size, size), Image.BICUBIC, box=box))
  return out[..., None] if squeeze else out


def random_resized_crop(image, size, rng, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
  """Inception-style crop (as torchvision's RandomResizedCrop) and resize."""
  h, w = image.shape[:2]
  area = h * w
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    cw = int(round(np.sqrt(target * aspect)))
    ch = int(round(np.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      y0 = int(rng.integers(0, h - ch + 1))
      x0 = int(rng.integers(0, w - cw + 1))
      return _resize(image, size, box=(x0, y0, x0 + cw, y0 + ch))
  return _resize(image, size)  # fall back to the whole image


def normalize(image, spec: ImageSpec):
  x = image.astype(np.float32) / 255.0
  return (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)


def center_crop(image, size, crop=1.0):
  """Resize the shorter side to `size / crop` and cut the central
  `size` x `size` square, in one resampling of the source box."""
  h, w = image.shape[:2]
  side = min(h, w) * crop  # the source square that becomes `size` pixels
  y0, x0 = (h - side) / 2, (w - side) / 2
  return _resize(image, size, box=(x0, y0, x0 + side, y0 + side))


def eval_preprocess(record, spec: ImageSpec):
  image = record["image"]
  if image.shape[:2] != (spec.size, spec.size) or spec.eval_crop != 1.0:
    image = center_crop(image, spec.size, spec.eval_crop)
  return {"image": normalize(image, spec), "label": record["label"]}


def train_augment(record, rng, spec: ImageSpec, crop_scale, flip):
  image = record["image"]
  if crop_scale is not None:
    image = random_resized_crop(image, spec.size, rng, scale=tuple(crop_scale))
  elif image.shape[0] != spec.size:
    image = _resize(image, spec.size)
  if flip and rng.uniform() < 0.5:
    image = image[:, ::-1]
  return {"image": normalize(image, spec), "label": record["label"]}


def augment_seed(seed: int, process_index: int) -> int:
  """The seed of process `process_index`'s random augmentations: `seed`
  itself for process 0 (single-process runs are unchanged), a distinct
  32-bit seed derived from (seed, process_index) for the others."""
  if process_index == 0:
    return seed
  return int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])


def train_dataset(source, *, batch_size: int, seed: int, spec: ImageSpec = None,
                  crop_scale=None, flip=False, preprocess=None,
                  process_index: int = None, process_count: int = None
                  ) -> grain.MapDataset:
  """Infinite, reshuffled-per-epoch, preprocessed batches of this process's
  share. `batch_size` is per process.

  `preprocess(record, rng) -> dict` makes one example from a source record
  with a numpy Generator seeded by `augment_seed(seed, process_index)` and
  the element's index (a task's `preprocess`, which may return several views
  or token ids). Without it, `train_augment` with `spec`, `crop_scale` and
  `flip`. `process_index` and `process_count` default to JAX's.
  """
  if preprocess is None:
    preprocess = lambda r, rng: train_augment(r, rng, spec, crop_scale, flip)
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  ds = grain.MapDataset.source(source)
  if count > 1:
    ds = ds[index::count]
  # The shuffle needs no per-process seed: each process shuffles its own shard.
  ds = ds.shuffle(seed=seed).repeat(None)
  ds = ds.random_map(preprocess, seed=augment_seed(seed, index))
  return ds.batch(batch_size, drop_remainder=True)


def train_iterator(ds: grain.MapDataset, num_threads: int = 2):
  """A checkpointable iterator (`get_state()` / `set_state()`) with prefetch."""
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                   prefetch_buffer_size=4)))


def eval_batches(source, *, batch_size: int, spec: ImageSpec = None,
                 preprocess=None, local: bool = False, num_threads: int = 0):
  """Yields (batch, n_valid) over the whole split in global batches of
  `batch_size` rows, the last one padded (with copies of the last record).

  `preprocess(record) -> dict` makes one example (a task's `preprocess` with
  `train=False`); without it, `eval_preprocess` with `spec`. Padding keeps
  one static shape for the jitted eval step; callers drop the padded rows
  with `n_valid`, the real rows of the global batch.

  `local=True` yields only this process's share of each global batch, rows
  `[p * L, (p + 1) * L)` with `L = batch_size / process_count`, so each
  host decodes 1/P of the split; `sharding.shard_batch` assembles the
  global batch, and a gather of its rows (`sharding.to_host`) gives them
  back in global order. `num_threads` > 0 decodes with that many grain
  threads (order kept); 0 decodes inline.
  """
  if preprocess is None:
    preprocess = lambda r: eval_preprocess(r, spec)
  n = len(source)
  if not n:
    return
  procs, proc = (jax.process_count(), jax.process_index()) if local else (1, 0)
  if batch_size % procs:
    raise ValueError(f"eval batch size {batch_size} is not divisible by the "
                     f"{procs} processes; set evals.batch_size to a multiple.")
  rows = batch_size // procs
  starts = range(0, n, batch_size)
  order = np.concatenate([np.minimum(np.arange(s + proc * rows, s + (proc + 1) * rows),
                                     n - 1) for s in starts])
  ds = grain.MapDataset.source(order).map(
      lambda i: preprocess(source[int(i)])).batch(rows)
  if num_threads:
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                              prefetch_buffer_size=2))
  for start, batch in zip(starts, ds):
    yield batch, int(min(batch_size, n - start))
