"""The regularization strength alpha_t: a float, an optax schedule, or PILoT's controller.

The controller is Algorithm 1 of Jacobs & Burkholz, "Mask in the Mirror: Implicit
Sparsification" (ICLR 2025). After every epoch k = 1..T:

    alpha <- alpha * delta   if acc_k > acc_{k-1} and ||x||_1 >= K and k <= T / 2,
    alpha <- alpha / delta   otherwise,

so regularization grows while training improves and the weights are not yet small,
and is switched off geometrically in the second half of training. Like
``optax.contrib.reduce_on_plateau`` it is driven by a value the training loop passes
to ``update`` as an extra argument (``accuracy=``, the batch accuracy), averaged over
``steps_per_epoch`` calls.
"""

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
from jax import lax

from pcs.core import _checks as checks


class AlphaController(NamedTuple):
  """Hyperparameters of PILoT's accuracy-driven alpha controller (see module doc)."""
  init_alpha: float
  delta: float
  l1_threshold: float
  steps_per_epoch: int
  num_epochs: int


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
  checks.check_scalar('init_alpha', init_alpha, minimum=0.0)
  checks.check_scalar('l1_threshold', l1_threshold, minimum=0.0)
  if not checks.is_real(delta) or not delta > 1:
    raise ValueError(f'`delta` must be a number > 1; got {delta!r}.')
  checks.check_integer('steps_per_epoch', steps_per_epoch, minimum=1)
  checks.check_integer('num_epochs', num_epochs, minimum=1)
  return AlphaController(float(init_alpha), float(delta), float(l1_threshold),
                         int(steps_per_epoch), int(num_epochs))


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
            accuracy: Optional[jax.Array], l1_norm: Callable[[], jax.Array]) -> AlphaState:
  """The state after a step that used ``alpha_t``.

  For the controller, ``accuracy`` (or None) is accumulated, and at the end of an
  epoch alpha is multiplied or divided by ``delta`` (Algorithm 1); ``l1_norm`` is
  called only then.
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
    grow = improved & (l1_norm() >= alpha.l1_threshold) & (2 * epoch <= alpha.num_epochs)
    new_alpha = jnp.where(grow, state.alpha * alpha.delta, state.alpha / alpha.delta)
    return AlphaState(new_alpha, alpha_t, epoch, jnp.zeros((), jnp.int32),
                      jnp.zeros((), jnp.float32), mean_accuracy)

  def mid_epoch(_):
    return AlphaState(state.alpha, alpha_t, state.epoch, step_in_epoch, accuracy_sum,
                      state.last_accuracy)

  return lax.cond(step_in_epoch >= alpha.steps_per_epoch, end_epoch, mid_epoch, None)
