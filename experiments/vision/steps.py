"""The vision binary's jitted steps: training on a sharded batch, evaluation, and the
per-step totals the loop keeps on device (:mod:`experiments.vision.train` runs them)."""

from typing import Any, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import optax

import pcs


NO_BAD_STEP = np.iinfo(np.int32).max


@flax.struct.dataclass
class TrainState:
  """What a train step carries: the step count, parameters, batch statistics and the
  optimizer state."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def variables(params, batch_stats):
  """The Flax variables of the model: ``params`` and, where the model has them, its batch
  statistics."""
  return {'params': params, **({'batch_stats': batch_stats} if batch_stats else {})}


def all_finite(tree) -> jax.Array:
  """Whether every entry of every leaf of ``tree`` is finite (a boolean scalar)."""
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


@jax.jit
def accumulate(totals: dict, step: dict) -> dict:
  """Running totals of per-step outputs, as one computation per step: sums, except the
  earliest ``bad_step``."""
  return {k: (jnp.minimum if k == 'bad_step' else jnp.add)(totals[k], v)
          for k, v in step.items()}


def add_step(totals: Optional[dict], step: dict) -> dict:
  """The running totals with one more step's outputs (:func:`accumulate`), returned once
  the totals before it are computed: dispatch stays at most one step ahead of the devices,
  which still overlaps host and devices. Unbounded, XLA:CPU's multi-device client could
  fill a device's queue of in-flight computations with ones that wait on a step not yet
  launched there, while the other devices wait for that step in the gradients' all-reduce
  (an abort after XLA's rendezvous timeout, on 8 CPU devices)."""
  if totals is None:
    return step
  updated = accumulate(totals, step)
  jax.block_until_ready(totals)
  return updated


def make_train_step(model, tx, mesh, state_shardings, skip_nonfinite: bool = False,
                    pruned_to: Optional[Tuple[float, str]] = None):
  """The jitted train step: batch sharded on 'data', the state (donated) placed by
  ``state_shardings`` (replicated, or FSDP: :mod:`experiments.common.sharding`).

  It also reports ``bad_step``: its step number if the loss or gradients were
  non-finite (with ``skip_nonfinite``: if the parameters became non-finite, since
  such steps are skipped), else ``NO_BAD_STEP``; reduced with ``min``. With
  ``pruned_to=(sparsity, scope)`` it also passes ``tx`` the batch accuracy of the
  parameters pruned so (``pcs.prune``), as ``pruned_accuracy=``, which
  ``pcs.target_alpha_controller`` reads; for a model with batch norm, both accuracies it
  passes are then taken in inference mode. Pruning sorts the selected kernels each step
  (under FSDP, over the gathered kernels).
  """
  replicated = NamedSharding(mesh, P())
  by_batch = NamedSharding(mesh, P('data'))

  def train_step(state, batch):
    def loss_fn(params):
      logits, updates = model.apply(variables(params, state.batch_stats), batch['input'],
                                    train=True, mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
      return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
    accuracies = {'accuracy': accuracy}
    if pruned_to is not None:
      pruned, _ = pcs.prune(state.params, pruned_to[0], scope=pruned_to[1])

      def inference_accuracy(params):
        logits = model.apply(variables(params, state.batch_stats), batch['input'], train=False)
        return jnp.mean(jnp.argmax(logits, -1) == batch['label'])

      # Both as the final prune is scored: in inference mode, batch norm on its running
      # statistics (without batch norm, the training forward's accuracy is the same).
      accuracies = {'accuracy': inference_accuracy(state.params) if state.batch_stats
                                else accuracy,
                    'pruned_accuracy': inference_accuracy(pruned)}
    deltas, opt_state = tx.update(grads, state.opt_state, state.params, **accuracies)
    params = optax.apply_updates(state.params, deltas)
    finite_inputs = jnp.isfinite(loss) & all_finite(grads)
    ok = all_finite(params) if skip_nonfinite else finite_inputs
    new_state = TrainState(step=state.step + 1, params=params,
                           batch_stats=updates.get('batch_stats', state.batch_stats),
                           opt_state=opt_state)
    return new_state, {'loss': loss, 'accuracy': accuracy,
                       'skipped': (~finite_inputs).astype(jnp.int32),
                       'bad_step': jnp.where(ok, NO_BAD_STEP, state.step)}

  return jax.jit(train_step, in_shardings=(state_shardings, by_batch),
                 out_shardings=(state_shardings, replicated), donate_argnums=0)


def make_eval_step(model, mesh):
  """The jitted eval step; it reads only params and batch statistics, so one
  compilation serves every phase of a run whatever the optimizer. Its inputs keep
  the shardings they have (the params may be FSDP-sharded)."""
  replicated = NamedSharding(mesh, P())

  def eval_step(params, batch_stats, batch, mask):
    logits = model.apply(variables(params, batch_stats), batch['input'], train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    correct = jnp.argmax(logits, -1) == batch['label']
    return {'loss': jnp.sum(losses * mask), 'correct': jnp.sum(correct * mask),
            'count': jnp.sum(mask)}

  return jax.jit(eval_step, out_shardings=replicated)
