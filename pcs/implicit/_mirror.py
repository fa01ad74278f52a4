"""PILoT run as mirror descent on x itself, holding no m, w copies.

Jacobs & Burkholz, "Mask in the Mirror: Implicit Sparsification", ICLR 2025.
"""

import math
import numbers
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pcs.core import _alpha as alpha_lib
from pcs.core import _checks as checks
from pcs.core import _reparameterize as reparam
from pcs.core import _selection as selection
from pcs.core import _boundary as boundary


def _working_precision(x, *others) -> tuple:
  """(x's dtype, then x and ``others`` in it promoted to at least float32): half-precision
  inputs are computed in float32 and cast back by the caller."""
  dtype = jnp.result_type(x)
  work = jnp.promote_types(dtype, jnp.float32)
  return (dtype, jnp.asarray(x, work), *(jnp.asarray(v, work) for v in others))


def mirror_map(x: jax.Array, log_a) -> jax.Array:
  """grad R_a(x) = 1/2 arcsinh(x / a), with a = exp(log_a).

  Evaluated without forming x / a where it would overflow: for ``|x| > a``,
  ``arcsinh(x/a) = sign(x) [log|x| - log a + log(1 + sqrt(1 + (a/x)^2))]``. Finite
  for every finite x and finite log_a (a may underflow to 0).

  Example:
    >>> import jax.numpy as jnp, pcs
    >>> float(pcs.implicit.mirror_map(jnp.float32(1e30), 0.0))  # 1/2 arcsinh(1e30): finite
    34.88...
  """
  dtype, x, log_a = _working_precision(x, log_a)
  a = jnp.exp(log_a)
  absx = jnp.abs(x)
  large = absx > a
  safe_x = jnp.where(large, absx, jnp.ones_like(absx))
  ratio = jnp.exp(log_a - jnp.log(safe_x))  # a / |x| <= 1 on this branch
  far = jnp.sign(x) * (jnp.log(safe_x) - log_a + jnp.log1p(jnp.sqrt(1 + ratio**2)))
  near_ratio = jnp.exp(jnp.log(jnp.where(large, 0, absx)) - log_a)  # |x| / a <= 1
  near = jnp.sign(x) * jnp.arcsinh(near_ratio)
  return (0.5 * jnp.where(large, far, near)).astype(dtype)


def inverse_mirror_map(z: jax.Array, log_a) -> jax.Array:
  """(grad R_a)^{-1}(z) = a sinh(2 z), with a = exp(log_a).

  Evaluated as ``sign(z) exp(log a + 2|z| - log 2) (1 - exp(-4|z|))``, exact in
  exact arithmetic and free of overflow in the intermediate sinh; saturates at
  the dtype's largest finite value instead of returning inf.

  Example:
    >>> import jax.numpy as jnp, pcs
    >>> z = pcs.implicit.mirror_map(jnp.float32(3.0), jnp.log(0.5))
    >>> round(float(pcs.implicit.inverse_mirror_map(z, jnp.log(0.5))), 5)
    3.0
  """
  dtype, z, log_a = _working_precision(z, log_a)
  work = z.dtype
  absz = jnp.abs(z)
  log_max = jnp.log(jnp.finfo(dtype).max).astype(work)
  magnitude = jnp.exp(jnp.minimum(log_a + 2 * absz - jnp.log(2.0), log_max))
  x = jnp.sign(z) * magnitude * -jnp.expm1(-4 * absz)
  big = jnp.finfo(dtype).max
  return jnp.clip(x, -big, big).astype(dtype)



# ln 2 split as hi + lo, hi with trailing zero bits so that n * hi is exact (Cody & Waite).
_LN2 = {np.dtype(np.float32): (0.693145751953125, 1.428606765330187e-06),
        np.dtype(np.float64): (0.6931471803691238, 1.9082149292705877e-10)}


def _power_of_two(n: jax.Array, dtype) -> jax.Array:
  """2^n for integer-valued n in the dtype's normal exponent range, built from its bits."""
  bits, itype = (52, jnp.int64) if dtype == jnp.float64 else (23, jnp.int32)
  biased = (n.astype(itype) + (jnp.finfo(dtype).maxexp - 1)) << bits
  return jax.lax.bitcast_convert_type(biased, dtype)


