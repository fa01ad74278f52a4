"""Each baseline implements its defining formula (hand computation) and its known behaviour."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

import pcs
from experiments.regression import diagonal_network
from tests import helpers

ETA = 0.1
X = np.array([[0.5, -0.02], [-1.5, 0.3]])
G = np.array([[0.2, -1.0], [0.4, 0.5]])
sigmoid = lambda v: 1 / (1 + np.exp(-v))
PROBLEM = diagonal_network.make_problem(seed=3, n=20, d=50, k=3, num_inits=1)


def _one_sgd_step(tx):
  params = {'kernel': jnp.asarray(X, jnp.float32)}
  updates, _ = tx.update({'kernel': jnp.asarray(G, jnp.float32)}, tx.init(params), params)
  return np.asarray(optax.apply_updates(params, updates)['kernel'], np.float64)


def _regression_limit(tx, steps=20_000):
  x, _ = jax.jit(functools.partial(diagonal_network.train, tx, PROBLEM.A, PROBLEM.y,
                                   num_steps=steps, record_every=steps))(
                                       jnp.asarray(PROBLEM.x_inits[0], jnp.float32))
  return np.asarray(x, np.float64)


def test_soft_threshold_step_matches_hand_computation():
  lam, s0 = 0.1, -1.0
  got = _one_sgd_step(pcs.soft_threshold(optax.sgd(ETA), weight_decay=lam, init_threshold=s0))
  tau = sigmoid(s0)
  w = np.sign(X) * (np.abs(X) + tau)
  active = np.abs(w) > tau
  g_w = G * active + lam * w
  g_s = -np.sum(G * np.sign(w) * active) * tau * (1 - tau) + lam * s0
  w_new, s_new = w - ETA * g_w, s0 - ETA * g_s
  expected = np.sign(w_new) * np.maximum(np.abs(w_new) - sigmoid(s_new), 0)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_soft_threshold_learns_its_threshold_and_sparsifies():
  tx = pcs.soft_threshold(optax.sgd(0.1, momentum=0.9), weight_decay=5e-3, init_threshold=-4.0)
  params, state = _train(tx, steps=300)
  thresholds = [jax.nn.sigmoid(s) for s in jax.tree.leaves(pcs.latents(state, params).s)]
  assert len(thresholds) == sum(jax.tree.leaves(pcs.select(params)))
  assert all(float(t) > 2 * float(jax.nn.sigmoid(-4.0)) for t in thresholds)
  assert float(pcs.sparsity(params)) > 0.1


def test_continuous_sparsification_step_matches_hand_computation():
  lam, s0, t_final, steps = 0.05, 0.5, 100.0, 10
  tx = pcs.continuous_sparsification(optax.sgd(ETA), l1_strength=lam, num_steps=steps,
                                     final_temperature=t_final, mask_init=s0)
  got = _one_sgd_step(tx)
  w, s = X, np.full_like(X, s0)
  beta0, beta1 = 1.0, t_final ** (1 / steps)
  soft = sigmoid(beta0 * s)
  g_w = G * soft / sigmoid(s0)
  g_s = G * w * beta0 * soft * (1 - soft) / sigmoid(s0) + lam * beta0 * soft * (1 - soft)
  w_new, s_new = w - ETA * g_w, s - ETA * g_s
  np.testing.assert_allclose(got, w_new * sigmoid(beta1 * s_new) / sigmoid(s0), rtol=1e-5)


def test_continuous_sparsification_ends_with_a_hard_sparse_mask():
  steps = 200
  tx = pcs.continuous_sparsification(optax.sgd(0.1, momentum=0.9), l1_strength=1e-2,
                                     num_steps=steps, mask_init=0.5)
  params, state = _train(tx, steps=steps + 5)
  mask_logits = jax.tree.leaves(pcs.latents(state, params).s)
  expected_zeros = sum(int(jnp.sum(s <= 0)) for s in mask_logits)
  total = sum(s.size for s in mask_logits)
  assert expected_zeros > 0
  np.testing.assert_allclose(pcs.sparsity(params), expected_zeros / total, atol=1e-6)


def test_powerprop_step_matches_hand_computation():
  p = 3.0
  got = _one_sgd_step(pcs.powerprop(optax.sgd(ETA), power=p))
  w = np.sign(X) * np.abs(X) ** (1 / p)
  w_new = w - ETA * G * p * np.abs(w) ** (p - 1)
  np.testing.assert_allclose(got, np.sign(w_new) * np.abs(w_new) ** p, rtol=1e-5, atol=1e-8)


def test_powerprop_survives_magnitude_pruning_better_than_plain_training():
  """Known behaviour: small weights barely move, so pruning them costs little."""
  inputs, labels = helpers.batch(size=256)
  pruned_loss = {}
  for name, tx in (('plain', optax.sgd(0.05, momentum=0.9)),
                   ('powerprop', pcs.powerprop(optax.sgd(0.05, momentum=0.9), power=2.0))):
    params, _ = _train(tx, steps=300, data=(inputs, labels))
    pruned, _ = pcs.prune(params, 0.8)
    pruned_loss[name] = float(helpers.loss_fn(pruned, inputs, labels))
  assert pruned_loss['powerprop'] < 0.5 * pruned_loss['plain'], pruned_loss


def test_l1_step_is_soft_thresholding():
  lam = 2.0
  got = _one_sgd_step(pcs.l1(optax.sgd(ETA), strength=lam, learning_rate=ETA))
  y = X - ETA * G
  np.testing.assert_allclose(got, np.sign(y) * np.maximum(np.abs(y) - ETA * lam, 0), rtol=1e-6)


def test_l1_converges_to_the_lasso_solution_with_exact_zeros():
  lam, n = 0.5, PROBLEM.A.shape[0]
  x = _regression_limit(pcs.l1(optax.sgd(0.01), strength=lam, learning_rate=0.01,
                               where=lambda *_: True), steps=40_000)
  # Independent: L-BFGS-B on the split x = u - v, u, v >= 0.
  A, y, d = PROBLEM.A, PROBLEM.y, PROBLEM.A.shape[1]
  def objective(uv):
    r = A @ (uv[:d] - uv[d:]) - y
    grad_x = A.T @ r / n
    return 0.5 * r @ r / n + lam * uv.sum(), np.concatenate([grad_x + lam, -grad_x + lam])
  result = scipy.optimize.minimize(objective, np.zeros(2 * d), jac=True, method='L-BFGS-B',
                                   bounds=[(0, None)] * (2 * d),
                                   options={'ftol': 1e-15, 'gtol': 1e-12, 'maxiter': 10_000})
  lasso = result.x[:d] - result.x[d:]
  np.testing.assert_allclose(x, lasso, atol=2e-3)
  assert np.sum(x == 0) >= np.sum(np.abs(lasso) < 1e-6) - 1 and np.sum(x == 0) > d // 2


def test_gmp_hits_the_scheduled_sparsity_at_every_step():
  begin, end, freq, final = 2, 12, 5, 0.8
  tx = pcs.gmp(optax.adam(1e-2), final_sparsity=final, begin_step=begin, end_step=end,
               frequency=freq)
  params = helpers.mlp_params()
  inputs, labels = helpers.batch()
  state = tx.init(params)
  step = jax.jit(lambda p, s: _apply(tx, p, s, inputs, labels))
  expected = 0.0
  for t in range(16):
    params, state = step(params, state)
    if begin <= t <= end and ((t - begin) % freq == 0 or t == end):
      expected = final * (1 - (1 - (t - begin) / (end - begin)) ** 3)
    for layer in pcs.summary(params).layers:  # layerwise: round(s_t * n) zeros per layer
      assert layer.zeros == round(expected * layer.size), (t, layer)
  assert step._cache_size() == 1


def test_one_shot_pruning_prunes_once_then_keeps_the_masks():
  tx = pcs.one_shot_pruning(optax.sgd(0.1, momentum=0.9), sparsity=0.9, step=3)
  params = helpers.mlp_params()
  inputs, labels = helpers.batch()
  state = tx.init(params)
  for t in range(8):
    params, state = _apply(tx, params, state, inputs, labels)
    total = pcs.summary(params)
    assert total.zeros == (round(0.9 * total.size) if t >= 3 else 0)
  # Momentum of pruned weights is zero, so they could not come back.
  trace = state.inner_state[0].trace
  for m, tr in zip(jax.tree.leaves(state.masks), jax.tree.leaves(trace)):
    assert bool(jnp.all(jnp.where(m, True, tr == 0)))


def _apply(tx, params, state, inputs, labels):
  grads = jax.grad(helpers.loss_fn)(params, inputs, labels)
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


def _train(tx, steps, data=None):
  """Trains with donated params and state (catches aliasing) and checks one compilation."""
  params, state, _, step = helpers.train(tx, steps=steps, data=data, donate=True)
  assert step._cache_size() == 1
  return params, state


@pytest.mark.parametrize('make', [
    lambda: pcs.soft_threshold(optax.adam(1e-2), weight_decay=1e-4),
    lambda: pcs.continuous_sparsification(optax.adam(1e-2), l1_strength=1e-4, num_steps=50),
    lambda: pcs.powerprop(optax.adam(1e-2)),
    lambda: pcs.l1(optax.adam(1e-2), strength=1e-3, learning_rate=1e-2),
    lambda: pcs.gmp(optax.adam(1e-2), final_sparsity=0.5, begin_step=0, end_step=20),
    lambda: pcs.one_shot_pruning(optax.adam(1e-2), sparsity=0.5, step=5),
])
def test_every_method_trains_under_jit(make):
  tx = make()
  inputs, labels = helpers.batch()
  params, _ = _train(tx, steps=30)
  assert helpers.loss_fn(params, inputs, labels) < 0.8 * helpers.loss_fn(
      helpers.mlp_params(), inputs, labels)


@pytest.mark.parametrize('make,message', [
    (lambda: pcs.soft_threshold(optax.sgd(0.1), weight_decay=-1.0), '`weight_decay`'),
    (lambda: pcs.soft_threshold(optax.sgd(0.1), weight_decay=0.1, init_threshold=float('nan')),
     '`init_threshold`'),
    (lambda: pcs.continuous_sparsification(optax.sgd(0.1), l1_strength=-1, num_steps=10),
     '`l1_strength`'),
    (lambda: pcs.continuous_sparsification(optax.sgd(0.1), l1_strength=1, num_steps=0),
     '`num_steps`'),
    (lambda: pcs.continuous_sparsification(optax.sgd(0.1), l1_strength=1, num_steps=5,
                                           final_temperature=0.5), '`final_temperature`'),
    (lambda: pcs.powerprop(optax.sgd(0.1), power=0.5), '`power`'),
    (lambda: pcs.l1(optax.sgd(0.1), strength=-1.0, learning_rate=0.1), '`strength`'),
    (lambda: pcs.l1(optax.sgd(0.1), strength=1.0, learning_rate=-0.1), '`learning_rate`'),
    (lambda: pcs.gmp(optax.sgd(0.1), final_sparsity=1.0, begin_step=0, end_step=5), '`sparsity`'),
    (lambda: pcs.gmp(optax.sgd(0.1), final_sparsity=0.5, initial_sparsity=0.6, begin_step=0,
                     end_step=5), '`initial_sparsity`'),
    (lambda: pcs.gmp(optax.sgd(0.1), final_sparsity=0.5, begin_step=5, end_step=2), '`end_step`'),
    (lambda: pcs.gmp(optax.sgd(0.1), final_sparsity=0.5, begin_step=0, end_step=2, frequency=0),
     '`frequency`'),
    (lambda: pcs.gmp(optax.sgd(0.1), final_sparsity=0.5, begin_step=0, end_step=2, scope='rand'),
     '`scope`'),
    (lambda: pcs.one_shot_pruning(optax.sgd(0.1), sparsity=-0.1, step=3), '`sparsity`'),
    (lambda: pcs.one_shot_pruning(optax.sgd(0.1), sparsity=0.5, step=-3), '`step`'),
])
def test_invalid_method_hyperparameters(make, message):
  with pytest.raises(ValueError, match=message):
    make()
