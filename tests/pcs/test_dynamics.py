"""PILoT's dynamics against independent computations: closed forms, an ODE solver, KKT, LP.

Jacobs & Burkholz, ICLR 2025: training x = m * w with decay alpha_t is the mirror
flow d/dt [arcsinh(x / a_t) / 2] = -grad f(x), a_t = beta/2 exp(-4 int alpha).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.integrate

import pcs
from experiments.regression import diagonal_network
from pcs import theory

EVERYTHING = lambda path, leaf: True
PROBLEM = diagonal_network.make_problem(seed=0, n=40, d=100, k=5, num_inits=1)
X0 = PROBLEM.x_inits[0]


def _limit(tx, num_steps):
  x, _ = jax.jit(functools.partial(diagonal_network.train, tx, PROBLEM.A, PROBLEM.y,
                                   num_steps=num_steps, record_every=num_steps))(
                                       jnp.asarray(X0, jnp.float32))
  return np.asarray(x, np.float64)


def _decay_then_stop(alpha, decay_steps):
  return lambda t: jnp.where(t < decay_steps, alpha, 0.0)


def _relative_error(x, reference):
  return np.linalg.norm(x - reference) / np.linalg.norm(reference)


def test_gamma_decays_as_exp_of_integrated_alpha():
  """m^2 - w^2 = beta exp(-4 sum eta alpha), up to O(eta^2 g^2) per step."""
  total_time = 4.0
  alpha = lambda t, eta: 0.3 / (1.0 + eta * t)  # alpha as a function of time eta * t
  errors = []
  for eta in (0.02, 0.005):
    steps = int(total_time / eta)
    tx = pcs.pilot(optax.sgd(eta), alpha=functools.partial(alpha, eta=eta), beta=2.0,
                   where=EVERYTHING)
    grad_f = jax.grad(lambda x: 0.5 * jnp.sum((PROBLEM.A @ x - PROBLEM.y)**2) / 40)

    def step(carry, _, tx=tx, grad_f=grad_f):
      x, state = carry
      updates, state = tx.update(grad_f(x), state, x)
      return (optax.apply_updates(x, updates), state), None

    x = jnp.asarray(X0, jnp.float32)
    (x, state), _ = jax.lax.scan(step, (x, tx.init(x)), None, length=steps)
    m, w = pcs.latents(state, x, where=EVERYTHING)
    gamma = np.asarray(m, np.float64)**2 - np.asarray(w, np.float64)**2
    # Closed form of int_0^T 0.3 / (1 + s) ds = 0.3 log(1 + T), sampled as SGD does.
    integral = eta * sum(0.3 / (1.0 + eta * k) for k in range(steps))
    np.testing.assert_allclose(integral, 0.3 * np.log1p(total_time), rtol=0.05)
    errors.append(np.max(np.abs(gamma / (2.0 * np.exp(-4 * integral)) - 1)))
  assert errors[1] < 1e-2, errors
  assert errors[1] < errors[0] / 2.5, errors  # first order in eta


def test_sgd_on_m_w_tracks_the_mirror_flow():
  """Pilot's iterates converge to the ODE solution (scipy) as the step shrinks."""
  n = PROBLEM.A.shape[0]
  alpha0, beta, horizon = 0.2, 1.0, 2.0
  a_of_t = lambda t: beta / 2 * np.exp(-4 * alpha0 * t)  # constant alpha = alpha0

  def flow(t, z):  # dz/dt = -grad f(x), x = a_t sinh(2 z)
    x = a_of_t(t) * np.sinh(2 * z)
    return -PROBLEM.A.T @ (PROBLEM.A @ x - PROBLEM.y) / n

  z0 = 0.5 * np.arcsinh(X0 / a_of_t(0.0))
  ode = scipy.integrate.solve_ivp(flow, (0.0, horizon), z0, method='LSODA',
                                  rtol=1e-10, atol=1e-12)
  assert ode.success
  x_flow = a_of_t(horizon) * np.sinh(2 * ode.y[:, -1])
  errors = []
  for eta in (4e-3, 1e-3):
    tx = pcs.pilot(optax.sgd(eta), alpha=alpha0, beta=beta, where=EVERYTHING)
    errors.append(_relative_error(_limit(tx, round(horizon / eta)), x_flow))
  assert errors[1] < 2e-2, errors
  assert errors[1] < errors[0] / 2.5, errors  # first order in eta


