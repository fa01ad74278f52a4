"""PILoT: x = m * w with time-dependent weight decay on m and w, and its spred preset.

Jacobs & Burkholz, "Mask in the Mirror: Implicit Sparsification", ICLR 2025.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from pcs.core import _alpha as alpha_lib
from pcs.core import _checks as checks
from pcs.core import _reparameterize as reparam
from pcs.core import _selection as selection


class Factors(NamedTuple):
  """The latent pair of x = m * w (arrays for one weight, or trees in the state)."""
  m: Any
  w: Any


def factors(stored: 'Scale', x: jax.Array) -> Factors:
  """Rebuilds ``Factors(m, w)`` from the stored m and the current weight, w = x / m."""
  m = stored.m
  return Factors(m, jnp.where(m != 0, x / jnp.where(m != 0, m, 1), 0).astype(m.dtype))


def balanced_factors(stored: 'Balanced', x: jax.Array) -> Factors:
  """spred's latents from x alone: ``m = sqrt|x|, w = sign(x) m``, so m^2 - w^2 = 0 exactly.

  With ``w = +-m`` exactly, the gradients ``g w + 2 alpha m`` and ``g m + 2 alpha w``
  differ only in sign (IEEE rounding is symmetric), so any sign-symmetric inner
  optimizer keeps ``w_new = +-m_new`` and ``x_new = m_new w_new = sign(x) m_new^2``:
  no weight changes sign, in floating point too.
  """
  del stored
  m = jnp.sqrt(jnp.abs(x))
  return Factors(m, jnp.sign(x) * m)


def _mean_gamma(m_tree: Any, params: Any, restore: Callable) -> jax.Array:
  """a = mean over selected weights of (m^2 - w^2) / 2, in float32."""
  parts = jax.tree.leaves(reparam.map_selected(
      lambda m, x: _GammaSum(*_gamma_sum(restore(m, x))), m_tree, params),
      is_leaf=lambda n: isinstance(n, _GammaSum))
  total = sum(p.size for p in parts)
  return sum((p.total for p in parts), jnp.zeros((), jnp.float32)) / (2 * max(total, 1))


class _GammaSum(NamedTuple):
  total: jax.Array
  size: int


def _gamma_sum(u: Factors):
  m, w = (v.astype(jnp.float32) for v in u)
  return jnp.sum(jnp.square(m) - jnp.square(w)), m.size


class Scale(NamedTuple):
  """What PILoT's state keeps of x = m * w: m alone; w = x / m is recovered from x.

  In the state ``m`` is a params-shaped tree with ``optax.MaskedNode`` holes.
  """
  m: Any

  def restore_trees(self, params: Any, where: selection.Where = None) -> Factors:
    """``Factors(m=tree, w=tree)`` with w = x / m, holes where pilot does not act."""
    del where
    return reparam.unzip(reparam.map_selected(
        lambda m, x: factors(Scale(m), x), self.m, params), Factors)

  def stored_stats(self, params: Any, where: selection.Where = None) -> dict:
    """``a``: the mean of (m^2 - w^2) / 2 over selected weights (exact a_t for SGD)."""
    del where
    return {'a': _mean_gamma(self.m, params, lambda m, x: factors(Scale(m), x))}


class Balanced(NamedTuple):
  """What spred's state keeps: nothing; ``m = sqrt|x|`` and ``w = sign(x) m`` come from x."""

  def restore_trees(self, params: Any, where: selection.Where = None) -> Factors:
    """``Factors(m=tree, w=tree)`` at the leaves selected by ``where``, holes elsewhere."""
    mask = selection.select(params, where)
    chosen = jax.tree.map(lambda x, s: x if s else optax.MaskedNode(), params, mask)
    return reparam.unzip(reparam.map_selected(
        lambda x: balanced_factors(self, x), chosen), Factors)

  def stored_stats(self, params: Any, where: selection.Where = None) -> dict:
    """``a`` = 0: the balanced factors have m^2 - w^2 = 0 exactly."""
    del params, where
    return {'a': jnp.zeros((), jnp.float32)}


