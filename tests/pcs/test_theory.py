"""pcs.theory against independent computations (float64 numpy, autodiff, scipy solvers)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from pcs import implicit
from pcs import theory


def test_mirror_map_matches_float64_arcsinh():
  rng = np.random.default_rng(0)
  x = rng.normal(size=200) * 10.0 ** rng.integers(-6, 6, size=200)
  for log_a in (-30.0, -5.0, 0.0, 3.0):
    got = implicit.mirror_map(jnp.asarray(x, jnp.float32), log_a)
    expected = 0.5 * np.arcsinh(x / np.exp(log_a))
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-6)


def test_mirror_map_is_gradient_of_potential():
  x = jnp.linspace(-5.0, 5.0, 41)
  a = 0.3
  np.testing.assert_allclose(jax.grad(theory.potential)(x, a),
                             implicit.mirror_map(x, np.log(a)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('log_a', [-1e4, -200.0, -80.0, 0.0, 60.0])
def test_maps_finite_for_extreme_ratios(log_a):
  big = float(jnp.finfo(jnp.float32).max)
  x = jnp.array([0.0, 1e-30, -1e-20, 1.0, -1e20, big, -big], jnp.float32)
  z = implicit.mirror_map(x, log_a)
  assert bool(jnp.all(jnp.isfinite(z)))
  back = implicit.inverse_mirror_map(z, log_a)
  assert bool(jnp.all(jnp.isfinite(back)))
  # Where float64 can form the ratio, compare with the textbook formula.
  x64 = np.asarray(x, np.float64)
  with np.errstate(over='ignore', divide='ignore', invalid='ignore'):
    expected = 0.5 * np.arcsinh(x64 / np.exp(np.float64(log_a)))
  ok = np.isfinite(expected)
  np.testing.assert_allclose(np.asarray(z)[ok], expected[ok], rtol=2e-6, atol=1e-37)
  # Round trip: z in float32 carries |z| ~ |log a| / 2, so the relative error of
  # x = a sinh(2z) grows like eps * |log a|. Skipped where z underflows.
  normal = np.abs(np.asarray(z)) >= np.finfo(np.float32).tiny
  np.testing.assert_allclose(np.asarray(back)[normal], x64[normal],
                             rtol=2e-7 * (8 + abs(log_a)))


def test_inverse_map_saturates_instead_of_inf():
  out = implicit.inverse_mirror_map(jnp.array([1e4, -1e4], jnp.float32), 0.0)
  big = jnp.finfo(jnp.float32).max
  np.testing.assert_array_equal(out, [big, -big])


def test_inverse_map_matches_sinh():
  z = np.linspace(-3, 3, 25)
  np.testing.assert_allclose(implicit.inverse_mirror_map(jnp.asarray(z), np.log(0.7)),
                             0.7 * np.sinh(2 * z), rtol=2e-6, atol=1e-7)


def test_a_schedule_closed_form():
  a = theory.a_schedule(lambda k: 0.1 / (k + 1), 0.5, beta=2.0, num_steps=3)
  integral = 0.5 * np.array([0, 0.1, 0.1 + 0.05, 0.1 + 0.05 + 0.1 / 3])
  np.testing.assert_allclose(a, np.exp(-4 * integral), rtol=1e-12)


def _problem(n=8, d=20, seed=0):
  rng = np.random.default_rng(seed)
  A = rng.normal(size=(n, d))
  x_true = np.zeros(d)
  x_true[:2] = [1.5, -2.0]
  return A, A @ x_true, rng.normal(size=d) * 0.3, x_true


def test_kkt_limit_matches_constrained_solver():
  A, y, x0, _ = _problem()
  a0, a_inf = 0.5, 0.05
  got = theory.kkt_limit(A, y, x0, a0, a_inf)
  c = 0.5 * np.arcsinh(x0 / a0)

  def objective(x):
    return 0.5 * np.sum(x * np.arcsinh(x / a_inf) - np.hypot(x, a_inf)) - c @ x

  def gradient(x):
    return 0.5 * np.arcsinh(x / a_inf) - c

  result = scipy.optimize.minimize(
      objective, np.linalg.lstsq(A, y, rcond=None)[0], jac=gradient, method='SLSQP',
      constraints=[{'type': 'eq', 'fun': lambda x: A @ x - y, 'jac': lambda x: A}],
      options={'ftol': 1e-14, 'maxiter': 1000})
  assert result.success, result.message
  np.testing.assert_allclose(got, result.x, atol=2e-5 * np.abs(got).max())
  np.testing.assert_allclose(A @ got, y, atol=1e-9)


def test_basis_pursuit_recovers_sparse_truth():
  rng = np.random.default_rng(1)
  A = rng.normal(size=(40, 100))
  x_true = np.zeros(100)
  x_true[rng.choice(100, 5, replace=False)] = rng.normal(size=5) + np.sign(rng.normal(size=5))
  np.testing.assert_allclose(theory.basis_pursuit(A, A @ x_true), x_true, atol=1e-7)


def test_min_l2_correction_is_orthogonal_projection():
  A, y, x0, _ = _problem()
  x = theory.min_l2_correction(A, y, x0)
  np.testing.assert_allclose(A @ x, y, atol=1e-10)
  # x - x0 lies in the row space of A: orthogonal to the null space.
  null = scipy.linalg.null_space(A)
  np.testing.assert_allclose(null.T @ (x - x0), 0, atol=1e-10)
