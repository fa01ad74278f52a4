"""PILoT: x = m * w with time-dependent weight decay on m and w, and its spred preset.

Jacobs & Burkholz, "Mask in the Mirror: Implicit Sparsification", ICLR 2025.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from pcs import alpha as alpha_lib
from pcs import reparam
from pcs import selection


class Factors(NamedTuple):
  """The latent pair of x = m * w."""
  m: jax.Array
  w: jax.Array


class Scale(NamedTuple):
  """What PILoT's state keeps of x = m * w: m alone; w = x / m is recovered from x."""
  m: jax.Array


def factors(stored: Scale, x: jax.Array) -> Factors:
  """Rebuilds ``Factors(m, w)`` from the stored m and the current weight, w = x / m."""
  m = stored.m
  return Factors(m, jnp.where(m != 0, x / jnp.where(m != 0, m, 1), 0).astype(m.dtype))


def product_init(x: jax.Array, beta) -> Factors:
  """The sign-flip friendly initialisation of x = m * w.

      m0 = sqrt((beta + sqrt(beta^2 + 4 x^2)) / 2),   w0 = x / m0,

  so that m0 * w0 = x, m0^2 - w0^2 = beta and, for beta > 0, m0 > |w0|. beta = 0
  gives spred's balanced init m0 = sqrt|x|, w0 = sign(x) sqrt|x|. Computed in at
  least float32 without overflow for huge |x|, returned in x's dtype.

  Reference: Jacobs & Burkholz, ICLR 2025, Section 4.
  """
  dtype = jnp.result_type(x)
  work = jnp.promote_types(dtype, jnp.float32)
  xw = jnp.asarray(x, work)
  beta = jnp.asarray(beta, work)
  m0 = jnp.sqrt((beta + jnp.hypot(beta, 2 * xw)) / 2)
  # Clipping to [-m0, m0] undoes a 1-ulp overshoot of x / m0 when beta << x^2,
  # so gamma = m0^2 - w0^2 is never negative.
  w0 = jnp.clip(jnp.where(m0 > 0, xw / m0, jnp.zeros_like(xw)), -m0, m0)
  return Factors(m0.astype(dtype), w0.astype(dtype))


def _product(u: Factors, step) -> jax.Array:
  del step
  return u.m * u.w


def _squared_norms(u: Factors, step) -> jax.Array:
  del step
  return jnp.sum(jnp.square(u.m)) + jnp.sum(jnp.square(u.w))


def product(beta=1.0) -> reparam.Reparameterization:
  """The reparameterization x = m * w with penalty ||m||^2 + ||w||^2."""
  return reparam.Reparameterization(
      init=lambda x: product_init(x, beta), to_x=_product, penalty=_squared_norms,
      store=lambda u: Scale(u.m), restore=factors)


def pilot(
    inner: optax.GradientTransformation,
    *,
    alpha: alpha_lib.Alpha = 0.0,
    beta: float = 1.0,
    where: selection.Where = None,
    decoupled: bool = False,
    learning_rate: Optional[optax.ScalarOrSchedule] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""PILoT: train every selected weight as x = m * w with weight decay alpha_t.

  The user's parameters stay x; the optimizer state keeps m (w = x / m is
  recovered from the parameters, which stay the source of truth). Each step
  minimises ``f(m * w) + alpha_t (||m||^2 + ||w||^2)`` with ``inner``:

      grad_m = g * w + 2 alpha_t m,   grad_w = g * m + 2 alpha_t w,   g = grad f(x),

  and emits ``m_new * w_new - x``. Why it sparsifies: gamma = m^2 - w^2 obeys
  d gamma / dt = -4 alpha_t gamma, and x follows the mirror flow
  ``d/dt [arcsinh(x / a_t) / 2] = -grad f(x)`` with ``a_t = gamma_t / 2`` (see
  :mod:`pcs.theory`): the implicit bias moves from L2 (large a) to L1 (small a) as
  the decay acts. With plain SGD of step eta, ``a_t = beta/2 exp(-4 sum eta alpha)``.

  Init: ``m0 = sqrt((beta + sqrt(beta^2 + 4 x^2)) / 2)``, ``w0 = x / m0``
  (:func:`product_init`).

  Reference: Jacobs & Burkholz, "Mask in the Mirror: Implicit Sparsification",
  ICLR 2025, Algorithm 1.

  Non-finite gradients propagate into m and w as with any optax optimizer; wrap
  the result in ``optax.apply_if_finite`` to skip such steps (state unchanged).

  Args:
    inner: the optimizer the user already has (sgd, adam, a chain, ...).
    alpha: decay strength alpha_t >= 0: a float, an optax schedule (step -> value),
      or :func:`pcs.alpha_controller` (Algorithm 1, fed by ``update(...,
      accuracy=batch_accuracy)``).
    beta: init imbalance m0^2 - w0^2 >= 0 (paper: 1; 0 is spred's balanced init).
    where: leaves to sparsify; default every leaf with ndim >= 2. A pytree of
      bools or a predicate ``(path, leaf) -> bool`` (see :func:`pcs.select`).
    decoupled: apply the decay outside ``inner``, ``(m, w) <- (m, w) + inner step
      - 2 lr_t alpha_t (m, w)``, as AdamW does; then ``learning_rate`` is needed.
    learning_rate: float or schedule scaling the decoupled decay.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` requires ``params``.
  """
  alpha_lib.check_scalar('beta', beta, minimum=0.0)
  return reparam.reparameterize(
      inner, product(beta), alpha=alpha, where=where, decoupled=decoupled,
      learning_rate=learning_rate, name='pilot')


def spred(
    inner: optax.GradientTransformation,
    *,
    weight_decay: float,
    where: selection.Where = None,
) -> optax.GradientTransformationExtraArgs:
  """spred: x = u * v with balanced init and constant weight decay.

  Minimises ``f(u * v) + weight_decay (||u||^2 + ||v||^2)`` from
  ``u0 = sqrt|x|, v0 = sign(x) sqrt|x|``; at a minimiser this equals
  ``f(x) + 2 weight_decay ||x||_1``. It is :func:`pilot` with ``beta=0`` and a
  constant alpha, so gamma = u^2 - v^2 = 0 forever and no weight changes sign.

  Reference: Ziyin & Wang, "spred: Solving L1 Penalty with SGD", ICML 2023.

  Args:
    inner: any optax optimizer.
    weight_decay: the constant decay, float >= 0.
    where: leaves to sparsify (see :func:`pilot`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` requires ``params``.
  """
  alpha_lib.check_scalar('weight_decay', weight_decay, minimum=0.0)
  return reparam.reparameterize(
      inner, product(0.0), alpha=weight_decay, where=where, name='spred')
