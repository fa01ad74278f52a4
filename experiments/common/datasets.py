"""Datasets through tensorflow-datasets, including two builders generated offline.

``mnist1d`` (Greydanus, "Scaling down deep learning", 2020) is generated locally by
the ``mnist1d`` package's ``make_dataset`` with its default arguments: 4000 train
and 1000 test signals of length 40. ``digits`` is scikit-learn's 8x8 digits
(1797 images; a fixed 80/20 split). Neither downloads anything. ``cifar10``,
``cifar100`` and ``imagenet2012`` are the standard tfds datasets and must be
prepared beforehand (see :func:`builder`).
"""

import contextlib
import dataclasses
import fcntl
import io
import os
from typing import ClassVar, Iterator, Tuple

from absl import logging
import numpy as np
import tensorflow_datasets as tfds


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the input pipeline needs to know about a dataset."""
  input_key: str
  input_shape: Tuple[int, ...]
  num_classes: int
  train_split: str
  test_split: str
  kind: str  # 'signal', 'small_image', 'cifar' or 'imagenet'


DATASETS = {
    'mnist1d': DatasetSpec('signal', (40, 1), 10, 'train', 'test', 'signal'),
    'digits': DatasetSpec('image', (8, 8, 1), 10, 'train', 'test', 'small_image'),
    'cifar10': DatasetSpec('image', (32, 32, 3), 10, 'train', 'test', 'cifar'),
    'cifar100': DatasetSpec('image', (32, 32, 3), 100, 'train', 'test', 'cifar'),
    'imagenet2012': DatasetSpec('image', (224, 224, 3), 1000, 'train', 'validation', 'imagenet'),
}
GENERATED = ('mnist1d', 'digits')


class Mnist1d(tfds.core.GeneratorBasedBuilder):
  """MNIST-1D, generated locally by ``mnist1d.data.make_dataset`` (default arguments)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES: ClassVar[dict] = {
      '1.0.0': 'mnist1d 0.0.2 make_dataset with get_dataset_args() defaults.'}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description='MNIST-1D: 1-D signals of the ten digit templates with shifts, '
                    'scaling, shear and noise (Greydanus, 2020).',
        features=tfds.features.FeaturesDict({
            'signal': tfds.features.Tensor(shape=(40, 1), dtype=np.float32),
            'label': tfds.features.ClassLabel(num_classes=10)}),
        supervised_keys=('signal', 'label'))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    from mnist1d import data  # pylint: disable=g-import-not-at-top
    generated = data.make_dataset(data.get_dataset_args())
    return {'train': self._generate_examples(generated['x'], generated['y']),
            'test': self._generate_examples(generated['x_test'], generated['y_test'])}

  def _generate_examples(self, signals, labels):
    for i, (signal, label) in enumerate(zip(signals, labels)):
      yield i, {'signal': np.asarray(signal, np.float32)[:, None], 'label': int(label)}


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits, split 80/20 by a fixed permutation."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES: ClassVar[dict] = {'1.0.0': 'sklearn.datasets.load_digits, permutation seed 0.'}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description='UCI ML hand-written digits (8x8, values 0..16) from scikit-learn.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.float32),
            'label': tfds.features.ClassLabel(num_classes=10)}),
        supervised_keys=('image', 'label'))

  def _split_generators(self, dl_manager):
    del dl_manager
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    digits = datasets.load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    cut = int(0.8 * len(order))
    return {'train': self._generate_examples(digits.images, digits.target, order[:cut]),
            'test': self._generate_examples(digits.images, digits.target, order[cut:])}

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      yield int(i), {'image': (images[i] / 16.0).astype(np.float32)[:, :, None],
                     'label': int(labels[i])}


def _how_to_prepare(name: str, data_dir: str) -> str:
  if name == 'imagenet2012':
    return (f'ImageNet must be downloaded by hand (it needs a login): put ILSVRC2012_img_train.tar '
            f'and ILSVRC2012_img_val.tar in {data_dir}/downloads/manual/ and run '
            f'`tfds build imagenet2012 --data_dir={data_dir}` on a machine with internet.')
  return (f'Prepare it once on a machine with internet: `tfds build {name} '
          f'--data_dir={data_dir}` (or python -c "import tensorflow_datasets as tfds; '
          f'tfds.builder(\'{name}\', data_dir=\'{data_dir}\').download_and_prepare()"), '
          f'then copy {data_dir}/{name} here.')


def _prepare_once(result: tfds.core.DatasetBuilder, data_dir: str, name: str) -> None:
  """Generates ``name`` under an exclusive file lock, so that processes started together
  (the quality benchmark's workers, the hosts of a multi-process run sharing a disk)
  generate it once instead of racing to rename the same directory."""
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, f'.{name}.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      if not result.is_prepared():  # another process may have finished while we waited
        result.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
  """tfds's output while it looks up and builds a generated dataset, held back: its
  "Downloading and preparing" lines (nothing is downloaded), its progress bars and its
  warnings about the variant folder it is about to write."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  tfds.disable_progress_bar()
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tfds.enable_progress_bar()
    logging.set_verbosity(verbosity)


def builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """The prepared tfds builder of ``name``; generated datasets are prepared on first use.

  Raises:
    ValueError: for an unknown dataset name, or a downloadable dataset that has
      not been prepared in ``data_dir`` (the message says how to prepare it).
  """
  if name not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; choose one of {sorted(DATASETS)}.')
  data_dir = os.path.expanduser(data_dir)
  if name in GENERATED:
    result = generated_builder(name, data_dir)
  else:
    result = tfds.builder(name, data_dir=data_dir)
  if not result.is_prepared():
    raise ValueError(f'Dataset {name!r} is not prepared in {data_dir}. '
                     + _how_to_prepare(name, data_dir))
  return result


def generated_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """The tfds builder of ``name``, a dataset generated locally (``GENERATED``, or one
  registered elsewhere such as :mod:`experiments.charlm.input_pipeline`'s), generated in
  ``data_dir`` on first use."""
  data_dir = os.path.expanduser(data_dir)
  with _quiet_tfds():
    result = tfds.builder(name, data_dir=data_dir)
    prepared = result.is_prepared()
  if not prepared:
    print(f'Generating {name} in {data_dir} (once, locally; nothing is downloaded).',
          flush=True)
    with _quiet_tfds():
      _prepare_once(result, data_dir, name)
      result = tfds.builder(name, data_dir=data_dir)  # with the split sizes just recorded
  return result
