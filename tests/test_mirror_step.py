"""The transcendental-free mirror step against a float64 reference over extreme ranges."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcs import implicit

RTOL = {'bfloat16': 2e-2, 'float32': 2e-6, 'float64': 1e-13}


def _reference(x, dz, a, a_next):
  """a_{t+1} sinh(2 (1/2 arcsinh(x / a_t) + dz)) in float64 (log space for huge ratios)."""
  x, dz = np.asarray(x, np.float64), np.asarray(dz, np.float64)
  z = 0.5 * np.arcsinh(x / a)
  return a_next * np.sinh(2 * (z + dz))


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
      got = np.asarray(implicit.mirror_step(x_in, jnp.asarray(dz, dtype), np.log(a),
                                            np.log(a_next)), np.float64)
      want = _reference(np.asarray(x_in, np.float64), np.asarray(jnp.asarray(dz, dtype),
                                                                 np.float64), a, a_next)
      finite = np.abs(want) < float(jnp.finfo(dtype).max)
      big = float(jnp.finfo(dtype).max)
      np.testing.assert_array_equal(got[~finite], np.sign(want[~finite]) * big)
      # Relative to the result, or to a_{t+1} near a sign change (where x crosses 0).
      scale = np.maximum(np.abs(want), a_next)
      err = np.abs(got - want)[finite] / scale[finite]
      assert err.max() <= RTOL[dtype] * 8, (dtype, a, x, dz, err.max())


def test_small_steps_take_no_transcendental_per_weight():
  x = jnp.linspace(-2.0, 2.0, 64)
  jaxpr = jax.make_jaxpr(implicit.mirror_step)(x, x * 1e-3, np.log(0.5), np.log(0.49))
  cond = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == 'cond']
  assert len(cond) == 1
  fast_branch = cond[0].params['branches'][1]  # taken when every |u| <= 0.5
  names = {e.primitive.name for e in fast_branch.jaxpr.eqns}
  assert not names & {'exp', 'log', 'log1p', 'expm1', 'sinh', 'cosh', 'asinh'}, names
  # Outside the branches: only a_t and a_{t+1} / a_t, two scalar exponentials.
  names = ('exp', 'log', 'log1p', 'expm1', 'sinh', 'cosh', 'asinh')
  transcendental = [e for e in jaxpr.jaxpr.eqns if e.primitive.name in names]
  assert [e.primitive.name for e in transcendental] == ['exp', 'exp']
  assert all(v.aval.shape == () for e in transcendental for v in e.outvars)
