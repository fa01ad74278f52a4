"""pcs transforms behave like optax's contributed optimizers (cf. optax/contrib/_common_test.py)."""

import chex
import flax.linen as nn
from flax import nnx
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pcs
from tests import helpers

INNERS = {
    'sgd': lambda: optax.sgd(0.1),
    'momentum': lambda: optax.sgd(0.05, momentum=0.9),
    'nesterov': lambda: optax.sgd(0.05, momentum=0.9, nesterov=True),
    'adam': lambda: optax.adam(1e-2),
    'adamw': lambda: optax.adamw(1e-2, weight_decay=1e-4),
    'lion': lambda: optax.lion(1e-3),
    'chain': lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(),
                                 optax.scale_by_learning_rate(1e-2)),
}
TRANSFORMS = {
    'pilot': lambda inner: pcs.pilot(inner, alpha=1e-3),
    'pilot_decoupled': lambda inner: pcs.pilot(inner, alpha=1e-3, decoupled=True,
                                               learning_rate=0.1),
    'mirror': lambda inner: pcs.mirror(inner, alpha=1e-3, learning_rate=0.1),
    'spred': lambda inner: pcs.spred(inner, weight_decay=1e-4),
}


@pytest.mark.parametrize('inner', sorted(INNERS))
@pytest.mark.parametrize('transform', sorted(TRANSFORMS))
def test_any_inner_optimizer_trains(transform, inner):
  tx = TRANSFORMS[transform](INNERS[inner]())
  params, _state, losses, step = helpers.train(tx)
  assert all(np.isfinite(losses))
  assert losses[-1] < 0.8 * losses[0], losses
  chex.assert_trees_all_equal_shapes_and_dtypes(params, helpers.mlp_params())
  assert step._cache_size() == 1  # traced once across steps


@pytest.mark.parametrize('inner', sorted(INNERS))
def test_pilot_equals_training_m_and_w_directly(inner):
  """Independent computation: optax on (m, w) with loss f(m * w) + alpha (|m|^2 + |w|^2)."""
  alpha, beta, steps = 1e-2, 1.0, 10
  params = helpers.mlp_params()
  inputs, labels = helpers.batch()
  pilot_params, _, _, _ = helpers.train(pcs.pilot(INNERS[inner](), alpha=alpha, beta=beta),
                                 steps=steps, params=params)

  is_kernel = lambda x: x.ndim >= 2
  def init_latent(x):
    if not is_kernel(x):
      return x
    m = jnp.sqrt((beta + jnp.sqrt(beta**2 + 4 * x**2)) / 2)
    return (m, x / m)
  latent = jax.tree.map(init_latent, params)
  as_params = lambda lat: jax.tree.map(lambda u: u[0] * u[1] if isinstance(u, tuple) else u,
                                       lat, is_leaf=lambda n: isinstance(n, tuple))
  def objective(lat):
    penalty = sum(jnp.sum(u[0]**2) + jnp.sum(u[1]**2) for u in jax.tree.leaves(
        lat, is_leaf=lambda n: isinstance(n, tuple)) if isinstance(u, tuple))
    return helpers.loss_fn(as_params(lat), inputs, labels) + alpha * penalty
  opt = INNERS[inner]()
  opt_state = opt.init(latent)
  for _ in range(steps):
    updates, opt_state = opt.update(jax.grad(objective)(latent), opt_state, latent)
    latent = optax.apply_updates(latent, updates)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
               pilot_params, as_params(latent))


def test_sgd_step_matches_hand_computation():
  """m' = m - eta (g w + 2 alpha m), w' = w - eta (g m + 2 alpha w); bias: b - eta g."""
  eta, alpha, beta = 0.1, 0.05, 1.0
  params = {'kernel': jnp.array([[0.5, -2.0], [0.0, 3.0]]), 'bias': jnp.array([1.0, -1.0])}
  grads = {'kernel': jnp.array([[1.0, 0.5], [-2.0, 0.25]]), 'bias': jnp.array([0.3, 0.7])}
  tx = pcs.pilot(optax.sgd(eta), alpha=alpha, beta=beta)
  updates, _ = tx.update(grads, tx.init(params), params)
  x = np.asarray(params['kernel'], np.float64)
  g = np.asarray(grads['kernel'], np.float64)
  m = np.sqrt((beta + np.sqrt(beta**2 + 4 * x**2)) / 2)
  w = x / m
  m_new = m - eta * (g * w + 2 * alpha * m)
  w_new = w - eta * (g * m + 2 * alpha * w)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new['kernel'], m_new * w_new, rtol=1e-6)
  np.testing.assert_allclose(new['bias'], [1.0 - eta * 0.3, -1.0 - eta * 0.7], rtol=1e-6)


