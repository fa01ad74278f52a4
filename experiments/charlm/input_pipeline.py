"""The text of the character LM: optax's own source, generated offline as a tfds dataset.

``optax_source`` is the Python source of the optax package the project pins
(constraints.txt: optax 0.2.8, a pure-Python wheel, so the same bytes on every
platform): its 77 modules without tests, in sorted path order, concatenated; 876,353
bytes of code and docstrings. Nothing is downloaded: like ``mnist1d``
(:mod:`experiments.common.datasets`) it is generated on first use. The text is checked
against its SHA-256, so another optax refuses to build rather than give other data.

Splits are contiguous: the first 80% of the bytes are ``train``, the next 10%
``validation``, the last 10% ``test``. Tokens are bytes (a vocabulary of 256).

Batches: a training step takes ``batch_size`` windows of ``context + 1`` bytes at
offsets drawn uniformly from the training text, seeded by (seed, epoch), so a resumed or
repeated run sees the same data; evaluation tiles a split with non-overlapping windows
and scores each byte of a window after its first.
"""

import hashlib
import importlib.metadata
import pathlib
from typing import ClassVar, Iterator, Tuple

import numpy as np
import tensorflow_datasets as tfds

from experiments.common import datasets

NAME = 'optax_source'
SOURCE_VERSION = '0.2.8'
SOURCE_SHA256 = '5c8f1d4f69710e7febd5646f5032639069b0e7cdc2c285e92d669ae91bca5e47'
SPLITS = {'train': (0.0, 0.8), 'validation': (0.8, 0.9), 'test': (0.9, 1.0)}


def source_text() -> bytes:
  """optax's modules (tests left out) in sorted path order, checked against SOURCE_SHA256.

  Raises:
    ValueError: if the installed optax's source differs from the pinned one's.
  """
  import optax  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(optax.__file__).parent
  paths = sorted(p.relative_to(root).as_posix() for p in root.rglob('*.py')
                 if not p.name.endswith('_test.py'))
  text = b''.join((root / p).read_bytes() for p in paths)
  digest = hashlib.sha256(text).hexdigest()
  if digest != SOURCE_SHA256:
    raise ValueError(
        f'{NAME}: the source of the installed optax {importlib.metadata.version("optax")} '
        f'(sha256 {digest[:12]}...) is not the text this dataset is defined on (optax '
        f'{SOURCE_VERSION}, sha256 {SOURCE_SHA256[:12]}...); install the pinned versions '
        '(pip install -c constraints.txt -e .[experiments]).')
  return text


class OptaxSource(tfds.core.GeneratorBasedBuilder):
  """optax 0.2.8's source as bytes; one example per split holding the whole split."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES: ClassVar[dict] = {
      '1.0.0': f'optax {SOURCE_VERSION} modules without tests, sha256 {SOURCE_SHA256}; '
               'contiguous 80/10/10 splits.'}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description='The Python source of optax (DeepMind), for character-level language '
                    'modelling.',
        features=tfds.features.FeaturesDict({
            'text': tfds.features.Tensor(shape=(None,), dtype=np.uint8)}))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    text = np.frombuffer(source_text(), np.uint8)
    return {name: self._generate_examples(text[round(a * len(text)):round(b * len(text))])
            for name, (a, b) in SPLITS.items()}

  def _generate_examples(self, text):
    yield 0, {'text': text}


def load(data_dir: str) -> dict:
  """``{split: its bytes as a uint8 array}``, generating the dataset on first use."""
  builder = datasets.generated_builder(NAME, data_dir)
  return {split: next(iter(tfds.as_numpy(builder.as_dataset(split=split))))['text']
          for split in SPLITS}


def train_batches(text: np.ndarray, *, context: int, batch_size: int, steps: int, seed: int,
                  epoch: int) -> Iterator[dict]:
  """``steps`` batches ``{'input', 'target'}`` (batch_size, context) of int32 bytes, the
  target shifted one byte on; window offsets uniform, seeded by (seed, epoch)."""
  rng = np.random.default_rng((seed, epoch))
  for _ in range(steps):
    windows = _windows(text, rng.integers(0, len(text) - context, batch_size), context)
    yield {'input': windows[:, :-1], 'target': windows[:, 1:]}


def eval_batches(text: np.ndarray, *, context: int, batch_size: int
                 ) -> Iterator[Tuple[dict, np.ndarray]]:
  """(batch, mask) over the (len(text) - 1) // context non-overlapping windows that tile
  ``text`` from its start (fewer than ``context`` bytes at its end are not scored). The
  last batch is padded with copies of the first window, ``mask`` (batch,) 0 there, so
  every batch has one shape."""
  count = (len(text) - 1) // context
  if count < 1:
    raise ValueError(f'eval_batches: a text of {len(text)} bytes holds no window of '
                     f'context ({context}) + 1 bytes.')
  batch_size = min(batch_size, count)
  starts = np.arange(count) * context
  for i in range(0, count, batch_size):
    chunk = starts[i:i + batch_size]
    mask = (np.arange(batch_size) < len(chunk)).astype(np.float32)
    windows = _windows(text, np.pad(chunk, (0, batch_size - len(chunk))), context)
    yield {'input': windows[:, :-1], 'target': windows[:, 1:]}, mask


def _windows(text: np.ndarray, starts: np.ndarray, context: int) -> np.ndarray:
  return text[starts[:, None] + np.arange(context + 1)].astype(np.int32)
