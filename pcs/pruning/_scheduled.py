"""Pruning during training on a schedule, gradual (GMP) or one-shot; masks in the state."""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pcs.core import _checks as checks
from pcs.pruning import _keep_masked as masked
from pcs.pruning import _masks as pruning
from pcs.core import _reparameterize as reparam
from pcs.core import _selection as selection
from pcs.core import _boundary as boundary


class ScheduledPruningState(NamedTuple):
  """State of :func:`gmp` and :func:`one_shot_pruning`.

  Attributes:
    count: steps taken (int32).
    target: the target sparsity of the latest step's schedule (float32).
    masks: bool tree like the params (True = kept).
    inner_state: the inner optimizer's state.
    selected: which leaves are pruned (a tree holding no array; see
      :class:`pcs.ReparamState`).
  """
  count: jax.Array  # type: ignore[assignment]  # optax's name, shadows tuple.count
  target: jax.Array
  masks: Any
  inner_state: optax.OptState
  selected: Any

  def stats(self, params: Any, where: selection.Where = None) -> dict:
    """``target_sparsity`` (scheduled) and ``mask_sparsity`` over the selected leaves."""
    chosen = selection.select(params, where, check_float=False)
    kept = [m for _, m in selection.selected_leaves(self.masks, chosen)]
    size = max(sum(m.size for m in kept), 1)
    pruned = sum((jnp.sum(~m, dtype=jnp.float32) for m in kept), jnp.zeros((), jnp.float32))
    return {'target_sparsity': self.target, 'mask_sparsity': pruned / size}


def _traced(*values) -> bool:
  return any(isinstance(v, jax.core.Tracer) for v in values)


def _scheduled_pruning(inner, sparsity_at: Callable, is_pruning_step: Callable, scope,
                       where, name) -> optax.GradientTransformationExtraArgs:
  """Masked training that re-prunes x to ``sparsity_at(t)`` on pruning steps."""
  pruning.check_scope(scope)
  inner = boundary.inner_optimizer(inner, name)

  def init_fn(params):
    mask = selection.select(params, where)
    selection.check_selects_some(params, mask, name)
    return ScheduledPruningState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32),
                                 pruning.all_kept(params), inner.init(params),
                                 selection.record(mask))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(reparam.NO_PARAMS_MSG.format(name=name))
    inner_updates, inner_state = masked.masked_step(
        inner, updates, state.inner_state, params, state.masks, extra_args)
    new_x = optax.apply_updates(params, inner_updates)
    step = state.count
    target = jnp.asarray(sparsity_at(step), jnp.float32)
    masks = jax.lax.cond(
        is_pruning_step(step),
        lambda x: pruning.magnitude_masks(x, target, scope=scope, where=where),
        lambda x: state.masks, new_x)
    out = jax.tree.map(lambda nx, x, m: jnp.where(m, nx, jnp.zeros_like(nx)) - x,
                       new_x, params, masks)
    return out, ScheduledPruningState(optax.safe_int32_increment(step), target, masks,
                                      masked.zero_pruned(inner, inner_state, masks),
                                      state.selected)

  return boundary.transform(init_fn, update_fn)


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

  Example:
    >>> import jax.numpy as jnp, optax, pcs
    >>> tx = pcs.gmp(optax.sgd(0.1), final_sparsity=0.5, begin_step=0, end_step=1, frequency=1)
    >>> x = {'w': jnp.array([[0.1, -2.0], [3.0, 0.2]])}
    >>> state = tx.init(x)
    >>> for _ in range(2):  # s_0 = 0, s_1 = 0.5
    ...   updates, state = tx.update({'w': jnp.zeros((2, 2))}, state, x)
    ...   x = optax.apply_updates(x, updates)
    >>> x['w']
    Array([[ 0., -2.],
           [ 3.,  0.]], dtype=float32)

  Args:
    inner: any optax optimizer.
    final_sparsity: s_f in [0, 1).
    begin_step: t_0 >= 0.
    end_step: t_1 >= t_0.
    frequency: steps between pruning events (>= 1).
    initial_sparsity: s_i in [0, s_f].
    scope: ``'layerwise'``, ``'global'`` or ``'erk'`` (see :func:`pcs.prune`). The
      default is layerwise, as in Zhu & Gupta's gradual pruning, where every layer
      follows the same sparsity schedule; :func:`pcs.prune` and
      :func:`one_shot_pruning` default to global (one threshold over all layers), the
      usual choice for pruning once after training (Frankle & Carbin, 2019).
    where: leaves to prune (default :func:`pcs.kernels`).
  """
  pruning.check_sparsity(final_sparsity)
  pruning.check_sparsity(initial_sparsity)
  checks.check_integer('begin_step', begin_step, minimum=0)
  checks.check_integer('end_step', end_step, minimum=0)
  checks.check_integer('frequency', frequency, minimum=1)
  if not _traced(initial_sparsity, final_sparsity) and initial_sparsity > final_sparsity:
    raise ValueError(f'`initial_sparsity` ({initial_sparsity}) must be <= '
                     f'`final_sparsity` ({final_sparsity}).')
  if not _traced(begin_step, end_step) and end_step < begin_step:
    raise ValueError(f'`end_step` ({end_step}) must be >= `begin_step` ({begin_step}).')

  def sparsity_at(step):
    span = jnp.maximum(jnp.asarray(end_step) - begin_step, 1)
    progress = jnp.clip((step - begin_step) / span, 0.0, 1.0)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3

  def is_pruning_step(step):
    return ((step >= begin_step) & (step <= end_step) &
            (((step - begin_step) % frequency == 0) | (step == end_step)))

  return _scheduled_pruning(inner, sparsity_at, is_pruning_step, scope, where, 'gmp')


def one_shot_pruning(
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

  Example:
    >>> import jax.numpy as jnp, optax, pcs
    >>> tx = pcs.one_shot_pruning(optax.sgd(0.1), sparsity=0.5, step=0)
    >>> x = {'w': jnp.array([[0.1, -2.0], [3.0, 0.2]])}
    >>> updates, state = tx.update({'w': jnp.zeros((2, 2))}, tx.init(x), x)
    >>> float(pcs.stats(state, x)['mask_sparsity'])
    0.5

  Args:
    inner: any optax optimizer.
    sparsity: target in [0, 1).
    step: the update at which to prune (>= 0).
    scope: ``'global'``, ``'layerwise'`` or ``'erk'``.
    where: leaves to prune (default :func:`pcs.kernels`).
  """
  pruning.check_sparsity(sparsity)
  checks.check_integer('step', step, minimum=0)
  return _scheduled_pruning(inner, lambda t: jnp.asarray(sparsity, jnp.float32),
                            lambda t: t == step, scope, where, 'one_shot_pruning')