def test_decoupled_step_matches_hand_computation():
  """Decoupled: (m, w) <- (m, w) + adam_step - 2 lr alpha (m, w)."""
  lr, alpha = 0.01, 0.5
  params = {'kernel': jnp.array([[0.5, -2.0]])}
  grads = {'kernel': jnp.array([[1.0, -0.5]])}
  tx = pcs.pilot(optax.adam(lr), alpha=alpha, decoupled=True, learning_rate=lr)
  new = optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
  x, g = np.array([[0.5, -2.0]]), np.array([[1.0, -0.5]])
  m = np.sqrt((1 + np.sqrt(1 + 4 * x**2)) / 2)
  w = x / m
  adam_first_step = lambda grad: -lr * np.sign(grad)  # bias-corrected m/sqrt(v) = sign
  m_new = m + adam_first_step(g * w) - 2 * lr * alpha * m
  w_new = w + adam_first_step(g * m) - 2 * lr * alpha * w
  np.testing.assert_allclose(new['kernel'], m_new * w_new, rtol=1e-5)


def test_unselected_leaves_get_the_bare_inner_update():
  params = helpers.mlp_params()
  inputs, labels = helpers.batch()
  grads = jax.grad(helpers.loss_fn)(params, inputs, labels)
  tx = pcs.pilot(optax.adam(1e-2), alpha=1e-3)
  updates, state = tx.update(grads, tx.init(params), params)
  biases = {k: v['bias'] for k, v in params.items()}
  bare, _ = optax.adam(1e-2).update({k: v['bias'] for k, v in grads.items()},
                                    optax.adam(1e-2).init(biases), biases)
  for k in params:
    np.testing.assert_array_equal(updates[k]['bias'], bare[k])
  # Biases appear once in the inner state (not duplicated), kernels once per latent.
  inner_mu = state.inner_state[0].mu
  assert jax.tree.structure(inner_mu.weights['dense0']['bias']) == jax.tree.structure(0)
  assert isinstance(inner_mu.weights['dense0']['kernel'], optax.MaskedNode)
  assert [isinstance(t['dense0']['kernel'], jax.Array) for t in inner_mu.latents] == [True, True]
  assert all(isinstance(t['dense0']['bias'], optax.MaskedNode) for t in inner_mu.latents)


def test_mirror_state_is_the_bare_optimizer_size():
  params = helpers.mlp_params()
  bare = optax.adam(1e-2).init(params)
  state = pcs.mirror(optax.adam(1e-2), alpha=1e-3, learning_rate=1e-2).init(params)
  size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  assert size(state) - size(bare) <= 10  # scalars: count, log a, the alpha bookkeeping (8)


def test_inject_hyperparams_alpha_is_injectable():
  eta = 0.1
  params = {'kernel': jnp.array([[1.0, -1.0]])}
  zero = {'kernel': jnp.zeros((1, 2))}
  tx = optax.inject_hyperparams(pcs.pilot)(optax.sgd(eta), alpha=0.0)
  state = tx.init(params)
  state.hyperparams['alpha'] = jnp.asarray(0.25)
  updates, state = jax.jit(tx.update)(zero, state, params)
  # With g = 0: m' = (1 - 2 eta alpha) m, w' = (1 - 2 eta alpha) w, x' = 0.95^2 x.
  np.testing.assert_allclose(optax.apply_updates(params, updates)['kernel'],
                             [[0.9025, -0.9025]], rtol=1e-6)


def test_multisteps_averages_gradients_before_the_pilot_step():
  eta = 0.1
  params = {'kernel': jnp.array([[2.0, -0.5]])}
  g1, g2 = {'kernel': jnp.array([[1.0, 1.0]])}, {'kernel': jnp.array([[3.0, -1.0]])}
  tx = optax.MultiSteps(pcs.pilot(optax.sgd(eta)), every_k_schedule=2)
  state = tx.init(params)
  u1, state = tx.update(g1, state, params)
  np.testing.assert_array_equal(u1['kernel'], 0.0)
  u2, state = tx.update(g2, state, params)
  x, g = np.array([[2.0, -0.5]]), np.array([[2.0, 0.0]])
  m = np.sqrt((1 + np.sqrt(1 + 4 * x**2)) / 2)
  w = x / m
  np.testing.assert_allclose(optax.apply_updates(params, u2)['kernel'],
                             (m - eta * g * w) * (w - eta * g * m), rtol=1e-6)


