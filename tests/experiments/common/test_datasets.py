"""The offline tfds builders match their sources; unprepared datasets say how to prepare them."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments.common import datasets
from experiments.vision import input_pipeline
from experiments.vision import models
from tests import helpers


def _all(builder, split):
  data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
  return data


def test_mnist1d_is_make_dataset_output(data_dir):
  from mnist1d import data
  expected = data.make_dataset(data.get_dataset_args())
  builder = datasets.builder('mnist1d', data_dir)
  assert builder.info.splits['train'].num_examples == 4000
  assert builder.info.splits['test'].num_examples == 1000
  for split, x, y in (('train', 'x', 'y'), ('test', 'x_test', 'y_test')):
    got = _all(builder, split)
    order = np.argsort(got['signal'][:, 0, 0] * 1e6 + got['signal'][:, 1, 0])
    ref_order = np.argsort(expected[x][:, 0] * 1e6 + expected[x][:, 1])
    np.testing.assert_allclose(got['signal'][order, :, 0], expected[x][ref_order], rtol=1e-6)
    np.testing.assert_array_equal(got['label'][order], expected[y][ref_order])


def test_digits_is_sklearn_digits(data_dir):
  from sklearn.datasets import load_digits
  digits = load_digits()
  builder = datasets.builder('digits', data_dir)
  train, test = _all(builder, 'train'), _all(builder, 'test')
  assert len(train['label']) == 1437 and len(test['label']) == 360
  images = np.concatenate([train['image'], test['image']])[..., 0] * 16
  labels = np.concatenate([train['label'], test['label']])
  key = lambda im: [tuple(i.ravel()) for i in im]
  assert sorted(zip(key(images.round()), labels)) == sorted(zip(key(digits.images), digits.target))


def test_unprepared_and_unknown_datasets(data_dir):
  with pytest.raises(ValueError, match=r'not prepared .*tfds build cifar10'):
    datasets.builder('cifar10', data_dir)
  with pytest.raises(ValueError, match=r'downloads/manual'):
    datasets.builder('imagenet2012', data_dir)
  with pytest.raises(ValueError, match=r"Unknown dataset 'svhn'; choose one of"):
    datasets.builder('svhn', data_dir)


def test_pipeline_is_deterministic_per_epoch_and_eval_sees_every_example(data_dir):
  builder = datasets.builder('mnist1d', data_dir)
  spec = datasets.DATASETS['mnist1d']
  batches = lambda epoch: [b['label'] for b, _ in input_pipeline.epoch_batches(
      builder, spec, 'train', 128, train=True, seed=0, epoch=epoch)]
  first, again, other = batches(3), batches(3), batches(4)
  assert len(first) == 4000 // 128
  np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
  assert not np.array_equal(np.concatenate(first), np.concatenate(other))
  masks = [m for _, m in input_pipeline.epoch_batches(builder, spec, 'test', 300, train=False,
                                                     seed=0, epoch=0)]
  assert sum(int(m.sum()) for m in masks) == 1000 and len(masks) == 4


@pytest.mark.parametrize('train', [True, False])
def test_rows_of_every_topology_reassemble_the_same_global_batches(data_dir, train):
  """2, 4 or 8 processes, each reading its rows, see exactly the one-process batches."""
  builder = datasets.builder('mnist1d', data_dir)
  spec = datasets.DATASETS['mnist1d']
  split, size = ('train', 128) if train else ('test', 384)  # eval: 1000 = 2 * 384 + 232
  read = lambda rows: list(input_pipeline.epoch_batches(
      builder, spec, split, size, train=train, seed=5, epoch=2, rows=rows))
  whole = read(None)
  for processes in (2, 4, 8):
    share = size // processes
    parts = [read((p * share, (p + 1) * share)) for p in range(processes)]
    assert all(len(part) == len(whole) for part in parts)  # same step count everywhere
    for step, (batch, mask) in enumerate(whole):
      np.testing.assert_array_equal(
          np.concatenate([part[step][0]['input'] for part in parts]), batch['input'])
      np.testing.assert_array_equal(np.concatenate([part[step][1] for part in parts]), mask)
  if not train:
    assert sum(int(m.sum()) for _, m in whole) == 1000  # every test example exactly once


def test_process_rows_of_a_sharded_batch():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  assert input_pipeline.process_rows(sharding, 64) == (0, 64)  # one process holds all rows


def test_augmentations_keep_shapes():
  image = np.random.default_rng(0).integers(0, 255, size=(32, 32, 3)).astype(np.uint8)
  out = input_pipeline._augment(image, 'cifar', np.array([1, 2]))
  assert tuple(out.shape) == (32, 32, 3)
  big = np.random.default_rng(0).integers(0, 255, size=(300, 400, 3)).astype(np.uint8)
  assert tuple(input_pipeline._augment(big, 'imagenet', np.array([1, 2])).shape) == (224, 224, 3)
  assert tuple(input_pipeline._center_crop(big).shape) == (224, 224, 3)


@pytest.mark.parametrize('name,shape,classes,expected', [
    ('resnet20', (32, 32, 3), 10, 272_474),      # He et al. 2016: 0.27M
    ('resnet18', (32, 32, 3), 100, 11_220_132),  # 11.2M with a 100-way head
    ('vgg16', (32, 32, 3), 10, 14_724_042),      # VGG-16-BN for CIFAR: 14.7M
    ('resnet50', (224, 224, 3), 1000, 25_557_032),  # torchvision's resnet50
])
def test_models_have_the_published_sizes(name, shape, classes, expected):
  model = models.create_model(name, classes)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + shape),
                                                train=False))
  assert sum(x.size for x in jax.tree.leaves(variables['params'])) == expected
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2,) + shape), train=False), variables)
  assert out.shape == (2, classes)


def test_he_normal_init():
  model = models.create_model('mlp', 10)
  params = model.init(jax.random.key(0), jnp.zeros((1, 784)))['params']
  kernel = params['Dense_0']['kernel']
  np.testing.assert_allclose(np.std(kernel), np.sqrt(2 / 784), rtol=0.05)
  with pytest.raises(ValueError, match="Unknown model 'resnet1000'"):
    models.create_model('resnet1000', 10)


@pytest.mark.parametrize('name,shape', [('cifar10', (32, 32, 3)), ('imagenet2012', (224, 224, 3))])
def test_image_pipelines_on_mock_data(name, shape, tmp_path):
  spec = datasets.DATASETS[name]
  with tfds.testing.mock_data(num_examples=8):
    builder = tfds.builder(name, data_dir=str(tmp_path))
    for train in (True, False):
      split = spec.train_split if train else spec.test_split
      batch, mask = next(input_pipeline.epoch_batches(builder, spec, split, 4, train=train,
                                                      seed=0, epoch=0))
      assert batch['input'].shape == (4,) + shape and batch['input'].dtype == np.float32
      assert mask.all() and abs(float(batch['input'].mean())) < 3  # normalized


def test_processes_started_together_generate_a_dataset_once(tmp_path):
  # Two workers of `make quality` on a fresh machine used to race to rename the same
  # incomplete directory, and one of them died; the second must wait and reuse it.
  import subprocess
  import sys
  code = ('import sys; from experiments.common import datasets; '
          'b = datasets.builder("digits", sys.argv[1]); '
          'print(b.info.splits["train"].num_examples)')
  env = {**os.environ, 'PYTHONPATH': helpers.REPO}
  workers = [subprocess.Popen([sys.executable, '-c', code, str(tmp_path)], cwd=helpers.REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
  results = [w.communicate(timeout=300) for w in workers]
  assert [w.returncode for w in workers] == [0, 0, 0], [err[-2000:] for _, err in results]
  assert [out.split()[-1] for out, _ in results] == ['1437'] * 3
