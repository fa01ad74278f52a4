"""Algorithm 1's alpha controller against a hand-worked trace (Jacobs & Burkholz, ICLR 2025)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pcs

ETA = 0.1
PARAMS = {'kernel': jnp.array([[1.0, -2.0]])}
ZERO = {'kernel': jnp.zeros((1, 2))}


def _run(alpha, accuracies, pass_accuracy=True):
  """Steps with zero gradient; returns alpha_t used by each step, read off m's decay."""
  tx = pcs.pilot(optax.sgd(ETA), alpha=alpha)

  @jax.jit
  def step(params, state, accuracy):
    extra = {'accuracy': accuracy} if pass_accuracy else {}
    updates, state = tx.update(ZERO, state, params, **extra)
    return optax.apply_updates(params, updates), state

  params, state = PARAMS, tx.init(PARAMS)
  used = []
  for acc in accuracies:
    m_before = pcs.latents(state, params).m['kernel']
    params, state = step(params, state, acc)
    # g = 0: m' = (1 - 2 eta alpha_t) m, an independent read-out of alpha_t.
    ratio = np.asarray(pcs.latents(state, params).m['kernel'] / m_before)
    used.append(float((1 - ratio[0, 0]) / (2 * ETA)))
  return np.array(used), state


def test_hand_worked_trace():
  # T = 4 epochs of 2 steps, delta = 2. Epoch accuracies 0.5, 0.6, 0.7, 0.8:
  # epoch 1: 0.5 > -inf, k=1 <= 2 -> x2;  epoch 2: 0.6 > 0.5, k=2 <= 2 -> x2;
  # epoch 3: improved but k=3 > T/2 -> /2;  epoch 4: /2.
  alpha = pcs.alpha_controller(0.01, delta=2.0, steps_per_epoch=2, num_epochs=4)
  used, state = _run(alpha, [0.4, 0.6, 0.5, 0.7, 0.7, 0.7, 0.8, 0.8])
  np.testing.assert_allclose(used, [0.01, 0.01, 0.02, 0.02, 0.04, 0.04, 0.02, 0.02], rtol=1e-4)
  assert int(state.alpha_state.epoch) == 4
  np.testing.assert_allclose(state.alpha_state.alpha, 0.01, rtol=1e-6)  # the next epoch's
  np.testing.assert_allclose(pcs.stats(state, PARAMS)['alpha'], 0.02, rtol=1e-6)  # epoch 4's
  np.testing.assert_allclose(state.alpha_state.last_accuracy, 0.8, rtol=1e-6)


def test_shrinks_when_accuracy_drops():
  alpha = pcs.alpha_controller(0.01, delta=2.0, steps_per_epoch=1, num_epochs=10)
  used, _ = _run(alpha, [0.5, 0.4, 0.6, 0.6])
  # epoch 1 grows, epoch 2 (0.4 < 0.5) shrinks, epoch 3 grows, epoch 4 (equal) shrinks.
  np.testing.assert_allclose(used, [0.01, 0.02, 0.01, 0.02], rtol=1e-4)


def test_shrinks_below_the_l1_threshold():
  # ||x||_1 = 3 after each step (g = 0 shrinks it a little, still < 5 = K).
  alpha = pcs.alpha_controller(0.01, delta=2.0, steps_per_epoch=1, num_epochs=10,
                               l1_threshold=5.0)
  used, _ = _run(alpha, [0.5, 0.6, 0.7])
  np.testing.assert_allclose(used, [0.01, 0.005, 0.0025], rtol=1e-4)


def test_without_accuracy_grows_then_decays():
  alpha = pcs.alpha_controller(0.01, delta=2.0, steps_per_epoch=1, num_epochs=4)
  used, _ = _run(alpha, [0.0] * 5, pass_accuracy=False)
  np.testing.assert_allclose(used, [0.01, 0.02, 0.04, 0.02, 0.01], rtol=1e-4)


def test_mirror_uses_the_controller_and_learning_rate():
  alpha = pcs.alpha_controller(0.01, delta=2.0, steps_per_epoch=1, num_epochs=4)
  tx = pcs.mirror(optax.sgd(ETA), alpha=alpha, learning_rate=ETA)
  state = tx.init(PARAMS)
  for _ in range(3):
    _, state = tx.update(ZERO, state, PARAMS)
  # a_3 = 1/2 exp(-4 eta (0.01 + 0.02 + 0.04)).
  np.testing.assert_allclose(pcs.stats(state, PARAMS)['a'],
                             0.5 * np.exp(-4 * ETA * 0.07), rtol=1e-6)


@pytest.mark.parametrize('kwargs,message', [
    (dict(delta=1.0), 'delta'),
    (dict(delta=0.5), 'delta'),
    (dict(steps_per_epoch=0), 'steps_per_epoch'),
    (dict(num_epochs=2.5), 'num_epochs'),
    (dict(l1_threshold=-1.0), 'l1_threshold'),
])
def test_invalid_controller_arguments(kwargs, message):
  full = dict(delta=2.0, steps_per_epoch=10, num_epochs=4)
  full.update(kwargs)
  with pytest.raises(ValueError, match=message):
    pcs.alpha_controller(0.01, **full)
  with pytest.raises(ValueError, match='init_alpha'):
    pcs.alpha_controller(-0.1, delta=2.0, steps_per_epoch=1, num_epochs=1)