@pytest.mark.parametrize('transform', ['pilot', 'mirror', 'controller'])
def test_state_is_stable_under_cond_and_scan(transform):
  params = helpers.mlp_params()
  inputs, labels = helpers.batch()
  grads = jax.grad(helpers.loss_fn)(params, inputs, labels)
  alpha = pcs.alpha_controller(1e-3, delta=2.0, steps_per_epoch=2, num_epochs=4)
  tx = {'pilot': pcs.pilot(optax.adam(1e-2), alpha=1e-3),
        'mirror': pcs.mirror(optax.adam(1e-2), alpha=1e-3, learning_rate=1e-2),
        'controller': pcs.pilot(optax.adam(1e-2), alpha=alpha)}[transform]
  state = tx.init(params)

  def maybe_step(pred, state):
    return jax.lax.cond(pred, lambda s: tx.update(grads, s, params, accuracy=0.5)[1],
                        lambda s: s, state)

  new = jax.jit(maybe_step)(True, state)
  chex.assert_trees_all_equal_shapes_and_dtypes(new, state)
  scanned, _ = jax.lax.scan(
      lambda s, _: (tx.update(grads, s, params, accuracy=np.float64(0.7))[1], None),
      state, None, length=3)
  chex.assert_trees_all_equal_shapes_and_dtypes(scanned, state)


@pytest.mark.parametrize('dtype', ['bfloat16', 'float32', 'float64'])
@pytest.mark.parametrize('transform', ['pilot', 'mirror'])
def test_dtypes_are_preserved(transform, dtype):
  with jax.enable_x64(dtype == 'float64'):
    params = helpers.mlp_params(dtype=jnp.dtype(dtype))
    tx = (pcs.pilot(optax.sgd(0.05), alpha=1e-3) if transform == 'pilot' else
          pcs.mirror(optax.sgd(0.05), alpha=1e-3, learning_rate=0.05))
    new, state, losses, _ = helpers.train(tx, steps=20, params=params)
    chex.assert_trees_all_equal_dtypes(new, params)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    if transform == 'pilot':
      factors = pcs.latents(state, new)
      for leaf in jax.tree.leaves(factors.m) + jax.tree.leaves(factors.w):
        assert leaf.dtype == jnp.dtype(dtype)


def test_extra_args_reach_the_inner_optimizer():
  inner = optax.chain(optax.adam(1e-2), optax.contrib.reduce_on_plateau(patience=0, factor=0.5))
  tx = pcs.pilot(inner, alpha=1e-3)
  params = helpers.mlp_params()
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  for value in (1.0, 2.0, 3.0):  # a worsening loss: the plateau scale must drop
    _, state = tx.update(grads, state, params, value=jnp.asarray(value))
  assert float(state.inner_state[1].scale) < 1.0


def test_flax_linen_train_state():
  model = nn.Dense(3)
  inputs = jnp.ones((5, 4))
  params = model.init(jax.random.key(0), inputs)['params']
  eta = 0.1
  state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                        tx=pcs.pilot(optax.sgd(eta)))
  loss = lambda p: jnp.sum(model.apply({'params': p}, inputs) ** 2)
  grads = jax.grad(loss)(state.params)
  new = jax.jit(lambda s, g: s.apply_gradients(grads=g))(state, grads)
  x, g = np.asarray(params['kernel'], np.float64), np.asarray(grads['kernel'], np.float64)
  m = np.sqrt((1 + np.sqrt(1 + 4 * x**2)) / 2)
  w = x / m
  np.testing.assert_allclose(new.params['kernel'], (m - eta * g * w) * (w - eta * g * m),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(new.params['bias'], params['bias'] - eta * grads['bias'],
                             rtol=1e-6, atol=1e-7)


def test_flax_nnx_optimizer():
  model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, pcs.pilot(optax.sgd(0.1), alpha=1e-3), wrt=nnx.Param)
  inputs = jnp.ones((5, 4))
  loss = lambda model: jnp.mean((model(inputs) - 1.0) ** 2)

  @nnx.jit
  def step(model, optimizer):
    value, grads = nnx.value_and_grad(loss)(model)
    optimizer.update(model, grads)
    return value

  values = [float(step(model, optimizer)) for _ in range(20)]
  assert values[-1] < 0.5 * values[0]
  opt_state = nnx.as_pure(optimizer.opt_state)
  params = nnx.as_pure(nnx.state(model, nnx.Param))
  factors = pcs.latents(opt_state, params)
  kernel = pcs.Factors(factors.m['kernel'], factors.w['kernel'])
  assert bool(jnp.all(kernel.m > jnp.abs(kernel.w)))  # beta = 1: m^2 - w^2 > 0 stays
  logged = pcs.stats(opt_state, params)
  np.testing.assert_allclose(logged['l1_norm'], jnp.abs(model.kernel[...]).sum(), rtol=1e-6)
