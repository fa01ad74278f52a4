"""The regularization strength alpha_t: a float, an optax schedule, or PILoT's controllers.

:func:`alpha_controller` is Algorithm 1 of Jacobs & Burkholz, "Mask in the Mirror:
Implicit Sparsification" (ICLR 2025). After every epoch k = 1..T:

    alpha <- alpha * delta   if acc_k > acc_{k-1} and ||x||_1 >= K and k <= T / 2,
    alpha <- alpha / delta   otherwise,

so regularization grows while training improves and the weights are not yet small,
and is switched off geometrically in the second half of training. Like
``optax.contrib.reduce_on_plateau`` it is driven by a value the training loop passes
to ``update`` as an extra argument (``accuracy=``, the batch accuracy), averaged over
``steps_per_epoch`` calls. :func:`target_alpha_controller` adds one condition to the
growth, that the weights are not yet as sparse as the sparsity asked for.
"""

from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax

from pcs.core import _checks as checks


class AlphaController(NamedTuple):
  """Hyperparameters of PILoT's accuracy-driven alpha controllers: Algorithm 1
  (:func:`alpha_controller`, ``target_sparsity`` None) or its target-aware variant
  (:func:`target_alpha_controller`)."""
  init_alpha: float
  delta: float
  l1_threshold: float
  steps_per_epoch: int
  num_epochs: int
  target_sparsity: Optional[float] = None
  negligible_mass: float = 0.0


Alpha = Union[float, jax.Array, Callable[[jax.Array], jax.Array], AlphaController]


class AlphaState(NamedTuple):
  """Alpha and, for the controller, its per-epoch bookkeeping."""
  alpha: jax.Array            # float32, the value the next step uses (the controller's)
  used: jax.Array             # float32, the value the latest step used (what to log)
  epoch: jax.Array            # int32, completed epochs
  step_in_epoch: jax.Array    # int32, steps taken in the current epoch
  accuracy_sum: jax.Array     # float32, sum of batch accuracies this epoch
  last_accuracy: jax.Array    # float32, mean accuracy of the last epoch (-inf at start)


def alpha_controller(init_alpha: float, *, delta: float, steps_per_epoch: int,
                     num_epochs: int, l1_threshold: float = 0.0) -> AlphaController:
  """PILoT's Algorithm-1 schedule for alpha, driven by training accuracy.

  Per epoch k (1-based, of ``num_epochs`` = T), with acc_k the mean of the
  ``accuracy=`` values passed to ``update`` during the epoch:
  ``alpha *= delta`` if ``acc_k > acc_{k-1}`` and ``||x||_1 >= l1_threshold`` and
  ``k <= T/2``; else ``alpha /= delta``. If ``update`` is never given
  ``accuracy=`` (e.g. flax's ``TrainState.apply_gradients``), the accuracy test is
  treated as passed: alpha grows in the first half while ``||x||_1 >= K`` and
  decays in the second half.

  Reference: Jacobs & Burkholz, Mask in the Mirror: Implicit Sparsification,
  ICLR 2025, Algorithm 1.

  Example:
    >>> import optax, pcs
    >>> alpha = pcs.alpha_controller(1e-4, delta=1.1, steps_per_epoch=100, num_epochs=150)
    >>> tx = pcs.pilot(optax.sgd(0.2, momentum=0.9), alpha=alpha)  # update(..., accuracy=acc)
    >>> alpha.delta
    1.1

  Args:
    init_alpha: alpha during the first epoch, >= 0.
    delta: multiplicative step, > 1.
    steps_per_epoch: optimizer steps per epoch, >= 1.
    num_epochs: T, the planned number of epochs, >= 1.
    l1_threshold: K, alpha only grows while ``||x||_1 >= K`` (selected leaves).

  Returns:
    An :class:`AlphaController` to pass as ``alpha=`` to :func:`pcs.pilot` or
    :func:`pcs.mirror`.
  """
  if not checks.is_real(delta) or not delta > 1:
    raise ValueError(f'`delta` must be a number > 1; got {delta!r}.')
  return _controller(init_alpha, delta, steps_per_epoch, num_epochs, l1_threshold)


def _controller(init_alpha, delta, steps_per_epoch, num_epochs, l1_threshold,
                **target) -> AlphaController:
  """An :class:`AlphaController` once the arguments shared by both controllers pass."""
  checks.check_scalar('init_alpha', init_alpha, minimum=0.0)
  checks.check_scalar('l1_threshold', l1_threshold, minimum=0.0)
  checks.check_integer('steps_per_epoch', steps_per_epoch, minimum=1)
  checks.check_integer('num_epochs', num_epochs, minimum=1)
  return AlphaController(float(init_alpha), float(delta), float(l1_threshold),
                         int(steps_per_epoch), int(num_epochs), **target)