@pytest.mark.parametrize('transform', ['pilot', 'mirror'])
@pytest.mark.parametrize('alpha,decay_steps', [(0.0, 0), (0.05, 1000), (0.1, 1000)])
def test_limit_is_the_kkt_point(transform, alpha, decay_steps):
  """x_inf = argmin_{Ax=y} R_{a_inf}(x) - c.x, a_inf = beta/2 exp(-4 eta alpha T1)."""
  eta, beta = 0.02, 1.0
  schedule = _decay_then_stop(alpha, decay_steps)
  if transform == 'pilot':
    tx = pcs.pilot(optax.sgd(eta), alpha=schedule, beta=beta, where=EVERYTHING)
  else:
    tx = pcs.mirror(optax.sgd(eta), alpha=schedule, beta=beta, learning_rate=eta,
                    where=EVERYTHING)
  x = _limit(tx, 60_000)
  a_inf = beta / 2 * np.exp(-4 * eta * alpha * decay_steps)
  expected = theory.kkt_limit(PROBLEM.A, PROBLEM.y, X0, beta / 2, a_inf)
  assert _relative_error(x, expected) <= 1e-2


def test_large_beta_gives_the_min_l2_correction():
  beta, eta = 1e4, 2e-6
  tx = pcs.pilot(optax.sgd(eta), beta=beta, where=EVERYTHING)
  x = _limit(tx, 20_000)
  expected = theory.min_l2_correction(PROBLEM.A, PROBLEM.y, X0)
  assert _relative_error(x, expected) <= 1e-2
  # And it is far from the sparse solution, so the test can tell the two apart.
  assert _relative_error(theory.basis_pursuit(PROBLEM.A, PROBLEM.y), expected) > 0.3


def test_small_a_gives_the_basis_pursuit_l1_norm():
  l1_bp = np.abs(theory.basis_pursuit(PROBLEM.A, PROBLEM.y)).sum()
  # The theory's limit approaches the LP value monotonically as a_inf -> 0.
  gaps = [np.abs(theory.kkt_limit(PROBLEM.A, PROBLEM.y, X0, 0.5, a)).sum() - l1_bp
          for a in (1e-2, 1e-4, 1e-6)]
  assert all(g > 0 for g in gaps) and gaps[0] > gaps[1] > gaps[2]
  assert gaps[2] / l1_bp < 1e-2
  # And PILoT gets there by decay alone (int alpha = 4, a_inf = 0.5 e^-16).
  tx = pcs.pilot(optax.sgd(0.02), alpha=_decay_then_stop(0.2, 1000), where=EVERYTHING)
  x = _limit(tx, 60_000)
  assert abs(np.abs(x).sum() - l1_bp) / l1_bp < 1e-2
  np.testing.assert_allclose(PROBLEM.A @ x, PROBLEM.y, atol=1e-2)


def test_pilots_step_on_x_scales_with_the_weight_it_moves():
  # One plain SGD step of size eta on (m, w), no decay, from the init m0^2 - w0^2 = beta:
  #   x' = (m - eta g w)(w - eta g m) = x - eta g (m^2 + w^2) + eta^2 g^2 x,
  # and m^2 + w^2 = sqrt(beta^2 + 4 x^2). So the step on x is sqrt(beta^2 + 4 x^2) times
  # a dense SGD step: about 2|x| for large weights, which is why the few that survive a
  # 98% prune step several times faster than dense ones (experiments/common/optimizers.py).
  eta, beta = 0.2, 1.0
  x = np.array([[0.0, 0.5, -2.0, 6.0]], np.float32)
  g = np.array([[0.3, -0.1, 0.2, 0.05]], np.float32)
  tx = pcs.pilot(optax.sgd(eta), alpha=0.0, beta=beta)
  updates, _ = tx.update({'k': jnp.asarray(g)}, tx.init({'k': jnp.asarray(x)}),
                         {'k': jnp.asarray(x)})
  x64, g64 = x.astype(np.float64), g.astype(np.float64)
  scale = np.sqrt(beta ** 2 + 4 * x64 ** 2)
  expected = -eta * g64 * scale + eta ** 2 * g64 ** 2 * x64
  np.testing.assert_allclose(np.asarray(updates['k']), expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(scale[0, [0, 3]], [1.0, np.sqrt(145.0)])  # 1x at 0, 12x at 6