def product_init(x: jax.Array, beta) -> Factors:
  """The sign-flip friendly initialisation of x = m * w.

      m0 = sqrt((beta + sqrt(beta^2 + 4 x^2)) / 2),   w0 = x / m0,

  so that m0 * w0 = x, m0^2 - w0^2 = beta and, for beta > 0, ``m0 > |w0|``. beta = 0
  gives spred's balanced init ``m0 = sqrt|x|, w0 = sign(x) sqrt|x|``. Computed in at
  least float32 without overflow for huge ``|x|``, returned in x's dtype.

  Example:
    >>> import jax.numpy as jnp, pcs
    >>> m, w = pcs.product_init(jnp.array([2.0]), beta=1.0)
    >>> round(float((m * w)[0]), 6), round(float((m**2 - w**2)[0]), 6)
    (2.0, 1.0)

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
  """The reparameterization x = m * w with penalty ||m||^2 + ||w||^2.

  For beta > 0 the state keeps m (w = x / m); for beta = 0 it keeps nothing and
  the factors are the balanced ``m = sqrt|x|, w = sign(x) m`` (:func:`balanced_factors`).
  """
  if isinstance(beta, (int, float)) and beta == 0:
    return reparam.Reparameterization(
        init=lambda x: product_init(x, 0.0), to_x=_product, penalty=_squared_norms,
        store=lambda u, step: Balanced(), restore=balanced_factors)
  return reparam.Reparameterization(
      init=lambda x: product_init(x, beta), to_x=_product, penalty=_squared_norms,
      store=lambda u, step: Scale(u.m), restore=factors)


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

  Example:
    >>> import jax.numpy as jnp, optax, pcs
    >>> params = {'kernel': jnp.array([[0.5, -1.0]]), 'bias': jnp.zeros(2)}
    >>> tx = pcs.pilot(optax.sgd(0.1, momentum=0.9), alpha=1e-3)
    >>> state = tx.init(params)
    >>> updates, state = tx.update({'kernel': jnp.ones((1, 2)), 'bias': jnp.ones(2)}, state, params)
    >>> optax.apply_updates(params, updates)['kernel'].round(3)
    Array([[ 0.363, -1.233]], dtype=float32)

  Args:
    inner: the optimizer the user already has (sgd, adam, a chain, ...).
    alpha: decay strength alpha_t >= 0: a float, an optax schedule (step -> value),
      :func:`pcs.alpha_controller` (Algorithm 1, fed by ``update(...,
      accuracy=batch_accuracy)``) or :func:`pcs.target_alpha_controller` (also fed
      ``pruned_accuracy=``).
    beta: init imbalance m0^2 - w0^2 >= 0 (paper: 1; 0 is spred's balanced init).
    where: leaves to sparsify; default :func:`pcs.kernels` (every leaf with
      ndim >= 2 except embeddings, biases and scales). A pytree of
      bools or a predicate ``(path, leaf) -> bool`` (see :func:`pcs.select`).
    decoupled: apply the decay outside ``inner``, ``(m, w) <- (m, w) + inner step
      - 2 lr_t alpha_t (m, w)``, as AdamW does; then ``learning_rate`` is needed.
    learning_rate: float or schedule scaling the decoupled decay.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` requires ``params``.
  """
  checks.check_scalar('beta', beta, minimum=0.0)
  return reparam.reparameterize(
      inner, product(beta), alpha=alpha, where=where, decoupled=decoupled,
      learning_rate=learning_rate, name='pilot')


def spred(
    inner: optax.GradientTransformation,
    *,
    weight_decay: float,
    where: selection.Where = None,
) -> optax.GradientTransformationExtraArgs:
  """spred: x = m * w with balanced init and constant weight decay.

  Minimises ``f(m * w) + weight_decay (||m||^2 + ||w||^2)`` from
  ``m0 = sqrt|x|, w0 = sign(x) sqrt|x|`` (the paper's u, v); at a minimiser this equals
  ``f(x) + 2 weight_decay ||x||_1``. It is :func:`pilot` with ``beta=0`` and a
  constant alpha, so gamma = m^2 - w^2 = 0 forever and no weight changes sign. The
  state keeps no latent copy: ``m = sqrt|x|, w = sign(x) m`` are recovered from x
  each step, which keeps the balance exact in floating point
  (:func:`balanced_factors`), for any sign-symmetric inner optimizer (sgd, momentum,
  adam, lion, weight decay, global-norm clipping).

  Reference: Ziyin & Wang, "spred: Solving L1 Penalty with SGD", ICML 2023.

  Example:
    >>> import jax.numpy as jnp, optax, pcs
    >>> tx = pcs.spred(optax.sgd(0.1), weight_decay=1e-3)
    >>> x = jnp.array([[0.25, -1.0]])
    >>> updates, _ = tx.update(jnp.array([[1.0, -1.0]]), tx.init(x), x)  # pushes both towards 0
    >>> jnp.sign(optax.apply_updates(x, updates))
    Array([[ 1., -1.]], dtype=float32)

  Args:
    inner: any optax optimizer.
    weight_decay: the constant decay, float >= 0.
    where: leaves to sparsify (see :func:`pilot`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` requires ``params``.
  """
  checks.check_scalar('weight_decay', weight_decay, minimum=0.0)
  return reparam.reparameterize(
      inner, product(0.0), alpha=weight_decay, where=where, name='spred')
