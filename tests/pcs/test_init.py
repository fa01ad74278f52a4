"""The sign-flip friendly init: m0 w0 = x, m0^2 - w0^2 = beta, m0 > |w0|, for extreme values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pcs

EXTREME = np.array([0.0, 1e-30, -1e-30, 1e-8, -3.5, 1.0, 1e4, -1e6, 1e15, -1e30])


@pytest.mark.parametrize('beta', [1e-8, 1e-3, 1.0, 1e3, 1e8])
def test_invariants_float64(beta):
  with jax.enable_x64(True):
    x = jnp.asarray(EXTREME, jnp.float64)
    m0, w0 = (np.asarray(v) for v in pcs.product_init(x, beta))
  assert np.all(np.isfinite(m0)) and np.all(np.isfinite(w0))
  np.testing.assert_allclose(m0 * w0, EXTREME, rtol=1e-14, atol=0)
  # m0^2 - w0^2 = beta, relative to the size of the terms that cancel.
  assert np.all(np.abs(m0**2 - w0**2 - beta) <= 1e-14 * (beta + 2 * np.abs(EXTREME)))
  # m0 > |w0| strictly wherever beta is representable next to x^2; >= always.
  assert np.all(m0 >= np.abs(w0))
  resolvable = beta > 4 * np.finfo(np.float64).eps * EXTREME**2
  assert np.all((m0 > np.abs(w0))[resolvable])


def test_hand_worked_values():
  # beta = 1, x = 6: sqrt(1 + 144) = sqrt(145); m0^2 = (1 + sqrt(145)) / 2.
  m0, w0 = pcs.product_init(jnp.array([6.0, 0.0]), 1.0)
  expected_m0 = np.sqrt((1 + np.sqrt(145.0)) / 2)
  np.testing.assert_allclose(m0, [expected_m0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(w0, [6.0 / expected_m0, 0.0], rtol=1e-6)


def test_balanced_init_for_beta_zero():
  x = jnp.array([4.0, -9.0, 0.0])
  m0, w0 = pcs.product_init(x, 0.0)
  np.testing.assert_allclose(m0, [2.0, 3.0, 0.0])
  np.testing.assert_allclose(w0, [2.0, -3.0, 0.0])


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_low_precision_is_finite_and_consistent(dtype):
  x = jnp.asarray(EXTREME[np.abs(EXTREME) < float(jnp.finfo(dtype).max)], dtype)
  m0, w0 = pcs.product_init(x, 1.0)
  assert m0.dtype == dtype and w0.dtype == dtype
  assert bool(jnp.all(jnp.isfinite(m0)) & jnp.all(jnp.isfinite(w0)))
  eps = float(jnp.finfo(dtype).eps)
  prod = np.asarray(m0, np.float64) * np.asarray(w0, np.float64)
  np.testing.assert_allclose(prod, np.asarray(x, np.float64), rtol=4 * eps)
