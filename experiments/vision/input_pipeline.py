"""Input pipelines over tfds, deterministic per (seed, epoch) so runs can resume.

Datasets that fit in memory without augmentation (mnist1d, digits) are read once
into numpy and batched there; images (CIFAR, ImageNet) stream through tf.data.

Augmentation follows the paper's recipe (Jacobs & Burkholz, ICLR 2025): CIFAR random
crop with 4-pixel padding and horizontal flip; ImageNet random-resized (Inception)
crop to 224 and flip for training, resize to 256 and center crop 224 for evaluation.
Augmentation uses stateless random ops seeded by (seed, epoch, example index).
"""

import functools
from typing import Iterator, Optional, Tuple

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from experiments.common import datasets

tf.config.set_visible_devices([], 'GPU')  # tf.data runs on the host; JAX owns accelerators

STREAMED = ('cifar', 'imagenet')  # encoded, augmented images; other kinds fit in memory
MEANS = {'cifar': (0.4914, 0.4822, 0.4465), 'imagenet': (0.485, 0.456, 0.406)}
STDS = {'cifar': (0.2470, 0.2435, 0.2616), 'imagenet': (0.229, 0.224, 0.225)}


def _normalize(image, kind):
  image = tf.cast(image, tf.float32) / 255.0
  return (image - MEANS[kind]) / STDS[kind]


def _augment(image, kind, seed):
  if kind == 'cifar':
    padded = tf.pad(image, [[4, 4], [4, 4], [0, 0]], mode='REFLECT')
    image = tf.image.stateless_random_crop(padded, (32, 32, 3), seed=seed)
    return tf.image.stateless_random_flip_left_right(image, seed=seed + 1)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), tf.zeros([0, 0, 4]), seed=seed, min_object_covered=0.1,
      aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  image = tf.image.resize(tf.slice(image, begin, size), (224, 224))
  return tf.image.stateless_random_flip_left_right(image, seed=seed + 1)


def _center_crop(image):
  shape = tf.shape(image)
  scale = 256.0 / tf.cast(tf.minimum(shape[0], shape[1]), tf.float32)
  new = tf.cast(tf.round(tf.cast(shape[:2], tf.float32) * scale), tf.int32)
  image = tf.image.resize(image, new)
  top, left = (new[0] - 224) // 2, (new[1] - 224) // 2
  return tf.image.crop_to_bounding_box(image, top, left, 224, 224)


def _preprocess(spec: datasets.DatasetSpec, train: bool, seed: int, epoch: int):
  def fn(index, example):
    x = example[spec.input_key]
    if train:
      x = _augment(x, spec.kind, tf.stack([seed * 1_000_003 + epoch, index]))
    elif spec.kind == 'imagenet':
      x = _center_crop(x)
    return {'input': tf.cast(_normalize(x, spec.kind), tf.float32), 'label': example['label']}
  return fn


def process_rows(sharding: jax.sharding.Sharding, batch_size: int) -> Tuple[int, int]:
  """The rows ``[lo, hi)`` of a global batch that this process's devices hold.

  ``sharding`` shards the batch axis (``P('data')`` on the mesh); with the devices of
  each process contiguous in the mesh, as ``jax.devices()`` orders them, these rows
  are one contiguous block.
  """
  indices = sharding.addressable_devices_indices_map((batch_size,)).values()
  starts = sorted(index[0].start or 0 for index in indices)
  stops = sorted(batch_size if index[0].stop is None else index[0].stop for index in indices)
  if any(stop != start for stop, start in zip(stops[:-1], starts[1:])):
    raise ValueError('This process\'s devices hold non-contiguous rows of the batch; '
                     'build the mesh from jax.devices() in order.')
  return starts[0], stops[-1]


