"""pcs.prune, N:M masks, ERK, keep_masked and summary against independent computations."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pcs
from pcs.pruning import _masks as pruning
from tests import helpers


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {'conv': jnp.asarray(rng.normal(size=(3, 3, 8, 16)), jnp.float32),
          'dense': jnp.asarray(rng.normal(size=(64, 10)), jnp.float32),
          'bias': jnp.asarray(rng.normal(size=(10,)), jnp.float32)}


@pytest.mark.parametrize('sparsity', [0.0, 0.1, 0.5, 0.9, 0.95, 0.999])
def test_global_prunes_the_globally_smallest_weights(sparsity):
  params = _params()
  pruned, masks = pcs.prune(params, sparsity, scope='global')
  flat = np.concatenate([np.abs(np.asarray(params[k])).ravel() for k in ('conv', 'dense')])
  k = round(sparsity * flat.size)
  threshold = np.sort(flat)[k - 1] if k else -1.0
  for name in ('conv', 'dense'):
    np.testing.assert_array_equal(np.asarray(masks[name]),
                                  np.abs(np.asarray(params[name])) > threshold)
  assert bool(jnp.all(masks['bias'])) and bool(jnp.all(pruned['bias'] == params['bias']))
  assert pcs.summary(pruned).zeros == k


@pytest.mark.parametrize('sparsity', [0.3, 0.77, 0.98])
def test_layerwise_is_exact_in_every_layer(sparsity):
  pruned, _ = pcs.prune(_params(), sparsity, scope='layerwise')
  for layer in pcs.summary(pruned).layers:
    assert layer.zeros == round(sparsity * layer.size)


def test_global_pruning_warns_where_it_empties_a_layer():
  # 70% of 48 is 34 weights: c's 16 zeros, all 16 of b's (smaller than a's) and 2 of a's.
  params = {'a': {'kernel': jnp.full((4, 4), 5.0)}, 'b': {'kernel': jnp.full((4, 4), 0.01)},
            'c': {'kernel': jnp.zeros((4, 4))}}  # zero already: nothing is lost there
  with pytest.warns(UserWarning, match=r"keeps no weight of \['b/kernel'\].*'layerwise'"):
    pruned, _ = pcs.prune(params, 0.7)
  assert not np.any(pruned['b']['kernel']) and np.count_nonzero(pruned['a']['kernel']) == 14
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    pcs.prune(params, 0.7, scope='layerwise')
    pcs.prune(params, 0.6)  # 29 of 48: c's 16 zeros and 13 of b's, which keeps 3


def test_an_nnx_module_comes_back_pruned_as_a_copy():
  from flax import nnx  # pylint: disable=g-import-not-at-top
  model = nnx.Sequential(nnx.Linear(8, 16, rngs=nnx.Rngs(0)), nnx.BatchNorm(16, rngs=nnx.Rngs(1)),
                         nnx.Linear(16, 4, rngs=nnx.Rngs(2)))
  kernels = [np.abs(np.asarray(model.layers[i].kernel.get_value())) for i in (0, 2)]
  before = [k.copy() for k in kernels]
  pruned, masks = pcs.prune(model, 0.5, scope='layerwise')
  assert isinstance(pruned, nnx.Sequential) and isinstance(masks, nnx.Sequential)
  for i, kernel, original in zip((0, 2), kernels, before):
    threshold = np.sort(kernel.ravel())[kernel.size // 2 - 1]  # half of each, by hand
    np.testing.assert_array_equal(np.asarray(masks.layers[i].kernel.get_value()),
                                  kernel > threshold)
    np.testing.assert_array_equal(np.asarray(pruned.layers[i].kernel.get_value()) != 0,
                                  kernel > threshold)
    np.testing.assert_array_equal(np.abs(np.asarray(model.layers[i].kernel.get_value())),
                                  original)  # the model given is unchanged
  np.testing.assert_array_equal(pruned.layers[1].scale.get_value(), np.ones(16))  # unselected


def test_ties_are_broken_by_position():
  params = {'w': jnp.ones((4, 5))}
  _pruned, masks = pcs.prune(params, 0.35, scope='layerwise')
  expected = np.arange(20).reshape(4, 5) >= 7  # round(0.35 * 20) = 7: the first 7 go
  np.testing.assert_array_equal(masks['w'], expected)
  np.testing.assert_array_equal(pcs.prune(params, 0.35)[1]['w'], expected)


def test_erk_densities_by_hand():
  # Layers (10, 10) and (100, 10): scores 20/100 = 0.2 and 110/1000 = 0.11, sizes 100, 1000.
  # Density 0.5 overall: c (0.2 * 100 + 0.11 * 1000) = 550 -> c = 550 / 130.
  densities = pruning.erk_densities([(10, 10), (100, 10)], 0.5)
  c = 550 / 130
  np.testing.assert_allclose(densities, [0.2 * c, 0.11 * c], rtol=1e-5)
  # At low sparsity the small layer saturates: density 1, the rest gets the remainder.
  densities = pruning.erk_densities([(10, 10), (100, 10)], 0.1)
  np.testing.assert_allclose(densities, [1.0, (990 - 100) / 1000], rtol=1e-5)


def test_erk_prune_matches_its_densities():
  params = _params()
  pruned, _ = pcs.prune(params, 0.9, scope='erk')
  densities = pruning.erk_densities([(3, 3, 8, 16), (64, 10)], 0.9)
  for layer, density in zip(pcs.summary(pruned).layers, densities):
    assert abs(layer.zeros - round((1 - float(density)) * layer.size)) <= 1
  assert abs(pcs.summary(pruned).sparsity - 0.9) < 2 / pcs.summary(pruned).size


def test_n_m_keeps_the_largest_n_of_every_m_along_the_input_axis():
  params = _params()
  pruned, masks = pcs.prune(params, n_m=(2, 4))
  for name in ('conv', 'dense'):
    x = np.moveaxis(np.abs(np.asarray(params[name])), -2, -1)
    groups = x.reshape(x.shape[:-1] + (-1, 4))
    kept = np.moveaxis(np.asarray(masks[name]), -2, -1).reshape(groups.shape)
    assert np.all(kept.sum(-1) == 2)
    smallest_kept = np.where(kept, groups, np.inf).min(-1)
    largest_dropped = np.where(kept, -np.inf, groups).max(-1)
    assert np.all(smallest_kept >= largest_dropped)
  assert abs(pcs.summary(pruned).sparsity - 0.5) < 1e-9


def test_keep_masked_keeps_zeros_and_zero_moments_and_trains_the_rest():
  params = helpers.mlp_params()
  inputs, labels = helpers.batch()
  pruned, masks = pcs.prune(params, 0.7)
  tx = pcs.keep_masked(optax.adam(1e-2), masks)
  state = tx.init(pruned)
  bare = optax.adam(1e-2)
  bare_state = bare.init(pruned)
  p, q = pruned, pruned
  for _ in range(5):
    grads = jax.grad(helpers.loss_fn)(p, inputs, labels)
    updates, state = tx.update(grads, state, p)
    p = optax.apply_updates(p, updates)
    # Independent reference: bare adam fed gradients zeroed where pruned.
    masked_grads = jax.tree.map(lambda g, m: jnp.where(m, g, 0), jax.grad(helpers.loss_fn)(
        q, inputs, labels), masks)
    bare_updates, bare_state = bare.update(masked_grads, bare_state, q)
    q = optax.apply_updates(q, bare_updates)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p, q)
  for x, m, mu, nu in zip(jax.tree.leaves(p), jax.tree.leaves(masks),
                          jax.tree.leaves(state.inner_state[0].mu),
                          jax.tree.leaves(state.inner_state[0].nu)):
    assert bool(jnp.all(jnp.where(m, True, (x == 0) & (mu == 0) & (nu == 0))))


def test_keep_masked_forces_exact_zeros_even_from_nonzero_weights():
  params = {'w': jnp.array([[1.0, 2.0], [3.0, 4.0]])}
  masks = {'w': jnp.array([[True, False], [False, True]])}
  tx = pcs.keep_masked(optax.sgd(0.1), masks)
  updates, _ = tx.update({'w': jnp.ones((2, 2))}, tx.init(params), params)
  np.testing.assert_allclose(optax.apply_updates(params, updates)['w'], [[0.9, 0.0], [0.0, 3.9]])


def test_summary_table():
  params = {'a': jnp.array([[0.0, 1.0], [0.0, 2.0]]), 'b': jnp.zeros(3)}
  table = pcs.summary(params)
  assert (table.size, table.zeros, table.sparsity) == (4, 2, 0.5)
  text = str(table)
  assert "['a']" in text and 'total' in text and '50.00%' in text and "['b']" not in text


def test_prune_under_jit_with_a_traced_sparsity():
  params = _params()
  masks_fn = jax.jit(lambda p, s: pruning.magnitude_masks(p, s, scope='layerwise'))
  for s in (0.2, 0.6):
    masks = masks_fn(params, jnp.float32(s))
    assert int(jnp.sum(~masks['dense'])) == round(s * 640)
  assert masks_fn._cache_size() == 1


@pytest.mark.parametrize('call,message', [
    (lambda p: pcs.prune(p, 1.0), '`sparsity` must be in'),
    (lambda p: pcs.prune(p, -0.1), '`sparsity` must be in'),
    (lambda p: pcs.prune(p, 'half'), '`sparsity`'),
    (lambda p: pcs.prune(p, 0.5, scope='random'), '`scope`'),
    (lambda p: pcs.prune(p), 'exactly one of'),
    (lambda p: pcs.prune(p, 0.5, n_m=(2, 4)), 'exactly one of'),
    (lambda p: pcs.prune(p, n_m=(2, 5)), 'M = 5 must divide'),
    (lambda p: pcs.prune(p, n_m=(5, 4)), '`n_m`'),
    (lambda p: pcs.prune(p, n_m=2), '`n_m`'),
    # A 4-D kernel named neither as a conv nor as an attention projection.
    (lambda p: pcs.prune({'block': {'c1': {'kernel': jnp.ones((3, 3, 8, 8))}}}, n_m=(2, 4)),
     r'input axes of block/c1/kernel.*a 4-D conv kernel .* reads its input on axis -2 .*'
     r'DenseGeneral.*pcs.kernel_layouts'),
    (lambda p: pcs.apply_masks(p, {'conv': True}), '`masks` must have the structure'),
    (lambda p: pcs.keep_masked(optax.sgd(0.1), jax.tree.map(
        lambda x: jnp.ones(x.shape[:1], bool), p)).init(p), 'must be a bool array of shape'),
    (lambda p: pcs.keep_masked(optax.sgd(0.1), jax.tree.map(
        lambda x: jnp.ones(x.shape), p)).init(p), 'must be a bool array'),
])
def test_bad_input(call, message):
  with pytest.raises(ValueError, match=message):
    call(_params())
