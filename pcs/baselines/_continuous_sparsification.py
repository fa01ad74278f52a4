"""Continuous Sparsification: a sigmoid mask with an annealed temperature and L1 on the mask.

Savarese, Silva & Maire, "Winning the Lottery with Continuous Sparsification", NeurIPS 2020.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pcs.core import _checks as checks
from pcs.core import _reparameterize as reparam
from pcs.core import _selection as selection


class MaskLatent(NamedTuple):
  """The weight w and the mask logits s (same shape; params-shaped trees in the state)."""
  w: Any
  s: Any


class MaskState(NamedTuple):
  """What the state keeps per weight: w, s and the temperature beta_t (a scalar)."""
  w: Any
  s: Any
  temperature: Any

  def restore_trees(self, params: Any, where: selection.Where = None) -> MaskLatent:
    """``MaskLatent(w=tree, s=tree)``."""
    del params, where
    return MaskLatent(self.w, self.s)

  def stored_stats(self, params: Any, where: selection.Where = None) -> dict:
    """``temperature`` beta_t and ``mask_density``, the fraction of s > 0."""
    del params, where
    temperatures = jax.tree.leaves(self.temperature)
    logits = jax.tree.leaves(self.s)
    size = max(sum(s.size for s in logits), 1)
    return {
        'temperature': (temperatures[0].astype(jnp.float32) if temperatures
                        else jnp.ones((), jnp.float32)),
        'mask_density': sum((jnp.sum(s > 0, dtype=jnp.float32) for s in logits),
                            jnp.zeros((), jnp.float32)) / size,
    }


def continuous_sparsification(
    inner: optax.GradientTransformation,
    *,
    l1_strength: float,
    num_steps: int,
    final_temperature: float = 200.0,
    mask_init: float = 0.0,
    where: selection.Where = None,
) -> optax.GradientTransformationExtraArgs:
  """x = w * sigmoid(beta_t s) / sigmoid(s0), L1 on the mask, temperature annealed.

  Minimises ``f(x) + l1_strength * sum sigmoid(beta_t s)`` with the temperature
  growing geometrically, ``beta_t = final_temperature ** (t / num_steps)``, from 1
  to ``final_temperature``. From step ``num_steps`` on the mask is hard,
  ``x = w * 1[s > 0] / sigmoid(s0)``, so pruned weights are exact zeros.
  Initialised with ``w = x``, ``s = s0 = mask_init``, so x is unchanged.

  Reference: Savarese et al., NeurIPS 2020, Eq. (6)-(8).

  Example:
    >>> import jax.numpy as jnp, optax, pcs
    >>> tx = pcs.continuous_sparsification(optax.sgd(0.1), l1_strength=1e-3, num_steps=100)
    >>> x = jnp.array([[0.5, -1.0]])
    >>> float(pcs.stats(tx.init(x), x)['temperature'])
    1.0

  Args:
    inner: any optax optimizer.
    l1_strength: lambda >= 0 on ||sigmoid(beta s)||_1.
    num_steps: steps over which the temperature is annealed (>= 1).
    final_temperature: beta at ``num_steps`` (>= 1).
    mask_init: s0, the initial mask logit.
    where: leaves to sparsify (default :func:`pcs.kernels`).
  """
  checks.check_scalar('l1_strength', l1_strength, minimum=0.0)
  checks.check_scalar('final_temperature', final_temperature, minimum=1.0)
  checks.check_scalar('mask_init', mask_init, minimum=-float('inf'))
  checks.check_integer('num_steps', num_steps, minimum=1)
  scale = 1.0 / jax.nn.sigmoid(jnp.asarray(mask_init, jnp.float32))

  def temperature(step):
    return jnp.asarray(final_temperature, jnp.float32) ** (
        jnp.minimum(step, num_steps).astype(jnp.float32) / num_steps)

  def init(x):
    # A copy: state buffers must not alias the params (callers may donate both).
    return MaskLatent(jnp.copy(x), jnp.full(x.shape, mask_init, x.dtype))

  def to_x(u, step):
    soft = jax.nn.sigmoid(temperature(step).astype(u.s.dtype) * u.s)
    mask = jnp.where(step >= num_steps, (u.s > 0).astype(u.s.dtype), soft)
    return u.w * mask * scale.astype(u.w.dtype)

  def penalty(u, step):
    return jnp.sum(jax.nn.sigmoid(temperature(step).astype(u.s.dtype) * u.s))

  def store(u, step):
    return MaskState(u.w, u.s, temperature(step).astype(u.s.dtype))

  def restore(stored, x):
    del x
    return MaskLatent(stored.w, stored.s)

  return reparam.reparameterize(
      inner, reparam.Reparameterization(init, to_x, penalty, store, restore), alpha=l1_strength,
      where=where, name='continuous_sparsification')