def _sinh_cosh(v: jax.Array):
  """sinh v and cosh v by Taylor series (Horner), for ``|v| <= ln 2 / 2``: the first
  neglected terms, v^9 / 9! and v^8 / 8! in float32 (v^17 / 17! and v^16 / 16! in
  float64), are below 1e-8 (1e-20) relative."""
  terms = 8 if v.dtype == jnp.float64 else 4
  v2 = v * v
  sinh, cosh = jnp.ones_like(v), jnp.ones_like(v)
  for k in range(terms - 1, 0, -1):  # 1 + v^2/(2k(2k+1)) (1 + ...)
    sinh = 1 + v2 * (1.0 / ((2 * k) * (2 * k + 1))) * sinh
    cosh = 1 + v2 * (1.0 / ((2 * k - 1) * (2 * k))) * cosh
  return v * sinh, cosh


def mirror_step(x: jax.Array, dz: jax.Array, log_a, log_a_next) -> jax.Array:
  r"""x_{t+1} = a_{t+1} sinh(2 (z + dz)), z = 1/2 arcsinh(x / a_t), without computing z.

  By the addition theorem for sinh, with u = 2 dz and r = a_{t+1} / a_t (one scalar),

      x_{t+1} = r (x cosh u + h sinh u),   h = sqrt(x^2 + a_t^2),

  evaluated per weight with multiplications, one square root and one division, and no
  transcendental function (Jacobs & Burkholz, ICLR 2025, the hyperbolic-entropy
  mirror map of x = m * w):

  - ``|u| = n ln 2 + rho`` with ``|rho| <= ln 2 / 2``; ``sinh |u| = 2^n s`` and
    ``cosh |u| = 2^n c`` with ``s, c`` from Taylor polynomials of rho and the power of
    two 4^-n, so no intermediate overflows; the final 2^n is applied as two exact
    powers of two and the result saturates at the dtype's largest finite value.
  - Where the step moves x towards and across zero (x u < 0) the two terms cancel;
    there the equivalent ``(a^2 sinh^2 u - x^2) / (h sinh u + |x| cosh u)`` is used,
    which has no cancellation beyond that of ``a sinh|u| - |x|``, so a weight crossing
    zero lands to within a few ulp of a_{t+1}.
  - ``h`` is formed without overflow or underflow; as a_t -> 0 the step becomes the
    multiplicative update ``x exp(sign(x) u)``.

  It agrees with a long-double evaluation of the maps to 8 ulp (float32 and float64;
  tests/pcs/test_mirror_step.py) for ``|x| / a_t`` up to 1e30,
  a_t down to 1e-30 and ``|u|`` up to ``2 (maxexp - 2) ln 2`` (174 in float32, where
  e^|u| alone exceeds the dtype's range; larger steps are taken as that one);
  bfloat16 and float16 are computed in float32.
  """
  dtype, x, dz, log_a, log_a_next = _working_precision(x, dz, log_a, log_a_next)
  work = x.dtype
  u = 2 * dz
  a, r = jnp.exp(log_a), jnp.exp(log_a_next - log_a)
  tiny = jnp.finfo(work).tiny
  max_half = jnp.finfo(work).maxexp - 2
  # Beyond |u| = 2 max_half ln 2 (174 in float32) no step is meaningful: clamp there.
  absx, absu = jnp.abs(x), jnp.minimum(jnp.abs(u), 2 * max_half * math.log(2))
  # h = sqrt(x^2 + a^2): a sqrt(1 + (x / a)^2) up to |x| = 1e9 a, beyond which it is
  # |x| to within 1e-18 relative.
  far = absx > 1e9 * a
  ratio = jnp.where(far, 0, absx * (1 / jnp.maximum(a, tiny)))
  h = jnp.where(far, absx, a * jnp.sqrt(1 + ratio * ratio))
  # |u| = n ln 2 + rho; sinh|u| = 2^n s and cosh|u| = 2^n c.
  n = jnp.minimum(jnp.floor(absu * (1 / math.log(2)) + 0.5), 2 * max_half)
  hi, lo = _LN2[np.dtype(work)]
  sinh_rho, cosh_rho = _sinh_cosh((absu - n * hi) - n * lo)
  n_low = jnp.floor(0.5 * n)
  n_high = n - n_low
  inv_scale = _power_of_two(-n_low, work) * _power_of_two(-n_high, work)  # 2^-n
  quarter = 0.5 * inv_scale * inv_scale  # 4^-n / 2
  s = (0.5 - quarter) * cosh_rho + (0.5 + quarter) * sinh_rho
  c = (0.5 + quarter) * cosh_rho + (0.5 - quarter) * sinh_rho
  crossing = jnp.where(u < 0, x > 0, x < 0)
  scaled_x = absx * inv_scale
  away = absx * c + h * s
  # (a s - |x| 2^-n) times a ratio in [0, 1], whose terms are scaled by a power of two
  # that keeps them out of overflow (h near the largest float) and underflow (h tiny).
  k = jnp.where(h > 1, 0.25, 2.0 ** 40)
  den = jnp.maximum(k * h * s + k * absx * c, tiny)
  across = (a * s - scaled_x) * ((k * a * s + k * scaled_x) / den)
  magnitude = (jnp.where(crossing, across, away) * r
               * _power_of_two(n_low, work) * _power_of_two(n_high, work))
  new = jnp.where(u < 0, -magnitude, magnitude)
  big = jnp.finfo(dtype).max
  return jnp.clip(new, -big, big).astype(dtype)