def target_alpha_controller(init_alpha: float, *, target_sparsity: float, delta: float,
                            steps_per_epoch: int, num_epochs: int, l1_threshold: float = 0.0,
                            negligible_mass: float = 0.01) -> AlphaController:
  r"""Algorithm 1 that stops the implicit bias once the weights are as sparse as asked for.

  Per epoch k (of T), with s_eff(x) the effective sparsity of the selected weights:

      alpha <- 0               if s_eff(x) >= target_sparsity (and from then on),
      alpha <- alpha * delta   else if acc_k > acc_{k-1} and ||x||_1 >= K and k <= T / 2,
      alpha <- alpha / delta   otherwise,

  i.e. :func:`alpha_controller` (Algorithm 1) until the target is reached; ``delta =
  1`` keeps alpha constant until then. s_eff(x) is the largest fraction of the weights,
  smallest magnitudes first, that together carry at most ``negligible_mass`` of
  ``||x||_1``: what a one-shot prune to s_eff cuts carries almost none of the network.

  Why, from the paper's mirror-flow view (Jacobs & Burkholz, "Mask in the Mirror:
  Implicit Sparsification", ICLR 2025): x = m * w trained with decay alpha_t follows
  ``d/dt [arcsinh(x / a_t) / 2] = -grad f(x)`` with

      a_t = beta/2 exp(-4 sum_k eta_k alpha_k),

  whose Bregman potential R_a(x) = 1/2 sum [x arcsinh(x/a) - sqrt(x^2 + a^2)] is
  ``~ x^2 / (4a)`` (L2) for ``|x| << a`` and ``~ 1/2 log(1/a) ||x||_1`` (L1) for
  ``|x| >> a``. A weight
  the loss does not hold keeps its dual coordinate z = arcsinh(x / a_t) / 2 and shrinks
  as x_t = a_t sinh(2z), in proportion to a_t; the smaller a_t, the more weights the
  bias sends to ~0, up to the sparsity of the L1 limit. a_t moves only by the integral
  of alpha, and stays where it is once alpha is 0. Algorithm 1 keeps adding to that
  integral: after growing by delta per epoch to alpha_k, its integral is
  ~ alpha_k tau delta / (delta - 1) (tau: sum of eta over an epoch), and the geometric
  decay that follows adds alpha_k tau / (delta - 1), the same again over delta, so
  -log(a_t / a_0) roughly doubles after the growth stops. The bias then ends past the
  sparsity it had reached, and past any target short of the L1 limit: the one-shot prune
  to a 90% target cuts a network that was trained sparser. Setting alpha to 0 once the
  target is reached freezes a_t where the bias made the weights as sparse as asked.

  s_eff needs a sort of the selected weights once per epoch, on device (no host round
  trip).

  Example:
    >>> import optax, pcs
    >>> alpha = pcs.target_alpha_controller(1e-4, target_sparsity=0.9, delta=1.1,
    ...                                     steps_per_epoch=100, num_epochs=150)
    >>> tx = pcs.pilot(optax.sgd(0.2, momentum=0.9), alpha=alpha)  # update(..., accuracy=acc)
    >>> alpha.target_sparsity
    0.9

  Args:
    init_alpha: alpha during the first epoch, >= 0.
    target_sparsity: the sparsity the network will be pruned to, in (0, 1).
    delta: multiplicative step, >= 1 (1: alpha constant until the target).
    steps_per_epoch: optimizer steps per epoch, >= 1.
    num_epochs: T, the planned number of epochs, >= 1.
    l1_threshold: K, alpha only grows while ``||x||_1 >= K`` (selected leaves).
    negligible_mass: the share of ``||x||_1``, in [0, 1), that the weights counted as
      pruned may carry.

  Returns:
    An :class:`AlphaController` to pass as ``alpha=`` to :func:`pcs.pilot` or
    :func:`pcs.mirror`.
  """
  if not checks.is_real(target_sparsity) or not 0 < target_sparsity < 1:
    raise ValueError(f'`target_sparsity` must be a number in (0, 1); got {target_sparsity!r}.')
  if not checks.is_real(negligible_mass) or not 0 <= negligible_mass < 1:
    raise ValueError(f'`negligible_mass` must be a number in [0, 1); got {negligible_mass!r}.')
  if not checks.is_real(delta) or not delta >= 1:
    raise ValueError(f'`delta` must be a number >= 1; got {delta!r}.')
  return _controller(init_alpha, delta, steps_per_epoch, num_epochs, l1_threshold,
                     target_sparsity=float(target_sparsity),
                     negligible_mass=float(negligible_mass))


