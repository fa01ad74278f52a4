"""Iterative pruning (WR and LRR) with any trainer, PILoT included, and resumable checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pcs
from tests import helpers

INPUTS, LABELS = helpers.batch()


def _trainer(make_tx, steps=20, calls=None):
  def train(params, masks, cycle):
    if calls is not None:
      calls.append((cycle, params, masks))
    tx = pcs.keep_masked(make_tx(), masks)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
      grads = jax.grad(helpers.loss_fn)(params, INPUTS, LABELS)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    for _ in range(steps):
      params, state = step(params, state)
    return params
  return train


@pytest.mark.parametrize('rewind', ['weights', 'learning_rate'])
def test_each_cycle_prunes_a_fifth_of_the_rest_and_rewinds(rewind):
  init = helpers.mlp_params()
  calls = []
  result = pcs.iterative_pruning(_trainer(lambda: optax.sgd(0.1, momentum=0.9), calls=calls),
                                 init, num_cycles=4, keep_fraction=0.8, rewind=rewind)
  size = pcs.summary(init).size
  previous_masks = None
  for cycle, start, masks in calls:
    zeros = pcs.summary(start).zeros
    assert zeros == round((1 - 0.8 ** cycle) * size)  # exact global target
    if previous_masks is not None:  # nested: once pruned, always pruned
      for old, new in zip(jax.tree.leaves(previous_masks), jax.tree.leaves(masks)):
        assert bool(jnp.all(old | ~new))
    previous_masks = masks
    if cycle and rewind == 'weights':  # WR: the start is the init, masked
      expected = jax.tree.map(lambda x, m: jnp.where(m, x, 0), init, masks)
      jax.tree.map(np.testing.assert_array_equal, start, expected)
  if rewind == 'learning_rate':  # LRR: the start is the previous cycle's result, pruned
    assert not np.allclose(calls[2][1]['dense0']['kernel'], init['dense0']['kernel'])
  assert [h['cycle'] for h in result.history] == [0, 1, 2, 3, 4]
  np.testing.assert_allclose([h['sparsity'] for h in result.history],
                             [1 - 0.8 ** c for c in range(5)], atol=1 / size)


def test_pilot_as_the_per_cycle_trainer():
  result = pcs.iterative_pruning(
      _trainer(lambda: pcs.pilot(optax.sgd(0.1, momentum=0.9), alpha=1e-3)),
      helpers.mlp_params(), num_cycles=3, rewind='learning_rate')
  assert abs(result.history[-1]['sparsity'] - (1 - 0.8 ** 3)) < 1e-2
  assert float(helpers.loss_fn(result.params, INPUTS, LABELS)) < float(
      helpers.loss_fn(helpers.mlp_params(), INPUTS, LABELS))


class Killed(Exception):
  pass


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path):
  make = lambda: optax.adam(1e-2)
  uninterrupted = pcs.iterative_pruning(_trainer(make), helpers.mlp_params(), num_cycles=3)

  def crashing(params, masks, cycle):
    if cycle == 2:
      raise Killed()
    return _trainer(make)(params, masks, cycle)

  with pytest.raises(Killed):
    pcs.iterative_pruning(crashing, helpers.mlp_params(), num_cycles=3,
                          checkpoint_dir=str(tmp_path))
  calls = []
  resumed = pcs.iterative_pruning(_trainer(make, calls=calls), helpers.mlp_params(),
                                  num_cycles=3, checkpoint_dir=str(tmp_path))
  assert [c for c, _, _ in calls] == [2, 3]  # cycles 0 and 1 were not repeated
  jax.tree.map(np.testing.assert_array_equal, resumed.params, uninterrupted.params)
  jax.tree.map(np.testing.assert_array_equal, resumed.masks, uninterrupted.masks)
  assert resumed.history == uninterrupted.history


@pytest.mark.parametrize('kwargs,message', [
    (dict(num_cycles=-1), '`num_cycles`'),
    (dict(num_cycles=2, keep_fraction=0.0), '`keep_fraction`'),
    (dict(num_cycles=2, keep_fraction=1.5), '`keep_fraction`'),
    (dict(num_cycles=2, rewind='both'), '`rewind`'),
    (dict(num_cycles=2, scope='random'), '`scope`'),
    (dict(num_cycles=2, rewind_params={'w': jnp.ones(2)}), '`rewind_params`'),
])
def test_bad_input(kwargs, message):
  with pytest.raises(ValueError, match=message):
    pcs.iterative_pruning(lambda p, m, c: p, helpers.mlp_params(), **kwargs)


def test_the_binary_and_the_library_prune_their_cycles_alike():
  # One schedule: s_c = 1 - (1 - s)^(c/K), s exactly at the last cycle. By hand, K = 3 and
  # s = 0.875 (a half kept per cycle): 0.5, 0.75, 0.875.
  assert [pcs.cycle_sparsity(c, 3, 0.875) for c in range(4)] == pytest.approx(
      [0.0, 0.5, 0.75, 0.875], abs=1e-12)
  assert pcs.cycle_sparsity(25, 25, 0.98) == 0.98  # exact at the last cycle
  from experiments.common import phases  # pylint: disable=g-import-not-at-top
  config = helpers.small_config('unused', schedule='imp', sparsity=0.875,
                                **{'imp.cycles': 3})
  assert [p.sparsity for p in phases.plan(config) if p.name.startswith('cycle')] == [
      pcs.cycle_sparsity(c, 3, 0.875) for c in (1, 2, 3)]
  params = {'w': jnp.arange(1.0, 17.0).reshape(4, 4)}
  result = pcs.iterative_pruning(lambda p, m, c: p, params, num_cycles=3, keep_fraction=0.5)
  assert [h['target_sparsity'] for h in result.history] == pytest.approx([0.0, 0.5, 0.75, 0.875])
  assert [h['sparsity'] for h in result.history] == [0.0, 0.5, 0.75, 0.875]  # 16 weights
  with pytest.raises(ValueError, match='`cycle` must lie in'):
    pcs.cycle_sparsity(4, 3, 0.5)
  with pytest.raises(ValueError, match='`final_sparsity` must lie in'):
    pcs.cycle_sparsity(1, 3, 1.0)
