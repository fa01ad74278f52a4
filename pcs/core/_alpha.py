"""The regularization strength alpha_t: a float, an optax schedule, or PILoT's controllers.

:func:`alpha_controller` is Algorithm 1 of Jacobs & Burkholz, "Mask in the Mirror:
Implicit Sparsification" (ICLR 2025). After every epoch k = 1..T:

    alpha <- alpha * delta   if acc_k > acc_{k-1} and ||x||_1 >= K and k <= T / 2,
    alpha <- alpha / delta   otherwise,

so regularization grows while training improves and the weights are not yet small,
and is switched off geometrically in the second half of training. Like
``optax.contrib.reduce_on_plateau`` it is driven by a value the training loop passes
to ``update`` as an extra argument (``accuracy=``, the batch accuracy), averaged over
``steps_per_epoch`` calls. :func:`target_alpha_controller` pauses it in the epochs after
which pruning to the sparsity asked for costs no training accuracy (``pruned_accuracy=``).
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
  tolerance: float = 0.01


Alpha = Union[float, jax.Array, Callable[[jax.Array], jax.Array], AlphaController]


class AlphaState(NamedTuple):
  """Alpha and, for the controllers, their per-epoch bookkeeping."""
  alpha: jax.Array            # float32, the controller's alpha (0 is used while paused)
  used: jax.Array             # float32, the value the latest step used (what to log)
  epoch: jax.Array            # int32, completed epochs
  step_in_epoch: jax.Array    # int32, steps taken in the current epoch
  accuracy_sum: jax.Array     # float32, sum of batch accuracies this epoch
  last_accuracy: jax.Array    # float32, mean accuracy of the last epoch (-inf at start)
  pruned_accuracy_sum: jax.Array  # float32, sum of pruned accuracies this epoch (target)
  paused: jax.Array           # bool, the current epoch runs at alpha 0 (target controller)


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
                            tolerance: float = 0.01) -> AlphaController:
  r"""Algorithm 1, paused while pruning to the target costs no training accuracy.

  Per epoch k (of T), with acc_k and pacc_k the means of the ``accuracy=`` and
  ``pruned_accuracy=`` values passed to ``update`` during the epoch, pacc being the batch
  accuracy of the network pruned to ``target_sparsity`` by magnitude (``pcs.prune``):

      paused_k = acc_k - pacc_k <= tolerance,
      alpha_{k+1} = alpha_k                       if paused_k  (epoch k+1 runs at alpha 0),
      alpha_{k+1} = Algorithm 1's update of alpha_k   otherwise,

  so the bias acts only in epochs after which the prune to the target still costs more
  than ``tolerance`` of training accuracy; ``delta = 1`` keeps alpha constant whenever it
  acts. The tolerance is on accuracy, not on sparsity: when the bias stops, the weights
  are prunable to the target at that cost, not necessarily that sparse in magnitude (on
  the diagonal network of the tests, stopping for 70% and 90%, 18% and 36% of the weights
  carry 1% of ``||x||_1``, where Algorithm 1 ends at 95%).

  Why, from the paper's mirror-flow view (Jacobs & Burkholz, "Mask in the Mirror:
  Implicit Sparsification", ICLR 2025): x = m * w trained with decay alpha_t follows
  ``d/dt [arcsinh(x / a_t) / 2] = -grad f(x)`` with

      a_t = beta/2 exp(-4 sum_k eta_k alpha_k),

  whose Bregman potential R_a(x) = 1/2 sum [x arcsinh(x/a) - sqrt(x^2 + a^2)] is
  ``~ x^2 / (4a)`` (L2) for ``|x| << a`` and ``~ 1/2 log(1/a) ||x||_1`` (L1) for
  ``|x| >> a``. The smaller a_t, the closer the implicit bias is to L1 and the more
  weights it sends to ~0, up to the sparsity of the L1 limit. a_t moves only while alpha
  is > 0, and stays where it is once alpha is 0. Algorithm 1 keeps lowering it: after
  growing by delta per epoch to alpha_k, its integral of alpha is ~ alpha_k tau delta /
  (delta - 1) (tau: sum of eta over an epoch), and the geometric decay that follows adds
  alpha_k tau / (delta - 1), so -log(a_t / a_0) roughly doubles after the growth stops, and
  the bias ends past any target short of the L1 limit. What a target needs is a_t just
  low enough that the weights the prune removes carry none of the function. Their share of
  ``||x||_1`` does not measure that (at strengths that keep a network accurate, the
  smallest 90% of its weights still carry 57-60% of it; quality/notes.md), so the
  controller measures the prune's cost directly, in the currency Algorithm 1 already
  reads, and lowers a_t only while that cost exceeds ``tolerance``. The lower the target,
  the sooner the prune is free and the higher a_t stays: the bias's strength follows the
  target. If training later moves the function back onto the small weights, the cost
  rises and the bias resumes.

  The training step computes ``pruned_accuracy`` with one more forward pass, e.g.
  ``pcs.prune(params, target_sparsity)[0]`` applied to the same batch.

  Example:
    >>> import optax, pcs
    >>> alpha = pcs.target_alpha_controller(1e-4, target_sparsity=0.9, delta=1.1,
    ...                                     steps_per_epoch=100, num_epochs=150)
    >>> tx = pcs.pilot(optax.sgd(0.2, momentum=0.9), alpha=alpha)
    >>> # update(grads, state, params, accuracy=acc, pruned_accuracy=pruned_acc)
    >>> alpha.target_sparsity
    0.9

  Args:
    init_alpha: alpha during the first epoch, >= 0.
    target_sparsity: the sparsity the network will be pruned to, in (0, 1); the
      ``pruned_accuracy=`` values must be measured at it.
    delta: multiplicative step, >= 1 (1: alpha constant whenever it acts).
    steps_per_epoch: optimizer steps per epoch, >= 1.
    num_epochs: T, the planned number of epochs, >= 1.
    l1_threshold: K, alpha only grows while ``||x||_1 >= K`` (selected leaves).
    tolerance: the training accuracy, in [0, 1), that the prune to the target may cost
      for the bias to pause.

  Returns:
    An :class:`AlphaController` to pass as ``alpha=`` to :func:`pcs.pilot` or
    :func:`pcs.mirror`; their ``update`` then needs ``accuracy=`` and
    ``pruned_accuracy=``.
  """
  if not checks.is_real(target_sparsity) or not 0 < target_sparsity < 1:
    raise ValueError(f'`target_sparsity` must be a number in (0, 1); got {target_sparsity!r}.')
  if not checks.is_real(tolerance) or not 0 <= tolerance < 1:
    raise ValueError(f'`tolerance` must be a number in [0, 1); got {tolerance!r}.')
  if not checks.is_real(delta) or not delta >= 1:
    raise ValueError(f'`delta` must be a number >= 1; got {delta!r}.')
  return _controller(init_alpha, delta, steps_per_epoch, num_epochs, l1_threshold,
                     target_sparsity=float(target_sparsity), tolerance=float(tolerance))


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
      last_accuracy=jnp.full((), -jnp.inf, jnp.float32),
      pruned_accuracy_sum=jnp.zeros((), jnp.float32),
      paused=jnp.zeros((), bool))


def current(alpha: Alpha, state: AlphaState, count: jax.Array) -> jax.Array:
  """alpha_t for the step with index ``count`` (float32 scalar)."""
  if isinstance(alpha, AlphaController):
    return jnp.where(state.paused, 0.0, state.alpha)
  if callable(alpha):
    return jnp.asarray(alpha(count), jnp.float32)
  return jnp.asarray(alpha, jnp.float32)


def advance(alpha: Alpha, state: AlphaState, alpha_t: jax.Array,
            accuracy: Optional[jax.Array], pruned_accuracy: Optional[jax.Array],
            selected: Callable[[], Sequence[jax.Array]]) -> AlphaState:
  """The state after a step that used ``alpha_t``.

  For a controller, ``accuracy`` (or None) is accumulated, and at the end of an epoch
  alpha is multiplied or divided by ``delta`` (Algorithm 1); the target-aware controller
  also accumulates ``pruned_accuracy`` and pauses alpha by the prune's cost (see
  :func:`target_alpha_controller`). ``selected``, the selected leaves of the new x, is
  called only at the end of an epoch.
  """
  if not isinstance(alpha, AlphaController):
    return state._replace(alpha=alpha_t, used=alpha_t)
  aims = alpha.target_sparsity is not None
  if aims and (accuracy is None or pruned_accuracy is None):
    missing = [name for name, value in (('accuracy', accuracy),
                                        ('pruned_accuracy', pruned_accuracy)) if value is None]
    raise ValueError(
        'pcs.target_alpha_controller needs `accuracy=` (the batch accuracy) and '
        '`pruned_accuracy=` (that of the network pruned to target_sparsity='
        f'{alpha.target_sparsity}, e.g. by pcs.prune) passed to `update`; missing: '
        f'{", ".join(missing)}.')
  step_in_epoch = state.step_in_epoch + 1
  accuracy_sum, pruned_accuracy_sum = state.accuracy_sum, state.pruned_accuracy_sum
  if accuracy is not None:
    accuracy_sum = accuracy_sum + jnp.asarray(accuracy, jnp.float32).mean()
  if aims:
    pruned_accuracy_sum = pruned_accuracy_sum + jnp.asarray(pruned_accuracy, jnp.float32).mean()

  def end_epoch(_):
    epoch = state.epoch + 1
    mean_accuracy = accuracy_sum / alpha.steps_per_epoch
    improved = True if accuracy is None else mean_accuracy > state.last_accuracy
    l1_norm = sum((jnp.sum(jnp.abs(x), dtype=jnp.float32) for x in selected()),
                  jnp.zeros((), jnp.float32))
    grow = improved & (l1_norm >= alpha.l1_threshold) & (2 * epoch <= alpha.num_epochs)
    new_alpha = jnp.where(grow, state.alpha * alpha.delta, state.alpha / alpha.delta)
    paused = jnp.zeros((), bool)
    if aims:  # target_alpha_controller: alpha held, and 0 used, while the prune is free
      cost = mean_accuracy - pruned_accuracy_sum / alpha.steps_per_epoch
      paused = cost <= alpha.tolerance
      new_alpha = jnp.where(paused, state.alpha, new_alpha)
    return AlphaState(new_alpha, alpha_t, epoch, jnp.zeros((), jnp.int32),
                      jnp.zeros((), jnp.float32), mean_accuracy, jnp.zeros((), jnp.float32),
                      paused)

  def mid_epoch(_):
    return state._replace(used=alpha_t, step_in_epoch=step_in_epoch,
                          accuracy_sum=accuracy_sum, pruned_accuracy_sum=pruned_accuracy_sum)

  return lax.cond(step_in_epoch >= alpha.steps_per_epoch, end_epoch, mid_epoch, None)