class Dual(NamedTuple):
  """What the inner optimizer of :func:`mirror` steps for a weight: z = 1/2 arcsinh(x / a_t)."""
  z: jax.Array


class _NothingStored(NamedTuple):
  """mirror keeps no per-weight state: x and a_t determine z."""


class MirrorState(NamedTuple):
  """State of :func:`mirror`.

  Attributes:
    count: number of updates taken (int32).
    log_a: log a_t, float32 scalar (one a_t for all selected leaves).
    inner_state: the inner optimizer's state over ``Reparameterized(weights,
      Dual(z))`` trees (the dual variables of the selected leaves and the other
      weights); the same size as the bare optimizer's.
    alpha_state: the current alpha (and the controller's bookkeeping).
    selected: which leaves mirror acts on (a tree holding no array; see
      :class:`pcs.ReparamState`).
  """
  count: jax.Array  # type: ignore[assignment]  # optax's name, shadows tuple.count
  log_a: jax.Array
  inner_state: Any
  alpha_state: alpha_lib.AlphaState
  selected: Any

  def stats(self, params: Any, where: selection.Where = None) -> dict:
    """``alpha`` of the latest step and ``a`` = a_t = exp(log_a)."""
    del params, where
    return {'alpha': self.alpha_state.used, 'a': jnp.exp(self.log_a)}

  def latents(self, params: Any, where: selection.Where = None) -> Any:
    """The dual coordinates z = 1/2 arcsinh(x / a_t) at the leaves selected by
    ``where``, holes elsewhere."""
    mask = selection.select(params, where)
    return jax.tree.map(
        lambda x, s: mirror_map(x, self.log_a) if s else optax.MaskedNode(),
        params, mask)


