"""Data-parallel training on 8 simulated CPU devices matches one device (cf. optax sharding)."""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import optax
import pytest

import pcs
from tests import helpers

STEPS = 5
TRANSFORMS = {
    'pilot': lambda: pcs.pilot(optax.adam(1e-2), alpha=pcs.alpha_controller(
        1e-3, delta=2.0, steps_per_epoch=2, num_epochs=4)),
    'mirror': lambda: pcs.mirror(optax.sgd(0.05, momentum=0.9), alpha=1e-2, learning_rate=0.05),
}
BASELINES = {
    'soft_threshold': lambda: pcs.soft_threshold(optax.adam(1e-2), weight_decay=1e-3),
    'continuous_sparsification': lambda: pcs.continuous_sparsification(
        optax.adam(1e-2), l1_strength=1e-3, num_steps=3),
    'powerprop': lambda: pcs.powerprop(optax.sgd(0.05)),
    'l1': lambda: pcs.l1(optax.sgd(0.05), strength=0.1, learning_rate=0.05),
    'gmp': lambda: pcs.gmp(optax.adam(1e-2), final_sparsity=0.6, begin_step=0, end_step=4,
                           frequency=2, scope='global'),
    'keep_masked': lambda: pcs.keep_masked(
        optax.adam(1e-2), pcs.prune(helpers.mlp_params(), 0.5)[1]),
}


def _accuracy(params, inputs, labels):
  return (helpers.mlp_apply(params, inputs).argmax(-1) == labels).mean()


def _step(tx, params, state, inputs, labels, mean_over=None):
  """One training step; ``mean_over`` names the pmap axis to average gradients over."""
  average = (lambda t: jax.lax.pmean(t, mean_over)) if mean_over else (lambda t: t)
  grads = average(jax.grad(helpers.loss_fn)(params, inputs, labels))
  accuracy = average(_accuracy(params, inputs, labels))
  updates, state = tx.update(grads, state, params, accuracy=accuracy)
  return optax.apply_updates(params, updates), state


def _single_device(tx, params, inputs, labels):
  step = jax.jit(lambda params, state: _step(tx, params, state, inputs, labels))
  state = tx.init(params)
  for _ in range(STEPS):
    params, state = step(params, state)
  return params, state


@pytest.fixture(scope='module')
def devices():
  if jax.device_count() < 8:
    pytest.skip('needs XLA_FLAGS=--xla_force_host_platform_device_count=8')
  return jax.devices()[:8]


@pytest.mark.parametrize('name', sorted(TRANSFORMS) + sorted(BASELINES))
def test_jit_with_named_sharding_matches_one_device(name, devices):
  tx = {**TRANSFORMS, **BASELINES}[name]()
  params = helpers.mlp_params()
  inputs, labels = helpers.batch(size=64)
  expected, expected_state = _single_device(tx, params, inputs, labels)

  mesh = jax.sharding.Mesh(np.array(devices), ('data',))
  replicated = NamedSharding(mesh, P())
  by_batch = NamedSharding(mesh, P('data'))
  params = jax.device_put(params, replicated)
  state = jax.device_put(tx.init(params), replicated)
  inputs, labels = jax.device_put((inputs, labels), by_batch)
  assert len(inputs.sharding.device_set) == 8

  step = jax.jit(lambda *args: _step(tx, *args))
  for _ in range(STEPS):
    params, state = step(params, state, inputs, labels)
  assert params['dense0']['kernel'].sharding.is_fully_replicated
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
               params, expected)
  assert step._cache_size() == 1
  if name in TRANSFORMS:
    np.testing.assert_allclose(pcs.stats(state, params)['alpha'],
                               pcs.stats(expected_state, expected)['alpha'], rtol=1e-6)
  assert pcs.summary(params).zeros == pcs.summary(expected).zeros


@pytest.mark.parametrize('name', sorted(TRANSFORMS))
def test_pmap_with_pmean_matches_one_device(name, devices):
  tx = TRANSFORMS[name]()
  params = helpers.mlp_params()
  inputs, labels = helpers.batch(size=64)
  expected, _ = _single_device(tx, params, inputs, labels)

  pstep = jax.pmap(lambda *args: _step(tx, *args, mean_over='batch'), axis_name='batch',
                   devices=devices)
  replicate = lambda tree: jax.tree.map(lambda x: jnp.broadcast_to(x, (8,) + x.shape), tree)
  params_r, state_r = replicate(params), replicate(tx.init(params))
  shards = lambda x: x.reshape((8, -1) + x.shape[1:])
  for _ in range(STEPS):
    params_r, state_r = pstep(params_r, state_r, shards(inputs), shards(labels))
  got = jax.tree.map(lambda x: x[0], params_r)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
               got, expected)