def epoch_batches(builder: tfds.core.DatasetBuilder, spec: datasets.DatasetSpec, split: str,
                  batch_size: int, *, train: bool, seed: int, epoch: int,
                  rows: Optional[Tuple[int, int]] = None
                  ) -> Iterator[Tuple[dict, np.ndarray]]:
  """This process's rows of every global batch of one epoch, as (batch, mask) numpy pairs.

  The sequence of global batches depends on (seed, epoch) alone, not on the number of
  processes or devices: every process reads the whole split in the same order
  (training: shuffled with a seed made of (seed, epoch), remainder dropped), forms
  global batches of ``batch_size``, and keeps the rows ``rows = [lo, hi)`` its devices
  hold (:func:`process_rows`; default: all rows), before decoding and augmentation.
  Evaluation covers every example exactly once: the last global batch is padded and
  ``mask`` marks real examples, and every process yields the same number of batches.
  """
  lo, hi = rows if rows is not None else (0, batch_size)
  if spec.kind not in STREAMED:
    yield from _in_memory_batches(_load(builder, split, spec.input_key), batch_size,
                                  train=train, seed=seed, epoch=epoch, rows=(lo, hi))
    return
  # Encoded images are decoded after the row filter, by the process that keeps them: a
  # host does not decode the other hosts' examples.
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={spec.input_key: tfds.decode.SkipDecoding()})
  num_examples = int(ds.cardinality().numpy())
  if train:
    ds = ds.shuffle(min(num_examples, 50_000), seed=seed * 1_000_003 + epoch,
                    reshuffle_each_iteration=False)
    num_batches = num_examples // batch_size
  else:
    num_batches = -(-num_examples // batch_size)
  ds = ds.enumerate().take(num_batches * batch_size)
  ds = ds.filter(lambda i, _: (i % batch_size >= lo) & (i % batch_size < hi))
  feature = builder.info.features[spec.input_key]
  ds = ds.map(lambda i, example: (i, {**example, spec.input_key: feature.decode_example(
      example[spec.input_key])}))
  ds = ds.map(_preprocess(spec, train, seed, epoch), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  local_batch = hi - lo
  batches = iter(tfds.as_numpy(ds.batch(local_batch).prefetch(2)))
  for _ in range(num_batches):
    batch = next(batches, None)
    size = 0 if batch is None else len(batch['label'])
    mask = np.arange(local_batch) < size
    if size < local_batch:  # the padded tail of the last evaluation batch
      batch = _padded(batch, local_batch) if batch is not None else _empty(local_batch, spec)
    yield batch, mask


@functools.lru_cache(maxsize=8)
def _load(builder: tfds.core.DatasetBuilder, split: str, input_key: str) -> dict:
  """A whole split as numpy arrays ``{'input', 'label'}`` in its stored order."""
  data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
  return {'input': np.asarray(data[input_key], np.float32), 'label': data['label']}


def _in_memory_batches(data: dict, batch_size: int, *, train: bool, seed: int, epoch: int,
                       rows: Tuple[int, int]) -> Iterator[Tuple[dict, np.ndarray]]:
  """:func:`epoch_batches` for a split held in memory: training order is a permutation
  seeded by (seed, epoch), the remainder dropped; evaluation pads the last batch."""
  lo, hi = rows
  num_examples = len(data['label'])
  if train:
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    num_batches = num_examples // batch_size
  else:
    order = np.arange(num_examples)
    num_batches = -(-num_examples // batch_size)
  for b in range(num_batches):
    chosen = order[b * batch_size + lo:min(b * batch_size + hi, num_examples)]
    batch = {key: value[chosen] for key, value in data.items()}
    mask = np.arange(hi - lo) < len(chosen)
    yield _padded(batch, hi - lo), mask


def _padded(batch: dict, size: int) -> dict:
  """``batch`` with zero rows appended up to ``size``."""
  return {k: np.concatenate([v, np.zeros((size - len(v),) + v.shape[1:], v.dtype)])
          for k, v in batch.items()}


def _empty(size: int, spec: datasets.DatasetSpec) -> dict:
  """An all-padding batch (this process holds no real example of the last batch)."""
  return {'input': np.zeros((size,) + tuple(spec.input_shape), np.float32),
          'label': np.zeros((size,), np.int64)}


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
  """The examples in ``split`` (a tfds split name, sliced or not)."""
  return int(builder.as_dataset(split=split).cardinality().numpy())


def steps_per_epoch(builder: tfds.core.DatasetBuilder, split: str, batch_size: int) -> int:
  """Training steps per epoch over the whole split (the remainder is dropped)."""
  return num_examples(builder, split) // batch_size