def effective_sparsity(leaves: Sequence[jax.Array], negligible_mass: float) -> jax.Array:
  """The largest fraction of the entries of ``leaves``, smallest magnitudes first, whose
  magnitudes sum to at most ``negligible_mass * ||x||_1`` (float32; 1 for all zeros)."""
  magnitudes = jnp.sort(jnp.concatenate([jnp.abs(x).astype(jnp.float32).ravel()
                                         for x in leaves]))
  mass = jnp.cumsum(magnitudes)
  return jnp.mean(mass <= negligible_mass * mass[-1])


def check_alpha(alpha: Alpha) -> None:
  """Raises ValueError unless ``alpha`` is a float >= 0, a schedule or a controller."""
  if isinstance(alpha, AlphaController) or callable(alpha):
    return
  checks.check_scalar('alpha', alpha, minimum=0.0)


def init(alpha: Alpha) -> AlphaState:
  """The initial :class:`AlphaState` for any kind of ``alpha``."""
  start: Any
  if isinstance(alpha, AlphaController):
    start = alpha.init_alpha
  elif callable(alpha):
    start = alpha(jnp.zeros((), jnp.int32))
  else:
    start = alpha
  return AlphaState(
      alpha=jnp.asarray(start, jnp.float32),
      used=jnp.asarray(start, jnp.float32),
      epoch=jnp.zeros((), jnp.int32),
      step_in_epoch=jnp.zeros((), jnp.int32),
      accuracy_sum=jnp.zeros((), jnp.float32),
      last_accuracy=jnp.full((), -jnp.inf, jnp.float32))


def current(alpha: Alpha, state: AlphaState, count: jax.Array) -> jax.Array:
  """alpha_t for the step with index ``count`` (float32 scalar)."""
  if isinstance(alpha, AlphaController):
    return state.alpha
  if callable(alpha):
    return jnp.asarray(alpha(count), jnp.float32)
  return jnp.asarray(alpha, jnp.float32)


def advance(alpha: Alpha, state: AlphaState, alpha_t: jax.Array,
            accuracy: Optional[jax.Array],
            selected: Callable[[], Sequence[jax.Array]]) -> AlphaState:
  """The state after a step that used ``alpha_t``.

  For a controller, ``accuracy`` (or None) is accumulated, and at the end of an
  epoch alpha is multiplied or divided by ``delta`` (Algorithm 1, and for
  :func:`target_alpha_controller` its target condition); ``selected``, the selected
  leaves of the new x, is called only then.
  """
  if not isinstance(alpha, AlphaController):
    return state._replace(alpha=alpha_t, used=alpha_t)
  step_in_epoch = state.step_in_epoch + 1
  accuracy_sum = state.accuracy_sum
  if accuracy is not None:
    accuracy_sum = accuracy_sum + jnp.asarray(accuracy, jnp.float32).mean()

  def end_epoch(_):
    epoch = state.epoch + 1
    mean_accuracy = accuracy_sum / alpha.steps_per_epoch
    improved = True if accuracy is None else mean_accuracy > state.last_accuracy
    leaves = selected()
    l1_norm = sum((jnp.sum(jnp.abs(x), dtype=jnp.float32) for x in leaves),
                  jnp.zeros((), jnp.float32))
    grow = improved & (l1_norm >= alpha.l1_threshold) & (2 * epoch <= alpha.num_epochs)
    new_alpha = jnp.where(grow, state.alpha * alpha.delta, state.alpha / alpha.delta)
    if alpha.target_sparsity is not None:  # target_alpha_controller: 0 from the target on
      reached = effective_sparsity(leaves, alpha.negligible_mass) >= alpha.target_sparsity
      new_alpha = jnp.where(reached, 0.0, new_alpha)
    return AlphaState(new_alpha, alpha_t, epoch, jnp.zeros((), jnp.int32),
                      jnp.zeros((), jnp.float32), mean_accuracy)

  def mid_epoch(_):
    return AlphaState(state.alpha, alpha_t, state.epoch, step_in_epoch, accuracy_sum,
                      state.last_accuracy)

  return lax.cond(step_in_epoch >= alpha.steps_per_epoch, end_epoch, mid_epoch, None)
