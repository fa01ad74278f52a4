"""The transcendental-free mirror step against a float64 reference over extreme ranges."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcs import implicit

# bfloat16 is computed in float32 and rounded once; float32 and float64 within 8 ulp.
RTOL = {'bfloat16': 2 ** -8, 'float32': 8 * 2 ** -23, 'float64': 8 * 2 ** -52}


def _reference(x, dz, log_a, log_a_next):
  """a_{t+1} sinh(2 (1/2 arcsinh(x / a_t) + dz)) in numpy's long double (64-bit
  mantissa on x86), returned as float64: 11 bits beyond float64, enough to check
  float64 to a few ulp where |2 z| reaches 140."""
  wide = np.longdouble
  x, dz = np.asarray(x, wide), np.asarray(dz, wide)
  a, a_next = np.exp(wide(log_a)), np.exp(wide(log_a_next))
  z = np.arcsinh(x / a) / 2
  return (a_next * np.sinh(2 * (z + dz))).astype(np.float64)


def _grid():
  """For each a_t: x with |x| / a from 1e-3 to 1e30 and steps |u| = 2 |dz| from 1e-6 to 10."""
  rng = np.random.default_rng(0)
  for a in (1.0, 1e-3, 1e-10, 1e-30):
    xs, dzs = [], []
    for ratio in (1e-3, 1.0, 1e3, 1e10, 1e30):
      for u in (1e-6, 1e-3, 0.1, 0.49, 0.51, 2.0, 10.0):
        xs.append(a * ratio * rng.choice([-1.0, 1.0], size=8) * rng.uniform(0.5, 2.0, size=8))
        dzs.append(u / 2 * rng.choice([-1.0, 1.0], size=8) * rng.uniform(0.9, 1.0, size=8))
    yield a, np.concatenate(xs), np.concatenate(dzs)


@pytest.mark.parametrize('dtype', ['bfloat16', 'float32', 'float64'])
def test_mirror_step_matches_the_float64_reference(dtype):
  with jax.enable_x64(dtype == 'float64'):
    for a, x, dz in _grid():
      x_in = jnp.asarray(x, dtype)
      a_next = a * np.exp(-4 * 0.01)
      # log a_t as the step holds it (float32 below float64): the reference uses the
      # same a_t, whose own rounding (|log a| ulp) is the state's, not the step's.
      held = np.float64 if dtype == 'float64' else np.float32
      log_a, log_a_next = held(np.log(a)), held(np.log(a_next))
      got = np.asarray(implicit.mirror_step(x_in, jnp.asarray(dz, dtype), log_a, log_a_next),
                       np.float64)
      want = _reference(np.asarray(x_in, np.float64), np.asarray(jnp.asarray(dz, dtype),
                                                                 np.float64), log_a, log_a_next)
      finite = np.abs(want) < float(jnp.finfo(dtype).max)
      big = float(jnp.finfo(dtype).max)
      np.testing.assert_array_equal(got[~finite], np.sign(want[~finite]) * big)
      # Relative to the result, or to a_{t+1} near a sign change (where x crosses 0).
      scale = np.maximum(np.abs(want), a_next)
      err = np.abs(got - want)[finite] / scale[finite]
      assert err.max() <= RTOL[dtype], (dtype, a, x, dz, err.max())


def test_the_step_takes_no_transcendental_per_weight_and_no_branch():
  x = jnp.linspace(-2.0, 2.0, 64)
  jaxpr = jax.make_jaxpr(implicit.mirror_step)(x, x * 1e-3, np.log(0.5), np.log(0.49))
  names = [e.primitive.name for e in jaxpr.jaxpr.eqns]
  assert 'cond' not in names and 'while' not in names, names
  # Only a_t and a_{t+1} / a_t: two scalar exponentials.
  transcendental = [e for e in jaxpr.jaxpr.eqns if e.primitive.name in (
      'exp', 'exp2', 'log', 'log1p', 'expm1', 'sinh', 'cosh', 'asinh', 'pow')]
  assert [e.primitive.name for e in transcendental] == ['exp', 'exp']
  assert all(v.aval.shape == () for e in transcendental for v in e.outvars)
