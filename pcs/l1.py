"""Explicit L1 regularization by proximal soft-thresholding (exact zeros)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from pcs import alpha as alpha_lib
from pcs import reparam
from pcs import selection


class L1State(NamedTuple):
  count: jax.Array
  inner_state: optax.OptState


def l1(
    inner: optax.GradientTransformation,
    *,
    strength: float,
    learning_rate: optax.ScalarOrSchedule,
    where: selection.Where = None,
) -> optax.GradientTransformationExtraArgs:
  """Proximal gradient for f(x) + strength * ||x||_1 on the selected leaves.

  With y = x + inner_update (the inner optimizer's step on f alone),

      x_new = prox_{eta_t lambda ||.||_1}(y) = sign(y) max(|y| - eta_t lambda, 0),

  the soft-thresholding operator, which sets small weights exactly to zero.

  Reference: Tibshirani, "Regression shrinkage and selection via the lasso", 1996;
  Beck & Teboulle, "A fast iterative shrinkage-thresholding algorithm", 2009 (ISTA).

  Args:
    inner: any optax optimizer.
    strength: lambda >= 0.
    learning_rate: eta_t, float or schedule: the threshold is eta_t * lambda.
    where: leaves to regularize (default: ndim >= 2).
  """
  alpha_lib.check_scalar('strength', strength, minimum=0.0)
  if not callable(learning_rate):
    alpha_lib.check_scalar('learning_rate', learning_rate, minimum=0.0)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    selection.select(params, where)
    return L1State(jnp.zeros((), jnp.int32), inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(reparam.NO_PARAMS_MSG.format(name='l1'))
    mask = selection.select(params, where)
    inner_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    threshold = strength * reparam.schedule_value(learning_rate, state.count)

    def prox(x, du, s):
      if not s:
        return du
      y = x + du.astype(x.dtype)
      return jnp.sign(y) * jnp.maximum(jnp.abs(y) - threshold.astype(x.dtype), 0) - x

    out = jax.tree.map(prox, params, inner_updates, mask)
    return out, L1State(optax.safe_int32_increment(state.count), inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
