"""Every pcs method through every surface a user touches.

Training loops written as Flax's examples write them (nnx: ``nnx.Optimizer``,
``nnx.jit``, ``nnx.value_and_grad``, metrics; linen: ``TrainState.apply_gradients``)
with momentum and adam inners, compared with the same transform driven by a plain
functional loop; the optax wrappers; ``tree_map_params``; orbax against an
``eval_shape`` target; injected hyperparameters under jit; keep_masked around pcs
inners; spred's signs; and the core import without optional packages.
"""

import os
import subprocess
import sys

from flax import nnx
import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import pcs
from tests import helpers

STEPS = 6
IS_HOLE = lambda n: isinstance(n, optax.MaskedNode)


def _functional(tx, params, steps=STEPS, accuracy=True):
  """The reference: the transform driven by a plain jitted loop on pure params
  (passing the batch accuracy to ``update`` unless ``accuracy`` is False)."""
  inputs, labels = helpers.batch()
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    (loss, logits), grads = jax.value_and_grad(
        lambda p: _loss_and_logits(p, inputs, labels), has_aux=True)(params)
    extra = {'accuracy': jnp.mean(jnp.argmax(logits, -1) == labels)} if accuracy else {}
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state, loss

  losses = []
  for _ in range(steps):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  return params, state, losses


def _loss_and_logits(params, inputs, labels):
  logits = helpers.mlp_apply(params, inputs)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits


class NnxMLP(nnx.Module):
  """helpers.mlp_apply as an nnx module (same parameter names: dense0, dense1)."""

  def __init__(self, params):
    rngs = nnx.Rngs(0)
    self.dense0 = nnx.Linear(16, 32, rngs=rngs)
    self.dense1 = nnx.Linear(32, 4, rngs=rngs)
    for name in ('dense0', 'dense1'):
      getattr(self, name).kernel[...] = params[name]['kernel']
      getattr(self, name).bias[...] = params[name]['bias']

  def __call__(self, x):
    return self.dense1(nnx.relu(self.dense0(x)))


class LinenMLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(32, name='dense0')(x))
    return nn.Dense(4, name='dense1')(x)


CASES = [(m, i) for m in sorted(helpers.METHODS) for i in sorted(helpers.INNERS)]


