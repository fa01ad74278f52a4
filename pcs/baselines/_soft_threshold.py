"""STR: soft threshold reparameterization with a learnable threshold per layer.

Kusupati et al., "Soft Threshold Weight Reparameterization for Learnable Sparsity", ICML 2020.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pcs.core import _checks as checks
from pcs.core import _paths as paths
from pcs.core import _reparameterize as reparam
from pcs.core import _selection as selection


class ThresholdLatent(NamedTuple):
  """STR's latents: the dense weight w and the layer's threshold logit s (a scalar).

  In the state, ``w`` and ``s`` are params-shaped trees (holes where STR does not act).
  """
  w: Any
  s: Any

  def stored_stats(self, params: Any, where: selection.Where = None) -> dict:
    """``threshold/<layer>``: each layer's threshold sigmoid(s)."""
    del params, where
    out = {}
    for path, s in jax.tree_util.tree_flatten_with_path(self.s)[0]:
      out[f'threshold/{paths.path_name(path)}'] = jax.nn.sigmoid(s.astype(jnp.float32))
    return out


def soft_threshold(
    inner: optax.GradientTransformation,
    *,
    weight_decay: float,
    init_threshold: float = -5.0,
    where: selection.Where = None,
) -> optax.GradientTransformationExtraArgs:
  """STR: ``x = sign(w) relu(|w| - sigmoid(s))``, one learnable s per selected leaf.

  Trained on ``f(x) + weight_decay / 2 (||w||^2 + s^2)`` (coupled through ``inner``);
  the decay on s pulls it up from ``init_threshold`` < 0, so the threshold
  sigmoid(s) grows and weights below it become exact zeros. Initialised with
  ``s = init_threshold`` and ``w = sign(x) (|x| + sigmoid(s))`` so that x is unchanged.
  The gradient reaches w only where ``|w| > sigmoid(s)``, and s through
  ``-sum sign(w) 1[|w| > sigmoid(s)] sigmoid'(s) g``.

  Reference: Kusupati et al., ICML 2020, Eq. (2)-(4).

  Example:
    >>> import jax.numpy as jnp, optax, pcs
    >>> tx = pcs.soft_threshold(optax.sgd(0.1), weight_decay=1e-3)
    >>> params = {'w': jnp.array([[0.5, -1.0]])}
    >>> updates, state = tx.update({'w': jnp.zeros((1, 2))}, tx.init(params), params)
    >>> round(float(pcs.stats(state, params)['threshold/w']), 4)  # sigmoid(s), s ~ -5
    0.0067

  Args:
    inner: any optax optimizer.
    weight_decay: lambda >= 0 on w and s.
    init_threshold: s_0, the initial threshold logit (finite).
    where: leaves to sparsify (default :func:`pcs.kernels`).
  """
  checks.check_scalar('weight_decay', weight_decay, minimum=0.0)
  checks.check_scalar('init_threshold', init_threshold, minimum=-float('inf'))

  def init(x):
    s = jnp.asarray(init_threshold, x.dtype)
    return ThresholdLatent(jnp.sign(x) * (jnp.abs(x) + jax.nn.sigmoid(s)), s)

  def to_x(u, step):
    del step
    return jnp.sign(u.w) * jax.nn.relu(jnp.abs(u.w) - jax.nn.sigmoid(u.s))

  def penalty(u, step):
    del step
    return 0.5 * (jnp.sum(jnp.square(u.w)) + jnp.square(u.s))

  return reparam.reparameterize(
      inner, reparam.Reparameterization(init, to_x, penalty), alpha=weight_decay,
      where=where, name='soft_threshold')
