"""Powerpropagation: ``x = w |w|^(p - 1)``, a reparameterization that favours sparse weights.

Schwarz et al., "Powerpropagation: A sparsity inducing weight reparameterisation", NeurIPS 2021.
"""

from typing import Any, NamedTuple

import jax.numpy as jnp
import optax

from pcs.core import _checks as checks
from pcs.core import _reparameterize as reparam
from pcs.core import _selection as selection


class PowerLatent(NamedTuple):
  """The latent weight w with ``x = w |w|^(p - 1)`` (a params-shaped tree in the state)."""
  w: Any


def powerprop(
    inner: optax.GradientTransformation,
    *,
    power: float = 2.0,
    weight_decay: float = 0.0,
    where: selection.Where = None,
) -> optax.GradientTransformationExtraArgs:
  """``x = w |w|^(p - 1)``: the gradient ``dx/dw = p |w|^(p - 1)`` is small for small weights.

  Trains ``f(x) + weight_decay / 2 ||w||^2`` from ``w = sign(x) |x|^(1/p)``; weights
  near zero barely move, so magnitude pruning after training (:func:`pcs.prune`)
  removes them with little loss.

  Reference: Schwarz et al., NeurIPS 2021, Eq. (1).

  Example:
    >>> import jax.numpy as jnp, optax, pcs
    >>> x = jnp.array([[4.0, -0.25]])
    >>> tx = pcs.powerprop(optax.sgd(0.1), power=2.0)
    >>> pcs.latents(tx.init(x), x).w  # x = w |w|
    Array([[ 2. , -0.5]], dtype=float32)

  Args:
    inner: any optax optimizer.
    power: p >= 1 (p = 1 is plain training).
    weight_decay: lambda >= 0 on w.
    where: leaves to reparameterize (default :func:`pcs.kernels`).
  """
  checks.check_scalar('power', power, minimum=1.0)
  checks.check_scalar('weight_decay', weight_decay, minimum=0.0)

  def init(x):
    return PowerLatent(jnp.sign(x) * jnp.abs(x) ** (1.0 / power))

  def to_x(u, step):
    del step
    return jnp.sign(u.w) * jnp.abs(u.w) ** power  # = w |w|^(p-1), finite slope at 0

  def penalty(u, step):
    del step
    return 0.5 * jnp.sum(jnp.square(u.w))

  return reparam.reparameterize(
      inner, reparam.Reparameterization(init, to_x, penalty), alpha=weight_decay,
      where=where, name='powerprop')