def _nnx_loop(tx, params):
  """Flax's MNIST example loop: nnx.Optimizer, nnx.jit, nnx.value_and_grad, metrics."""
  model = NnxMLP(params)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average('loss'))
  inputs, labels = helpers.batch()

  def loss_fn(model):
    logits = model(inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

  @nnx.jit
  def train_step(model, optimizer, metrics):
    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    metrics.update(loss=loss, logits=logits, labels=labels)
    optimizer.update(model, grads, accuracy=jnp.mean(jnp.argmax(logits, -1) == labels))

  for _ in range(STEPS):
    train_step(model, optimizer, metrics)
  return model, optimizer, metrics


def _linen_loop(tx, params):
  """The linen loop: TrainState.apply_gradients (which passes no accuracy=)."""
  model = LinenMLP()
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  inputs, labels = helpers.batch()

  @jax.jit
  def train_step(state):
    def loss_fn(params):
      logits = state.apply_fn({'params': params}, inputs)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return state.apply_gradients(grads=jax.grad(loss_fn)(state.params))

  for _ in range(STEPS):
    state = train_step(state)
  return state.params


@pytest.mark.parametrize('method,inner', CASES)
def test_nnx_and_linen_loops_equal_the_functional_loop(method, inner):
  params = helpers.mlp_params()
  tx = helpers.METHODS[method](helpers.INNERS[inner]())
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
  expected, expected_state, losses = _functional(tx, params)

  model, optimizer, metrics = _nnx_loop(tx, params)
  jax.tree.map(close, nnx.to_pure_dict(nnx.state(model, nnx.Param)), expected)
  np.testing.assert_allclose(metrics.compute()['loss'], np.mean(losses), rtol=1e-5)
  opt_state = nnx.as_pure(optimizer.opt_state)
  params_state = nnx.as_pure(nnx.state(model, nnx.Param))
  logged, reference = pcs.stats(opt_state, params_state), pcs.stats(expected_state, expected)
  assert logged.keys() == reference.keys()
  for key in logged:
    np.testing.assert_allclose(logged[key], reference[key], rtol=1e-4, atol=1e-6, err_msg=key)

  # Only the controller reads accuracy=, which apply_gradients does not pass.
  if method == 'pilot_controller':
    expected, _, _ = _functional(tx, params, accuracy=False)
  jax.tree.map(close, _linen_loop(tx, params), expected)


def _wrappers(make):
  labels = {'dense0': {'kernel': 'pcs', 'bias': 'plain'},
            'dense1': {'kernel': 'pcs', 'bias': 'plain'}}
  return {
      'chain': optax.chain(optax.clip_by_global_norm(1.0), make()),
      # optax.masked passes the other leaves' gradients through: train those with sgd.
      'masked': optax.chain(optax.masked(make(), {'dense0': True, 'dense1': False}),
                            optax.masked(optax.sgd(0.05), {'dense0': False, 'dense1': True})),
      'multi_transform': optax.multi_transform({'pcs': make(), 'plain': optax.sgd(0.05)},
                                               labels),
      'multi_steps': optax.MultiSteps(make(), every_k_schedule=2),
      'apply_if_finite': optax.apply_if_finite(make(), max_consecutive_errors=3),
  }


@pytest.mark.parametrize('method', sorted(helpers.METHODS))
def test_every_optax_wrapper_trains_and_reports_stats(method, tmp_path):
  make = lambda: helpers.METHODS[method](helpers.INNERS['momentum']())
  params = helpers.mlp_params()
  for name, tx in _wrappers(make).items():
    new, state, losses = _functional(tx, params, steps=8)
    assert np.isfinite(losses).all() and losses[-1] < losses[0], (name, losses)
    logged = pcs.stats(state, new)
    assert all(np.isfinite(v) for v in logged.values()), (name, logged)
    # tree_map_params reaches the params-shaped trees of the whole composition.
    zeros = optax.tree_utils.tree_map_params(
        tx, lambda v: v if IS_HOLE(v) else jnp.zeros_like(v), state, is_leaf=IS_HOLE)
    per_weight = [x for x in jax.tree.leaves(zeros) if jnp.ndim(x) and x.size > 1]
    assert per_weight and all(not np.any(x) for x in per_weight), name
    # orbax restores the state into an eval_shape target.
    path = os.path.join(tmp_path, name)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, state)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(path, jax.eval_shape(tx.init, params))
    jax.tree.map(np.testing.assert_array_equal, restored, state)


def test_sharding_specs_follow_the_params_through_tree_map_params():
  """The standard recipe: optimizer-state specs derived from the params' specs."""
  params = helpers.mlp_params()
  specs = jax.tree.map(lambda x: 'row' if x.ndim == 2 else 'vector', params)
  for method in ('pilot', 'mirror', 'soft_threshold', 'gmp_of_pilot'):
    tx = helpers.METHODS[method](optax.adam(1e-2))
    state = tx.init(params)
    state_specs = optax.tree_utils.tree_map_params(
        tx, lambda v, spec: v if IS_HOLE(v) else spec, state, specs,
        transform_non_params=lambda _: 'scalar', is_leaf=IS_HOLE)
    pairs = zip(jax.tree.leaves(state), jax.tree.leaves(state_specs))
    for leaf, spec in pairs:
      assert spec in ('row', 'vector', 'scalar')
      # Every array with a weight's shape got that weight's spec; nothing else did.
      if spec == 'row':
        assert leaf.ndim in (0, 2), (method, leaf.shape)  # STR keeps a scalar per kernel
      elif spec == 'vector':
        assert leaf.ndim == 1


INJECTED = {
    'pilot': (pcs.pilot, dict(alpha=1e-3, beta=1.0)),
    'mirror': (pcs.mirror, dict(alpha=1e-3, beta=1.0, learning_rate=0.05)),
    'mirror_alpha_zero': (pcs.mirror, dict(alpha=0.0, beta=1.0)),
    'spred': (pcs.spred, dict(weight_decay=1e-4)),
    'soft_threshold': (pcs.soft_threshold, dict(weight_decay=1e-3, init_threshold=-4.0)),
    'continuous_sparsification': (pcs.continuous_sparsification, dict(
        l1_strength=1e-4, num_steps=3, final_temperature=50.0, mask_init=0.5)),
    'powerprop': (pcs.powerprop, dict(power=2.0, weight_decay=1e-4)),
    'l1': (pcs.l1, dict(strength=1e-3, learning_rate=0.05)),
    'gmp': (pcs.gmp, dict(final_sparsity=0.5, begin_step=1, end_step=3, frequency=1,
                          initial_sparsity=0.1)),
    'one_shot_pruning': (pcs.one_shot_pruning, dict(sparsity=0.5, step=2)),
}


