"""FSDP: parameters and optimizer state sharded over 8 simulated devices, equal to replicated.

Per-device bytes are measured from the arrays' shardings (and, for ResNet-50, from
``jax.eval_shape``: no training); checkpoints restore across shardings and device counts.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pcs
from experiments.common import sharding
from experiments.vision import models
from experiments.vision import train
from tests import helpers


def _state_bytes(model_name, input_shape, mode, tx):
  """Per-device bytes of params + optimizer state on 8 devices, from eval_shape."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ('data',))
  model = models.create_model(model_name, 1000)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                jnp.zeros((1, *input_shape)), train=False))
  params = variables['params']
  opt_state = jax.eval_shape(tx.init, params)
  specs = sharding.param_specs(params, mesh, mode)
  tree = {'params': params, 'opt_state': opt_state}
  shardings = {'params': sharding.named(mesh, specs),
               'opt_state': sharding.named(mesh, sharding.state_specs(tx, opt_state, params,
                                                                      specs))}
  return sharding.bytes_per_device(tree, shardings)


def test_resnet50_pilot_state_is_about_an_eighth_per_device():
  tx = pcs.pilot(optax.sgd(0.2, momentum=0.9), alpha=1e-4)
  replicated = _state_bytes('resnet50', (224, 224, 3), 'replicated', tx)
  fsdp = _state_bytes('resnet50', (224, 224, 3), 'fsdp', tx)
  # params (25.6M) + m + two momentum buffers (m and w): 4x the params, replicated.
  assert replicated == pytest.approx(4 * 25_557_032 * 4, rel=0.01)
  assert 1 / 8 <= fsdp / replicated < 1 / 8 + 0.01, fsdp / replicated


def test_state_specs_follow_the_weights():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ('data',))
  params = {'big': jnp.ones((512, 64)), 'small': jnp.ones((8, 8)), 'bias': jnp.ones(64)}
  tx = pcs.soft_threshold(optax.adam(1e-3), weight_decay=1e-4)
  state = tx.init(params)
  specs = sharding.param_specs(params, mesh, 'fsdp')
  assert specs == {'big': jax.sharding.PartitionSpec('data'),
                   'small': jax.sharding.PartitionSpec(),
                   'bias': jax.sharding.PartitionSpec()}
  derived = sharding.state_specs(tx, state, params, specs)
  latents = derived.stored
  assert latents.w['big'] == jax.sharding.PartitionSpec('data')  # STR's w follows x
  assert latents.s['big'] == jax.sharding.PartitionSpec()         # its scalar threshold
  mu = derived.inner_state[0].mu
  assert mu.latents.w['big'] == jax.sharding.PartitionSpec('data')
  assert mu.weights['bias'] == jax.sharding.PartitionSpec()


def test_fsdp_training_equals_replicated_and_restores_across_shardings(data_dir, tmp_path):
  runs = {}
  for mode in ('replicated', 'fsdp'):
    config = helpers.small_config(data_dir, sparsity=0.0, num_devices=8, param_sharding=mode,
                                  **{'model': 'mlp'})
    runs[mode] = train.train_and_evaluate(config, str(tmp_path / mode))
  for a, b in zip(helpers.metric_lines(tmp_path / 'replicated'),
                  helpers.metric_lines(tmp_path / 'fsdp')):
    for key in ('train_loss', 'test_loss', 'l1_norm', 'a'):
      assert a[key] == pytest.approx(b[key], rel=1e-4), key
  assert runs['fsdp']['test_accuracy'] == pytest.approx(runs['replicated']['test_accuracy'],
                                                        abs=2e-3)
  # The fsdp checkpoint restores replicated on 4 devices: the finished run re-evaluates
  # to the same numbers.
  config = helpers.small_config(data_dir, sparsity=0.0, num_devices=4,
                                param_sharding='replicated', **{'model': 'mlp'})
  again = train.train_and_evaluate(config, str(tmp_path / 'fsdp'))
  assert again['test_accuracy'] == pytest.approx(runs['fsdp']['test_accuracy'], abs=2e-3)
  assert again['num_devices'] == 4