def mirror(
    inner: optax.GradientTransformation,
    *,
    alpha: alpha_lib.Alpha = 0.0,
    beta: float = 1.0,
    where: selection.Where = None,
    learning_rate: Optional[optax.ScalarOrSchedule] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""PILoT as mirror descent with the time-dependent hyperbolic-entropy potential.

  For each selected leaf, with a_t = exp(log_a_t):

      z_t     = 1/2 arcsinh(x_t / a_t)                 (dual coordinates)
      z_{t+1} = z_t + inner_update(g_t)                (inner step, g = grad f(x))
      a_{t+1} = a_t exp(-4 eta_t alpha_t),  a_0 = beta / 2
      x_{t+1} = a_{t+1} sinh(2 z_{t+1})

  computed from x directly by :func:`mirror_step` (no transcendental function per weight
  and no branch); z itself is formed only for an inner optimizer that reads params
  (weight decay inside it); otherwise jit drops it.

  For plain SGD with step eta_t, ``pcs.pilot`` with the same alpha and beta is a
  discretisation of the same flow (gamma = m^2 - w^2 = 2 a_t), so both converge to
  the same limit as eta -> 0 (:func:`pcs.theory.kkt_limit`). Pass that eta_t as
  ``learning_rate``; it sets how far time advances per step. Only a scalar log a_t
  is kept, so the state is the bare optimizer's plus a few scalars. The maps are
  evaluated in log space (:func:`mirror_map`): finite for a_t -> 0 and
  huge ``|x| / a_t``.

  With momentum mu in ``inner``, a steady drift of z is amplified by 1 / (1 - mu)
  while a_t decays outside ``inner``: a constant alpha then acts on x as the L1
  penalty 2 alpha (1 - mu), where ``pcs.pilot`` (whose decay passes through the
  momentum) gives 2 alpha. Scale alpha by 1 / (1 - mu) to match pilot.

  Reference: Jacobs & Burkholz, ICLR 2025, Theorem on the time-dependent mirror
  flow of x = m * w with weight decay.

  Example:
    >>> import jax.numpy as jnp, optax, pcs
    >>> tx = pcs.mirror(optax.sgd(0.1), alpha=1e-2, learning_rate=0.1)
    >>> x = jnp.array([[0.5, -1.0]])
    >>> state = tx.init(x)
    >>> updates, state = tx.update(jnp.ones((1, 2)), state, x)
    >>> float(pcs.stats(state, x)['a'])  # a_1 = beta / 2 exp(-4 eta alpha)
    0.4980...

  Args:
    inner: any optax optimizer; it steps z for selected leaves, x for the others.
    alpha: decay strength: float >= 0, optax schedule, :func:`pcs.alpha_controller` or
      :func:`pcs.target_alpha_controller` (``update(..., accuracy=, pruned_accuracy=)``).
    beta: the initial imbalance m0^2 - w0^2 = 2 a_0, > 0.
    where: leaves to sparsify (default :func:`pcs.kernels`); see :func:`pcs.select`.
    learning_rate: eta_t, float or schedule; required unless alpha is 0.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` requires ``params``.
  """
  alpha_lib.check_alpha(alpha)
  checks.check_scalar('beta', beta, minimum=0.0)
  if not isinstance(beta, jax.core.Tracer) and not float(beta) > 0:
    raise ValueError('mirror needs `beta` > 0 (a_0 = beta / 2); beta = 0 fixes '
                     'a_t = 0, where x cannot change sign: use pcs.spred for that.')
  reparam.check_learning_rate('mirror', alpha, learning_rate)
  inner = boundary.inner_optimizer(inner, 'mirror')

  def init_fn(params):
    mask = selection.select(params, where)
    selection.check_selects_some(params, mask, 'mirror')
    # log a_0 = log beta - log 2, in float64 for a Python beta: a float32 beta / 2 can
    # underflow to 0 (log -> -inf) while its logarithm is perfectly representable.
    if isinstance(beta, numbers.Real):
      log_a = jnp.asarray(math.log(beta) - math.log(2.0), jnp.float32)
    else:
      log_a = jnp.log(jnp.asarray(beta, jnp.float32)) - jnp.log(2.0)
    _, inner_state = reparam.init_inner(inner, params, mask,
                                        lambda x: Dual(mirror_map(x, log_a)), Dual)
    return MirrorState(count=jnp.zeros((), jnp.int32), log_a=log_a, inner_state=inner_state,
                       alpha_state=alpha_lib.init(alpha), selected=selection.record(mask))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(reparam.NO_PARAMS_MSG.format(name='mirror'))
    mask = selection.select(params, where)
    alpha_t = alpha_lib.current(alpha, state.alpha_state, state.count)
    log_a = state.log_a - 4 * reparam.step_size(learning_rate, alpha_t, state.count) * alpha_t
    # The same step as every reparameterization, with the mirror map in place of
    # restore and the inverse map in place of to_x; the gradient is not pulled back.
    # z reaches only the inner optimizer: where it does not read params, jit drops it.
    steps = reparam.LeafSteps(
        restore=lambda x, nothing: Dual(mirror_map(x, state.log_a)),
        pull_back=lambda x, z, g: Dual(g),
        map_to_x=lambda x, z, dz: reparam.Emitted(
            mirror_step(x, dz.z, state.log_a, log_a) - x, _NothingStored()))
    out, _, inner_state = reparam.step_through_latents(
        inner, steps, updates, state.inner_state, params, _NothingStored(), mask, Dual,
        _NothingStored, extra_args)
    alpha_state = reparam.advance_alpha(alpha, state.alpha_state, alpha_t, extra_args,
                                        params, out, mask)
    return out, MirrorState(count=optax.safe_int32_increment(state.count), log_a=log_a,
                            inner_state=inner_state, alpha_state=alpha_state,
                            selected=state.selected)

  return boundary.transform(init_fn, update_fn)