@pytest.mark.parametrize('name', sorted(INJECTED))
def test_every_hyperparameter_is_injectable_under_jit(name):
  factory, kwargs = INJECTED[name]
  params = helpers.mlp_params()
  inputs, labels = helpers.batch()
  grad = jax.jit(jax.grad(helpers.loss_fn))

  def run(tx, jit):
    update = jax.jit(tx.update) if jit else tx.update
    p, state = params, tx.init(params)
    for _ in range(4):
      updates, state = update(grad(p, inputs, labels), state, p)
      p = optax.apply_updates(p, updates)
    return p

  plain = run(factory(optax.sgd(0.05, momentum=0.9), **kwargs), jit=True)
  injected = optax.inject_hyperparams(factory)(optax.sgd(0.05, momentum=0.9), **kwargs)
  for jit in (False, True):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 run(injected, jit), plain)


KEEP_MASKED_INNERS = {
    'pilot_momentum': lambda: pcs.pilot(optax.sgd(0.05, momentum=0.9), alpha=1e-3),
    'pilot_adam': lambda: pcs.pilot(optax.adam(1e-2), alpha=1e-3),
    'soft_threshold_momentum': lambda: pcs.soft_threshold(optax.sgd(0.05, momentum=0.9),
                                                          weight_decay=1e-3),
    'mirror_momentum': lambda: pcs.mirror(optax.sgd(0.05, momentum=0.9), alpha=1e-3,
                                          learning_rate=0.05),
}


@pytest.mark.parametrize('name', sorted(KEEP_MASKED_INNERS))
def test_keep_masked_zeroes_the_moments_of_a_pcs_inner(name):
  params, masks = pcs.prune(helpers.mlp_params(), 0.5)
  tx = pcs.keep_masked(KEEP_MASKED_INNERS[name](), masks)
  new, state, losses = _functional(tx, params, steps=10)
  assert losses[-1] < losses[0]
  pcs_state = state.inner_state
  inner = pcs_state.inner_state
  moments = inner[0].mu if 'adam' in name else inner[0].trace  # optax.adam / optax.sgd chains
  trees = ([moments.latents.m, moments.latents.w] if 'pilot' in name else
           [moments.latents.w] if 'soft_threshold' in name else [moments.latents.z])
  checked = 0
  for tree in trees:
    for layer in ('dense0', 'dense1'):
      pruned = ~masks[layer]['kernel']
      moment = np.asarray(tree[layer]['kernel'])
      assert np.abs(moment[~pruned]).max() > 0  # the kept entries do move
      np.testing.assert_array_equal(moment[pruned], 0.0)
      np.testing.assert_array_equal(np.asarray(new[layer]['kernel'])[pruned], 0.0)
      checked += 1
  assert checked == 2 * len(trees)


def test_gmp_of_pilot_keeps_exact_zeros_and_consistent_latents():
  params = helpers.mlp_params()
  tx = helpers.METHODS['gmp_of_pilot'](helpers.INNERS['momentum']())
  new, state, _ = _functional(tx, params, steps=10)
  factors = pcs.latents(state, new)
  masks = state.masks
  for layer in ('dense0', 'dense1'):
    x = np.asarray(new[layer]['kernel'])
    pruned = ~np.asarray(masks[layer]['kernel'])
    assert pruned.mean() == pytest.approx(0.5, abs=1 / x.size)
    np.testing.assert_array_equal(x[pruned], 0.0)
    m, w = np.asarray(factors.m[layer]['kernel']), np.asarray(factors.w[layer]['kernel'])
    np.testing.assert_array_equal(w[pruned], 0.0)
    np.testing.assert_allclose(m * w, x, rtol=1e-6, atol=0)
    # The inner momentum of pruned latents is cleared.
    trace = state.inner_state.inner_state[0].trace.latents
    np.testing.assert_array_equal(np.asarray(trace.m[layer]['kernel'])[pruned], 0.0)
    np.testing.assert_array_equal(np.asarray(trace.w[layer]['kernel'])[pruned], 0.0)


