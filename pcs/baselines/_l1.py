"""Explicit L1 regularization by proximal soft-thresholding (exact zeros)."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pcs.core import _checks as checks
from pcs.core import _reparameterize as reparam
from pcs.core import _selection as selection
from pcs.core import _boundary as boundary


class L1State(NamedTuple):
  """State of :func:`l1`.

  Attributes:
    count: steps taken (int32).
    threshold: the soft threshold eta_t * lambda of the latest step (float32).
    inner_state: the inner optimizer's state.
    selected: which leaves l1 acts on (a tree holding no array; see
      :class:`pcs.ReparamState`).
  """
  count: jax.Array  # type: ignore[assignment]  # optax's name, shadows tuple.count
  threshold: jax.Array
  inner_state: optax.OptState
  selected: Any

  def stats(self, params: Any, where: selection.Where = None) -> dict:
    """``threshold``: eta_t * lambda of the latest step."""
    del params, where
    return {'threshold': self.threshold}


def l1(
    inner: optax.GradientTransformation,
    *,
    strength: float,
    learning_rate: optax.ScalarOrSchedule,
    where: selection.Where = None,
) -> optax.GradientTransformationExtraArgs:
  """Proximal gradient for f(x) + strength * ||x||_1 on the selected leaves.

  With y = x + inner_update (the inner optimizer's step on f alone)::

      x_new = prox_{eta_t lambda ||.||_1}(y) = sign(y) max(|y| - eta_t lambda, 0),

  the soft-thresholding operator, which sets small weights exactly to zero.

  Reference: Tibshirani, "Regression shrinkage and selection via the lasso", 1996;
  Beck & Teboulle, "A fast iterative shrinkage-thresholding algorithm", 2009 (ISTA).

  Example:
    >>> import jax.numpy as jnp, optax, pcs
    >>> tx = pcs.l1(optax.sgd(0.1), strength=1.0, learning_rate=0.1)  # threshold 0.1
    >>> x = jnp.array([[0.05, -1.0]])
    >>> updates, _ = tx.update(jnp.zeros((1, 2)), tx.init(x), x)
    >>> optax.apply_updates(x, updates)
    Array([[ 0. , -0.9]], dtype=float32)

  Args:
    inner: any optax optimizer.
    strength: lambda >= 0.
    learning_rate: eta_t, float or schedule: the threshold is eta_t * lambda.
    where: leaves to regularize (default :func:`pcs.kernels`).
  """
  checks.check_scalar('strength', strength, minimum=0.0)
  if not callable(learning_rate):
    checks.check_scalar('learning_rate', learning_rate, minimum=0.0)
  inner = boundary.inner_optimizer(inner, 'l1')

  def init_fn(params):
    mask = selection.select(params, where)
    selection.check_selects_some(params, mask, 'l1')
    return L1State(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32), inner.init(params),
                   selection.record(mask))

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
    return out, L1State(optax.safe_int32_increment(state.count), threshold, inner_state,
                        state.selected)

  return boundary.transform(init_fn, update_fn)
