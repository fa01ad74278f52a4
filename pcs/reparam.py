"""One wrapper for every continuous sparsification method that trains x through latents.

A method is a :class:`Reparameterization`: how its latent variables u (a
NamedTuple of arrays, e.g. ``Factors(m, w)``) map to the weight, ``x = to_x(u, t)``,
how they are initialised from x, and a penalty P(u, t) (t: the step, for methods
with a temperature). For each selected leaf the wrapper keeps u in the optimizer
state and minimises

    L(u) = f(to_x(u, t)) + alpha_t * P(u, t)

with the user's optax optimizer: the gradient is mapped by the chain rule,
``grad_u = J_to_x(u)^T grad_x f``, the inner optimizer steps u, and the emitted
update is ``to_x(u_new, t + 1) - x``, so ``optax.apply_updates(params, updates)``
equals ``to_x(u_new, t + 1)``. Unselected leaves are passed to the inner optimizer unchanged.

Coupled mode (default) adds ``alpha_t * grad P(u)`` to the gradient the inner
optimizer sees (Algorithm 1 of Jacobs & Burkholz, ICLR 2025). Decoupled mode
applies it after the inner step, ``u <- u + inner_update - lr_t * alpha_t * grad P(u)``,
as AdamW decouples weight decay (Loshchilov & Hutter, ICLR 2019).
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from pcs import alpha as alpha_lib
from pcs import selection

NO_PARAMS_MSG = (
    '{name}.update needs the current parameters: call update(grads, state, params). '
    'They are used to emit updates with apply_updates(params, updates) = new weights.')


def _keep_all(u):
  return u


def _stored_is_whole(stored, x):
  del x
  return stored


class Reparameterization(NamedTuple):
  """A continuous sparsification method: u = init(x), x = to_x(u, t), penalty P(u, t).

  ``u`` is a NamedTuple of arrays (NamedTuples survive flax.nnx's state handling,
  plain tuples do not); t is the int32 step count; ``penalty`` returns a scalar
  summed over the leaf; ``to_x(init(x), 0)`` must equal x. The
  state keeps ``store(u)``, and ``restore(stored, x)`` rebuilds u with the help of
  the current weight x: PILoT keeps only m and recovers w = x / m, so the user's
  parameters stay the source of truth and one latent copy is saved.
  """
  init: Callable[[jax.Array], tuple]
  to_x: Callable[[tuple, jax.Array], jax.Array]
  penalty: Callable[[tuple, jax.Array], jax.Array]
  store: Callable[[tuple], Any] = _keep_all
  restore: Callable[[Any, jax.Array], tuple] = _stored_is_whole


class ReparamState(NamedTuple):
  """State of :func:`reparameterize`.

  Attributes:
    count: number of updates taken (int32).
    latents: the params tree with each selected leaf replaced by the stored part
      of its latents (for PILoT, ``Scale(m)``) and each other leaf by ``MaskedNode()``.
    inner_state: the inner optimizer's state over the latents and unselected leaves.
    alpha_state: the current alpha (and the controller's bookkeeping).
  """
  count: jax.Array
  latents: Any
  inner_state: Any
  alpha_state: alpha_lib.AlphaState


def check_learning_rate(name: str, alpha: alpha_lib.Alpha,
                        learning_rate: Optional[optax.ScalarOrSchedule]) -> None:
  """Raises ValueError if ``learning_rate`` is needed (alpha may be nonzero) but missing."""
  if learning_rate is None:
    if not isinstance(alpha, alpha_lib.AlphaController) and not callable(alpha):
      if not isinstance(alpha, jax.core.Tracer) and float(alpha) == 0.0:
        return
    raise ValueError(
        f'{name} needs `learning_rate` (float or schedule, the inner optimizer\'s '
        'step size) when alpha can be nonzero: time in the mirror flow advances by '
        'learning_rate per step.')
  if not callable(learning_rate):
    alpha_lib.check_scalar('learning_rate', learning_rate, minimum=0.0)


def schedule_value(value: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array:
  """``value(count)`` for a schedule, else ``value``, as float32."""
  return jnp.asarray(value(count) if callable(value) else value, jnp.float32)


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

  See the module docstring for the update rule. Extra keyword arguments of
  ``update`` are passed on to ``inner``; ``accuracy=`` also drives an
  :class:`pcs.AlphaController`.

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
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    mask = selection.select(params, where)
    latents = jax.tree.map(
        lambda x, s: reparam.init(x) if s else optax.MaskedNode(), params, mask)
    return ReparamState(
        count=jnp.zeros((), jnp.int32),
        latents=_store(reparam, params, latents, mask),
        inner_state=inner.init(_merge(params, latents, mask)),
        alpha_state=alpha_lib.init(alpha))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(NO_PARAMS_MSG.format(name=name))
    mask = selection.select(params, where)
    alpha_t = alpha_lib.current(alpha, state.alpha_state, state.count)
    step, next_step = state.count, optax.safe_int32_increment(state.count)
    penalty_grad = jax.grad(lambda u: reparam.penalty(u, step))
    current = jax.tree.map(
        lambda x, stored, s: reparam.restore(stored, x) if s else optax.MaskedNode(),
        params, state.latents, mask)

    def latent_grad(g, u, s):
      if not s:
        return g
      _, pullback = jax.vjp(lambda u: reparam.to_x(u, step), u)
      (grads,) = pullback(g)
      if decoupled:
        return grads
      return jax.tree.map(lambda gu, pu: gu + alpha_t.astype(gu.dtype) * pu,
                          grads, penalty_grad(u))

    inner_grads = jax.tree.map(latent_grad, updates, current, mask)
    inner_updates, inner_state = inner.update(
        inner_grads, state.inner_state, _merge(params, current, mask), **extra_args)

    if decoupled:
      decay = alpha_t * schedule_value(learning_rate, state.count)
    def step_latent(u, du):
      new = jax.tree.map(lambda ui, dui: ui + dui.astype(ui.dtype), u, du)
      if decoupled:
        new = jax.tree.map(lambda ni, pu: ni - decay.astype(ni.dtype) * pu,
                           new, penalty_grad(u))
      return new

    latents = jax.tree.map(
        lambda x, u, du, s: step_latent(u, du) if s else optax.MaskedNode(),
        params, current, inner_updates, mask)
    new_x = jax.tree.map(
        lambda x, u, s: reparam.to_x(u, next_step).astype(x.dtype) if s else x,
        params, latents, mask)
    out, alpha_state = finish_step(alpha, state.alpha_state, alpha_t, extra_args,
                                   params, new_x, inner_updates, mask)
    return out, ReparamState(
        count=next_step,
        latents=_store(reparam, params, latents, mask),
        inner_state=inner_state,
        alpha_state=alpha_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def finish_step(alpha, alpha_state, alpha_t, extra_args, params, new_x, inner_updates, mask):
  """The emitted updates (``new_x - x`` on selected leaves, the inner update elsewhere)
  and the alpha state after a step that used ``alpha_t``."""
  out = jax.tree.map(
      lambda x, nx, du, s: (nx - x) if s else du, params, new_x, inner_updates, mask)
  alpha_state = alpha_lib.advance(
      alpha, alpha_state, alpha_t, extra_args.get('accuracy'),
      lambda: selection.l1_norm(new_x, mask))
  return out, alpha_state


def _store(reparam, params, latents, mask):
  """The part of each selected leaf's latents that the state keeps."""
  return jax.tree.map(lambda x, u, s: reparam.store(u) if s else optax.MaskedNode(),
                      params, latents, mask)


def _merge(params, latents, mask):
  """The tree the inner optimizer sees: latents at selected leaves, x elsewhere."""
  return jax.tree.map(lambda x, u, s: u if s else x, params, latents, mask)