@pytest.mark.parametrize('inner', ['sgd', 'momentum', 'adam'])
def test_spred_never_changes_sign(inner):
  """Every coordinate is pushed across zero for 30k steps; none gets there."""
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.choice([-1.0, 1.0], size=(32, 32)) * rng.uniform(0.5, 1.5, (32, 32)),
                   jnp.float32)
  push = jnp.sign(x0)  # grad of sum(sign(x0) * x): descent drives every x towards -sign(x0)
  inners = {'sgd': optax.sgd(1e-3), 'momentum': optax.sgd(1e-3, momentum=0.9),
            'adam': optax.adam(1e-3)}
  tx = pcs.spred(inners[inner], weight_decay=1e-5)

  def step(carry, _):
    x, state, kept = carry
    updates, state = tx.update(push, state, x)
    x = optax.apply_updates(x, updates)
    return (x, state, kept & jnp.all(x * x0 >= 0)), None

  (x, state, kept), _ = jax.lax.scan(step, (x0, tx.init(x0), jnp.array(True)), None,
                                     length=30_000)
  assert bool(kept)
  assert float(jnp.abs(x).max()) < 1e-2  # it was driven all the way to zero
  assert not jax.tree.leaves(state.stored)  # spred keeps no latent copy


def test_pilot_keeps_only_m():
  params = helpers.mlp_params()
  state = pcs.pilot(optax.sgd(0.1), alpha=1e-3).init(params)
  stored = jax.tree.leaves(state.stored)
  assert [x.shape for x in stored] == [(16, 32), (32, 4)]


def _python(code: str) -> subprocess.CompletedProcess:
  env = {**os.environ, 'PYTHONPATH': helpers.REPO}
  return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        env=env, cwd=helpers.REPO, timeout=120, check=False)


BLOCK = """
import sys
for name in ('flax', 'orbax', 'tensorflow', 'tensorflow_datasets', 'sklearn'):
  sys.modules[name] = None  # any import of these now raises ImportError
"""


def test_the_core_imports_and_trains_without_optional_packages():
  result = _python(BLOCK + """
import jax, jax.numpy as jnp, optax, pcs
params = {'kernel': jnp.ones((3, 2)), 'bias': jnp.zeros(2)}
for tx in (pcs.pilot(optax.sgd(0.1), alpha=1e-3), pcs.mirror(optax.sgd(0.1), alpha=1e-3,
           learning_rate=0.1), pcs.spred(optax.sgd(0.1), weight_decay=1e-3),
           pcs.soft_threshold(optax.sgd(0.1), weight_decay=1e-3), pcs.l1(optax.sgd(0.1),
           strength=1e-3, learning_rate=0.1), pcs.powerprop(optax.sgd(0.1)),
           pcs.continuous_sparsification(optax.sgd(0.1), l1_strength=1e-3, num_steps=5),
           pcs.gmp(optax.sgd(0.1), final_sparsity=0.5, begin_step=0, end_step=2)):
  state = tx.init(params)
  updates, state = tx.update(params, state, params)
  pcs.stats(state, params)
print(pcs.summary(pcs.prune(params, 0.5)[0]).sparsity)
print(sorted(m for m in ('flax', 'orbax', 'scipy.optimize', 'scipy.sparse')
             if sys.modules.get(m) is not None))
""")
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ['0.5', '[]']


@pytest.mark.parametrize('call,extra', [
    ('pcs.sparse_apply(None, {"params": {}}, {})', 'export'),
    ('pcs.iterative_pruning(lambda p, m, c: p, {}, num_cycles=0, checkpoint_dir="/tmp/x")',
     'checkpoint'),
])
def test_a_missing_extra_is_named(call, extra):
  result = _python(BLOCK + f'import pcs\n{call}\n')
  assert result.returncode != 0
  assert f"pip install 'pcs[{extra}]'" in result.stderr, result.stderr
