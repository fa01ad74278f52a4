"""tf.data input pipelines over tfds, deterministic per (seed, epoch) so runs can resume.

Augmentation follows the paper's recipe (Jacobs & Burkholz, ICLR 2025): CIFAR random
crop with 4-pixel padding and horizontal flip; ImageNet random-resized (Inception)
crop to 224 and flip for training, resize to 256 and center crop 224 for evaluation.
Augmentation uses stateless random ops seeded by (seed, epoch, example index).
"""

from typing import Iterator, Tuple

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from experiments import datasets

tf.config.set_visible_devices([], 'GPU')  # tf.data runs on the host; JAX owns accelerators

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
    if spec.kind in ('cifar', 'imagenet'):
      if train:
        x = _augment(x, spec.kind, tf.stack([seed * 1_000_003 + epoch, index]))
      elif spec.kind == 'imagenet':
        x = _center_crop(x)
      x = _normalize(x, spec.kind)
    return {'input': tf.cast(x, tf.float32), 'label': example['label']}
  return fn


def epoch_batches(builder: tfds.core.DatasetBuilder, spec: datasets.DatasetSpec, split: str,
                  batch_size: int, *, train: bool, seed: int, epoch: int
                  ) -> Iterator[Tuple[dict, np.ndarray]]:
  """This process's share of one epoch, as (batch, mask) numpy pairs.

  ``batch_size`` is the global batch; each of ``jax.process_count()`` hosts reads its
  own part of the split (``tfds.split_for_jax_process``) and yields
  ``batch_size / process_count`` examples per step. Training batches are shuffled
  with a seed made of (seed, epoch) and drop the remainder; evaluation batches keep
  every example and pad the last one, with ``mask`` marking real examples.
  """
  processes = jax.process_count()
  if batch_size % processes:
    raise ValueError(f'`batch_size` ({batch_size}) must be divisible by the number of '
                     f'processes ({processes}).')
  local_batch = batch_size // processes
  ds = builder.as_dataset(split=tfds.split_for_jax_process(split), shuffle_files=False)
  num_examples = int(ds.cardinality().numpy())
  if train:
    ds = ds.shuffle(min(num_examples, 50_000), seed=seed * 1_000_003 + epoch,
                    reshuffle_each_iteration=False)
  ds = ds.enumerate().map(_preprocess(spec, train, seed, epoch),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=train).prefetch(2)
  for batch in tfds.as_numpy(ds):
    size = len(batch['label'])
    mask = np.ones(local_batch, bool)
    if size < local_batch:
      mask[size:] = False
      batch = {k: np.concatenate([v, np.zeros((local_batch - size,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch, mask


def steps_per_epoch(builder: tfds.core.DatasetBuilder, split: str, batch_size: int) -> int:
  """Training steps per epoch over the whole split (the remainder is dropped)."""
  return int(builder.as_dataset(split=split).cardinality().numpy()) // batch_size
