"""One wrapper for every continuous sparsification method that trains x through latents.

A method is a :class:`Reparameterization`: how its latent variables u (a
NamedTuple of arrays per weight, e.g. ``Factors(m, w)``) map to the weight,
``x = to_x(u, t)``, how they are initialised from x, and a penalty P(u, t) (t: the
step, for methods with a temperature). For each selected leaf the wrapper minimises

    L(u) = f(to_x(u, t)) + alpha_t * P(u, t)

with the user's optax optimizer: the gradient is pulled back by the chain rule,
``grad_u = J_to_x(u)^T grad_x f``, the inner optimizer steps u, and the emitted
update is ``to_x(u_new, t + 1) - x``, so ``optax.apply_updates(params, updates)``
equals ``to_x(u_new, t + 1)``. Unselected leaves are passed to the inner optimizer unchanged.

The step is one scaffold, :func:`step_through_latents`, with three per-leaf pieces
(:class:`LeafSteps`): before the inner optimizer, restore u and pull the gradient back
(adding the penalty's); after it, step u, map it to x, emit the update and store.
:func:`pcs.mirror` runs through the same scaffold with the mirror map as restore, the
gradient itself as the pull-back, and the inverse map (from x) as map_to_x.

Coupled mode (default) adds ``alpha_t * grad P(u)`` to the gradient the inner
optimizer sees (Algorithm 1 of Jacobs & Burkholz, ICLR 2025). Decoupled mode
applies it after the inner step, ``u <- u + inner_update - lr_t * alpha_t * grad P(u)``,
as AdamW decouples weight decay (Loshchilov & Hutter, ICLR 2019).

State layout: every per-weight quantity is a tree shaped like the params, with
``optax.MaskedNode()`` at the leaves a transform does not act on (the convention of
``optax.masked``). Latents are kept as one such tree per latent variable (an m tree,
a w tree), never as NamedTuples at the leaves, so ``optax.tree_utils.tree_map_params``
(with ``is_leaf=lambda n: isinstance(n, optax.MaskedNode)``), flax.nnx, orbax and
every optax wrapper see ordinary params-shaped trees.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from pcs.core import _alpha as alpha_lib
from pcs.core import _checks as checks
from pcs.core import _selection as selection
from pcs.core import _boundary as boundary

NO_PARAMS_MSG = (
    '{name}.update needs the current parameters: call update(grads, state, params). '
    'They are used to emit updates with apply_updates(params, updates) = new weights.')


def is_hole(node: Any) -> bool:
  """True for ``optax.MaskedNode``, the placeholder of a leaf a transform skips."""
  return isinstance(node, optax.MaskedNode)


def map_selected(fn: Callable, tree: Any, *rest: Any) -> Any:
  """``fn(leaf, *rest_leaves)`` at every leaf of ``tree`` that is not a hole.

  ``tree`` has the params' structure with ``MaskedNode`` holes; each of ``rest`` has
  the params' structure (holes allowed at the same places, or anything there: it is
  not read). Holes stay holes.
  """
  return jax.tree.map(lambda u, *xs: u if is_hole(u) else fn(u, *xs), tree, *rest,
                      is_leaf=is_hole)


def unzip(tree: Any, cls: Any) -> Any:
  """A tree with a NamedTuple ``cls`` at each leaf -> ``cls`` of trees (holes kept)."""
  return cls(*(jax.tree.map(lambda u, i=i: u[i], tree, is_leaf=lambda n: isinstance(n, cls))
               for i in range(len(cls._fields))))


def zip_leaves(trees: tuple, like: Any) -> Any:
  """The inverse of :func:`unzip`: ``cls`` of trees -> a tree with ``cls`` at each leaf.

  ``like`` gives the structure and the holes (it works for a ``cls`` with no fields).
  """
  cls = type(trees)
  return map_selected(lambda _, *leaves: cls(*leaves), like, *trees)


def _keep_all(u, step):
  del step
  return u


def _stored_is_whole(stored, x):
  del x
  return stored


class Reparameterization(NamedTuple):
  """A continuous sparsification method: u = init(x), x = to_x(u, t), penalty P(u, t).

  ``u`` is a NamedTuple of arrays for one weight; t is the int32 step count;
  ``penalty`` returns a scalar summed over the leaf; ``to_x(init(x), 0)`` must
  equal x. The state keeps ``store(u, t)`` (a NamedTuple of arrays too), and
  ``restore(stored, x)`` rebuilds u with the help of the current weight x: PILoT
  keeps only m and recovers w = x / m, so the user's parameters stay the source of
  truth and one latent copy is saved. A stored NamedTuple class may define
  ``stored_stats(self, params, where)`` (method-specific scalars) and
  ``restore_trees(self, params, where)`` (the full latents; see
  :class:`pcs.pilot.Scale`); they are called on the state's trees of that class.
  """
  init: Callable[[jax.Array], Any]
  to_x: Callable[[Any, jax.Array], jax.Array]
  penalty: Callable[[Any, jax.Array], jax.Array]
  store: Callable[[Any, jax.Array], Any] = _keep_all
  restore: Callable[[Any, jax.Array], Any] = _stored_is_whole


class Reparameterized(NamedTuple):
  """What the inner optimizer steps: the other weights and the latent trees.

  Attributes:
    weights: the params tree with a hole at every reparameterized leaf.
    latents: the method's latent NamedTuple of trees (e.g. ``Factors(m=..., w=...)``),
      with holes at the other leaves.
  """
  weights: Any
  latents: Any


class ReparamState(NamedTuple):
  """State of :func:`reparameterize`.

  Attributes:
    count: number of updates taken (int32).
    stored: the stored latent NamedTuple of trees (for PILoT ``Scale(m=tree)``),
      holes where the transform does not act.
    inner_state: the inner optimizer's state over :class:`Reparameterized` trees.
    alpha_state: the current alpha (and the controller's bookkeeping).
    selected: which leaves the transform acts on, a tree holding no array
      (:func:`pcs.core._selection.record`); :func:`pcs.stats` and :func:`pcs.latents`
      read it when no ``where`` is given.
  """
  count: jax.Array  # type: ignore[assignment]  # optax's name, shadows tuple.count
  stored: Any
  inner_state: Any
  alpha_state: alpha_lib.AlphaState
  selected: Any

  def stats(self, params: Any, where: selection.Where = None) -> dict:
    """``alpha`` of the latest step and the stored class's own ``stats``."""
    own = getattr(self.stored, 'stored_stats', None)
    return {'alpha': self.alpha_state.used, **(own(params, where) if own else {})}

  def latents(self, params: Any, where: selection.Where = None) -> Any:
    """The latent NamedTuple of trees behind ``params`` (holes where not selected)."""
    own = getattr(self.stored, 'restore_trees', None)
    return own(params, where) if own else self.stored


def check_learning_rate(name: str, alpha: alpha_lib.Alpha,
                        learning_rate: Optional[optax.ScalarOrSchedule]) -> None:
  """Raises ValueError if ``learning_rate`` is needed (alpha may be nonzero) but missing.

  A traced alpha (``optax.inject_hyperparams`` under ``jit``) cannot be inspected
  and passes; the update then turns a nonzero alpha without learning rate into NaN
  (see :func:`step_size`).
  """
  if learning_rate is None:
    if isinstance(alpha, jax.core.Tracer):
      return
    if (not isinstance(alpha, alpha_lib.AlphaController) and not callable(alpha)
        and float(alpha) == 0.0):
      return
    raise ValueError(
        f'{name} needs `learning_rate` (float or schedule, the inner optimizer\'s '
        'step size) when alpha can be nonzero: time in the mirror flow advances by '
        'learning_rate per step.')
  if not callable(learning_rate):
    checks.check_scalar('learning_rate', learning_rate, minimum=0.0)


def schedule_value(value: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array:
  """``value(count)`` for a schedule, else ``value``, as float32."""
  return jnp.asarray(value(count) if callable(value) else value, jnp.float32)


def step_size(learning_rate: Optional[optax.ScalarOrSchedule], alpha_t: jax.Array,
              count: jax.Array) -> jax.Array:
  """eta_t; without a learning rate 0 where alpha_t = 0 and NaN elsewhere.

  The NaN case is reachable only with a traced alpha (``inject_hyperparams`` under
  ``jit``) set nonzero without ``learning_rate``; eagerly it is a ValueError.
  """
  if learning_rate is not None:
    return schedule_value(learning_rate, count)
  return jnp.where(alpha_t == 0, 0.0, jnp.nan).astype(jnp.float32)


def reparameterize(
    inner: optax.GradientTransformation,
    reparam: Reparameterization,
    *,
    alpha: alpha_lib.Alpha = 0.0,
    where: selection.Where = None,
    decoupled: bool = False,
    learning_rate: Optional[optax.ScalarOrSchedule] = None,
    name: str = 'reparameterize',
) -> optax.GradientTransformationExtraArgs:
  """Trains each selected weight x as ``to_x(u)`` with penalty ``alpha_t * P(u)``.

  See the module docstring for the update rule and the state layout. Extra keyword
  arguments of ``update`` are passed on to ``inner``; ``accuracy=`` (and, for
  :func:`pcs.target_alpha_controller`, ``pruned_accuracy=``) also drive an
  :class:`pcs.AlphaController`.

  Example:
    >>> import jax.numpy as jnp, optax, pcs
    >>> cube = pcs.Reparameterization(  # x = u^3 with an L2 penalty on u
    ...     init=lambda x: pcs.Factors(jnp.cbrt(x), jnp.ones_like(x)),
    ...     to_x=lambda u, t: u.m**3 * u.w, penalty=lambda u, t: jnp.sum(u.m**2))
    >>> tx = pcs.reparameterize(optax.sgd(0.1), cube, alpha=1e-3)
    >>> x = jnp.array([[8.0, -1.0]])
    >>> updates, _ = tx.update(jnp.zeros((1, 2)), tx.init(x), x)
    >>> [round(float(v), 3) for v in optax.apply_updates(x, updates)[0]]  # u -= 0.1 * 2e-3 u
    [7.995, -0.999]

  Args:
    inner: any optax optimizer; it steps the latents and the unselected leaves.
    reparam: the method, a :class:`Reparameterization`.
    alpha: penalty strength: float >= 0, schedule ``step -> alpha``, or controller.
    where: which leaves to reparameterize (see :func:`pcs.selection.select`).
    decoupled: apply the penalty outside ``inner`` (needs ``learning_rate``).
    learning_rate: the step size that scales the decoupled penalty.
    name: the public name used in error messages.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  alpha_lib.check_alpha(alpha)
  if decoupled:
    check_learning_rate(f'{name}(decoupled=True)', alpha, learning_rate)
  inner = boundary.inner_optimizer(inner, name)
  example = jax.eval_shape(reparam.init, jax.ShapeDtypeStruct((1, 1), jnp.float32))
  latent_cls = type(example)
  stored_cls = type(jax.eval_shape(reparam.store, example, jnp.zeros((), jnp.int32)))

  def init_fn(params):
    mask = selection.select(params, where)
    selection.check_selects_some(params, mask, name)
    latents, inner_state = init_inner(inner, params, mask, reparam.init, latent_cls)
    count = jnp.zeros((), jnp.int32)
    chosen, _ = split(params, mask)
    stored = unzip(map_selected(lambda x, u: reparam.store(u, count), chosen,
                                zip_leaves(latents, chosen)), stored_cls)
    return ReparamState(count=count, stored=stored, inner_state=inner_state,
                        alpha_state=alpha_lib.init(alpha), selected=selection.record(mask))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(NO_PARAMS_MSG.format(name=name))
    mask = selection.select(params, where)
    alpha_t = alpha_lib.current(alpha, state.alpha_state, state.count)
    step, next_step = state.count, optax.safe_int32_increment(state.count)
    penalty_grad = jax.grad(lambda u: reparam.penalty(u, step))
    decay = alpha_t * schedule_value(learning_rate, step) if decoupled else None

    def pull_back(x, u, g):
      """J_to_x(u)^T g, plus alpha_t grad P(u) when coupled."""
      _, pullback = jax.vjp(lambda u: reparam.to_x(u, step), u)
      (grad,) = pullback(g.astype(x.dtype))
      if not decoupled:
        grad = jax.tree.map(lambda gu, pu: gu + alpha_t.astype(gu.dtype) * pu,
                            grad, penalty_grad(u))
      return grad

    def map_to_x(x, u, du):
      """u + du (minus lr_t alpha_t grad P(u) when decoupled), emitted as x_new - x,
      and its stored part."""
      new = jax.tree.map(lambda ui, dui: ui + dui.astype(ui.dtype), u, du)
      if decoupled:
        new = jax.tree.map(lambda ni, pu: ni - decay.astype(ni.dtype) * pu,
                           new, penalty_grad(u))
      return Emitted(reparam.to_x(new, next_step).astype(x.dtype) - x,
                     reparam.store(new, next_step))

    out, stored, inner_state = step_through_latents(
        inner, LeafSteps(lambda x, stored: reparam.restore(stored, x), pull_back, map_to_x),
        updates, state.inner_state, params, state.stored, mask, latent_cls, stored_cls,
        extra_args)
    alpha_state = advance_alpha(alpha, state.alpha_state, alpha_t, extra_args, params, out, mask)
    return out, ReparamState(count=next_step, stored=stored, inner_state=inner_state,
                             alpha_state=alpha_state, selected=state.selected)

  return boundary.transform(init_fn, update_fn)


class Emitted(NamedTuple):
  """What a leaf's step emits: the update x_new - x and the new stored part."""
  update: jax.Array
  stored: Any


class LeafSteps(NamedTuple):
  """The per-leaf pieces of a step that trains a weight x through latents u.

  Attributes:
    restore: ``(x, stored) -> u``, the latents behind x.
    pull_back: ``(x, u, g) -> grad_u``, the gradient the inner optimizer steps u with
      (for a reparameterization J^T g plus the penalty's gradient; for mirror descent
      g itself).
    map_to_x: ``(x, u, du) -> Emitted``: u stepped by the inner update ``du``, mapped
      back to a weight and emitted as ``x_new - x``, with what to store.
  """
  restore: Callable[[jax.Array, Any], Any]
  pull_back: Callable[[jax.Array, Any, jax.Array], Any]
  map_to_x: Callable[[jax.Array, Any, Any], Emitted]


def split(params: Any, mask: Any) -> tuple:
  """(selected x with holes elsewhere, the other weights with holes at the selected)."""
  chosen = jax.tree.map(lambda x, s: x if s else optax.MaskedNode(), params, mask)
  others = jax.tree.map(lambda x, s: optax.MaskedNode() if s else x, params, mask)
  return chosen, others


def init_inner(inner: optax.GradientTransformation, params: Any, mask: Any,
               to_latents: Callable, latent_cls: Any) -> tuple:
  """(latent NamedTuple of trees, the inner optimizer's state over
  :class:`Reparameterized` trees) for the selected leaves of ``params``."""
  chosen, others = split(params, mask)
  latents = unzip(map_selected(to_latents, chosen), latent_cls)
  return latents, inner.init(Reparameterized(others, latents))


def step_through_latents(inner: optax.GradientTransformationExtraArgs, steps: LeafSteps,
                         updates: Any, inner_state: Any, params: Any, stored: Any, mask: Any,
                         latent_cls: Any, stored_cls: Any, extra_args: dict) -> tuple:
  """One step of ``inner`` on the latents of the selected leaves and on the other weights.

  For each selected leaf x with gradient g the inner optimizer steps
  ``u = steps.restore(x, stored)`` with ``steps.pull_back(x, u, g)``, and
  ``steps.map_to_x`` turns its update du into the emitted update; the other leaves go
  through ``inner`` as they are. ``inner`` sees :class:`Reparameterized` trees.

  Returns:
    (updates shaped like ``params``, the new stored NamedTuple of trees, inner state).
  """
  chosen, others = split(params, mask)
  _, other_grads = split(updates, mask)
  u = map_selected(steps.restore, chosen, zip_leaves(stored, chosen))
  grads = map_selected(steps.pull_back, chosen, u, updates)
  inner_updates, inner_state = inner.update(
      Reparameterized(other_grads, unzip(grads, latent_cls)), inner_state,
      Reparameterized(others, unzip(u, latent_cls)), **extra_args)
  emitted = unzip(map_selected(steps.map_to_x, chosen, u,
                               zip_leaves(inner_updates.latents, chosen)), Emitted)
  out = jax.tree.map(lambda s, a, b: a if s else b, mask, emitted.update, inner_updates.weights)
  return out, unzip(emitted.stored, stored_cls), inner_state


def advance_alpha(alpha, alpha_state, alpha_t, extra_args, params, updates, mask):
  """The alpha state after a step that used ``alpha_t``; a controller reads
  ``accuracy=`` (and ``pruned_accuracy=``) from ``extra_args`` and the selected leaves of
  x_new."""
  return alpha_lib.advance(
      alpha, alpha_state, alpha_t, extra_args.get('accuracy'),
      extra_args.get('pruned_accuracy'),
      lambda: [x for _, x in selection.selected_leaves(optax.apply_updates(params, updates),
                                                       mask)])
