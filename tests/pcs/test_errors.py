"""Bad input gets a clear ValueError naming the argument; non-finite gradients are documented."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pcs

PARAMS = {'kernel': jnp.ones((2, 3)), 'bias': jnp.zeros(3)}
GRADS = jax.tree.map(jnp.ones_like, PARAMS)


@pytest.mark.parametrize('make,message', [
    (lambda: pcs.pilot(optax.sgd(0.1), beta=-1.0), '`beta`'),
    (lambda: pcs.pilot(optax.sgd(0.1), alpha=-0.1), '`alpha`'),
    (lambda: pcs.pilot(optax.sgd(0.1), alpha=float('nan')), '`alpha`'),
    (lambda: pcs.pilot(optax.sgd(0.1), alpha='big'), '`alpha`'),
    (lambda: pcs.pilot(optax.sgd(0.1), alpha=jnp.ones(3)), '`alpha` must be a scalar'),
    (lambda: pcs.pilot(optax.sgd(0.1), alpha=0.1, decoupled=True), 'learning_rate'),
    (lambda: pcs.pilot(optax.sgd(0.1), alpha=0.1, decoupled=True, learning_rate=-1.0),
     '`learning_rate`'),
    (lambda: pcs.mirror(optax.sgd(0.1), beta=0.0), '`beta` > 0'),
    (lambda: pcs.mirror(optax.sgd(0.1), alpha=0.1), 'learning_rate'),
    (lambda: pcs.mirror(optax.sgd(0.1), alpha=lambda t: 0.1), 'learning_rate'),
    (lambda: pcs.spred(optax.sgd(0.1), weight_decay=-1e-4), '`weight_decay`'),
])
def test_invalid_hyperparameters(make, message):
  with pytest.raises(ValueError, match=message):
    make()


@pytest.mark.parametrize('transform', [
    pcs.pilot(optax.sgd(0.1)), pcs.mirror(optax.sgd(0.1)),
    pcs.spred(optax.sgd(0.1), weight_decay=0.1),
    pcs.l1(optax.sgd(0.1), strength=0.1, learning_rate=0.1),
    pcs.gmp(optax.sgd(0.1), final_sparsity=0.5, begin_step=0, end_step=2),
    pcs.keep_masked(optax.sgd(0.1), jax.tree.map(lambda x: jnp.ones(x.shape, bool), PARAMS))])
def test_update_without_params(transform):
  state = transform.init(PARAMS)
  with pytest.raises(ValueError, match='needs the current parameters'):
    transform.update(GRADS, state)


def test_non_float_selected_leaf():
  params = {'kernel': jnp.ones((2, 3), jnp.int32)}
  with pytest.raises(ValueError, match=r"\['kernel'\] of dtype int32"):
    pcs.pilot(optax.sgd(0.1)).init(params)
  with pytest.raises(ValueError, match='complex'):
    pcs.mirror(optax.sgd(0.1)).init({'kernel': jnp.ones((2, 2), jnp.complex64)})


@pytest.mark.parametrize('where', [
    {'kernel': True},                              # missing a leaf
    {'kernel': True, 'bias': False, 'extra': True},  # an extra leaf
    [True, False],                                 # another container
])
def test_where_tree_must_match_params(where):
  with pytest.raises(ValueError, match='structure of params'):
    pcs.pilot(optax.sgd(0.1), where=where).init(PARAMS)


def test_where_tree_must_hold_bools():
  with pytest.raises(ValueError, match='bools only'):
    pcs.pilot(optax.sgd(0.1), where={'kernel': 1, 'bias': 0}).init(PARAMS)


def test_where_selects_what_it_says():
  where = {'kernel': False, 'bias': True}
  tx = pcs.pilot(optax.sgd(0.1), where=where)
  latents = pcs.latents(tx.init(PARAMS), PARAMS, where=where)
  for tree in latents:
    assert isinstance(tree['kernel'], optax.MaskedNode) and isinstance(tree['bias'], jax.Array)
  predicate = lambda path, leaf: jax.tree_util.keystr(path) == "['bias']"
  assert pcs.select(PARAMS, predicate) == where


def test_nan_gradients_propagate_and_apply_if_finite_skips_them():
  bad = {'kernel': jnp.full((2, 3), jnp.nan), 'bias': jnp.ones(3)}
  tx = pcs.pilot(optax.sgd(0.1), alpha=1e-3)
  updates, state = tx.update(bad, tx.init(PARAMS), PARAMS)
  assert bool(jnp.isnan(updates['kernel']).all())  # documented: like any optax optimizer
  guarded = optax.apply_if_finite(pcs.pilot(optax.sgd(0.1), alpha=1e-3), max_consecutive_errors=3)
  state = guarded.init(PARAMS)
  updates, new_state = guarded.update(bad, state, PARAMS)
  np.testing.assert_array_equal(updates['kernel'], 0.0)
  np.testing.assert_array_equal(pcs.latents(new_state, PARAMS).m['kernel'],
                                pcs.latents(state, PARAMS).m['kernel'])
  assert int(new_state.notfinite_count) == 1


def test_sparsity_counts_exact_zeros_of_selected_leaves():
  params = {'kernel': jnp.array([[0.0, 1.0], [0.0, 0.0]]), 'bias': jnp.zeros(5),
            'conv': jnp.array([[[1e-30, 0.0]]])}
  # kernel: 3 zeros of 4; conv: 1 zero of 2; the bias (ndim 1) is not selected.
  np.testing.assert_allclose(pcs.sparsity(params), 4 / 6)
  np.testing.assert_allclose(pcs.sparsity(params, where=lambda p, x: True), 9 / 11)


def test_mirror_stays_finite_as_a_vanishes():
  """a_t = 1/2 exp(-4 * 1e3 * t): log a reaches -1.2e4 in three steps; x stays finite."""
  params = {'kernel': jnp.array([[1e-20, -3.0], [1e20, 0.0]])}
  tx = pcs.mirror(optax.sgd(1.0), alpha=1e3, learning_rate=1.0)
  state = tx.init(params)
  grads = {'kernel': jnp.array([[1.0, -1.0], [1e10, 1.0]])}
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    assert bool(jnp.all(jnp.isfinite(params['kernel'])))
  np.testing.assert_allclose(pcs.find_state(state).log_a, np.log(0.5) - 12_000, rtol=1e-6)


def test_mirror_with_beta_below_float32_range():
  """beta / 2 = 5e-41 underflows float32; log a_0 must still be exact (found by hypothesis)."""
  state = pcs.mirror(optax.sgd(0.1), beta=1e-40).init(PARAMS)
  np.testing.assert_allclose(pcs.find_state(state).log_a, np.log(1e-40 / 2), rtol=1e-6)
