"""Gradual magnitude pruning and one-shot magnitude pruning during training, masks in the state."""

import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pcs import masked
from pcs import pruning
from pcs import reparam
from pcs import selection


class PruningState(NamedTuple):
  """count: steps taken; masks: bool tree like params (True = kept); inner_state."""
  count: jax.Array
  masks: Any
  inner_state: optax.OptState


def _check_step(name, value):
  if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
    raise ValueError(f'`{name}` must be an integer >= 0; got {value!r}.')


def _scheduled_pruning(inner, sparsity_at: Callable, is_pruning_step: Callable, scope,
                       where, name) -> optax.GradientTransformationExtraArgs:
  """Masked training that re-prunes x to ``sparsity_at(t)`` on pruning steps."""
  pruning.check_scope(scope)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    selection.select(params, where)
    masks = jax.tree.map(lambda x: jnp.ones(jnp.shape(x), bool), params)
    return PruningState(jnp.zeros((), jnp.int32), masks, inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(reparam.NO_PARAMS_MSG.format(name=name))
    inner_updates, inner_state = masked.masked_step(
        inner, updates, state.inner_state, params, state.masks, extra_args)
    new_x = optax.apply_updates(params, inner_updates)
    step = state.count
    masks = jax.lax.cond(
        is_pruning_step(step),
        lambda x: pruning.magnitude_masks(x, sparsity_at(step), scope=scope, where=where),
        lambda x: state.masks, new_x)
    out = jax.tree.map(lambda nx, x, m: jnp.where(m, nx, jnp.zeros_like(nx)) - x,
                       new_x, params, masks)
    return out, PruningState(optax.safe_int32_increment(step), masks,
                             masked.zero_masked(inner_state, masks))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def gmp(
    inner: optax.GradientTransformation,
    *,
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    frequency: int = 100,
    initial_sparsity: float = 0.0,
    scope: str = 'layerwise',
    where: selection.Where = None,
) -> optax.GradientTransformationExtraArgs:
  """Gradual magnitude pruning with the cubic sparsity schedule.

      s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (t_1 - t_0))^3,   t_0 <= t <= t_1,

  applied every ``frequency`` steps from ``begin_step`` = t_0 and at ``end_step`` =
  t_1: the smallest-magnitude selected weights are zeroed to exactly s_t
  (:func:`pcs.prune`'s rounding), masks are kept in the state, and pruned weights
  stay zero with zeroed optimizer moments in between.

  Reference: Zhu & Gupta, "To prune, or not to prune", 2018, Eq. (1).

  Args:
    inner: any optax optimizer.
    final_sparsity: s_f in [0, 1).
    begin_step: t_0 >= 0.
    end_step: t_1 >= t_0.
    frequency: steps between pruning events (>= 1).
    initial_sparsity: s_i in [0, s_f].
    scope: ``'layerwise'``, ``'global'`` or ``'erk'`` (see :func:`pcs.prune`).
    where: leaves to prune (default: ndim >= 2).
  """
  pruning.check_sparsity(final_sparsity)
  pruning.check_sparsity(initial_sparsity)
  if initial_sparsity > final_sparsity:
    raise ValueError(f'`initial_sparsity` ({initial_sparsity}) must be <= '
                     f'`final_sparsity` ({final_sparsity}).')
  _check_step('begin_step', begin_step)
  _check_step('end_step', end_step)
  if end_step < begin_step:
    raise ValueError(f'`end_step` ({end_step}) must be >= `begin_step` ({begin_step}).')
  if not isinstance(frequency, numbers.Integral) or frequency < 1:
    raise ValueError(f'`frequency` must be an integer >= 1; got {frequency!r}.')
  span = max(end_step - begin_step, 1)

  def sparsity_at(step):
    progress = jnp.clip((step - begin_step) / span, 0.0, 1.0)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3

  def is_pruning_step(step):
    return ((step >= begin_step) & (step <= end_step) &
            (((step - begin_step) % frequency == 0) | (step == end_step)))

  return _scheduled_pruning(inner, sparsity_at, is_pruning_step, scope, where, 'gmp')


def magnitude(
    inner: optax.GradientTransformation,
    *,
    sparsity: float,
    step: int,
    scope: str = 'global',
    where: selection.Where = None,
) -> optax.GradientTransformationExtraArgs:
  """One-shot magnitude pruning at ``step``, then training with the masks fixed.

  At update number ``step`` the smallest-magnitude selected weights are zeroed to
  exactly ``sparsity`` (see :func:`pcs.prune`); afterwards they stay zero.

  Reference: Han et al., "Learning both Weights and Connections for Efficient
  Neural Networks", NeurIPS 2015.

  Args:
    inner: any optax optimizer.
    sparsity: target in [0, 1).
    step: the update at which to prune (>= 0).
    scope: ``'global'``, ``'layerwise'`` or ``'erk'``.
    where: leaves to prune (default: ndim >= 2).
  """
  pruning.check_sparsity(sparsity)
  _check_step('step', step)
  return _scheduled_pruning(inner, lambda t: jnp.float32(sparsity), lambda t: t == step,
                            scope, where, 'magnitude')
