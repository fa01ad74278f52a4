"""Sparsify a Flax model with any pcs method, data-parallel over all devices, resumable.

Training (``num_epochs``) -> exact magnitude pruning to ``sparsity`` (``pcs.prune``)
-> optional fine-tuning with the masks fixed (``finetune_epochs``) -> evaluation.
One ``jax.jit`` step, the batch sharded over a ``('data',)`` mesh of all devices (of
all hosts after ``jax.distributed.initialize``), parameters and optimizer state
replicated: the same code runs on 1 CPU and on a pod. An orbax checkpoint is written
after every epoch; a rerun with the same workdir resumes from the last one.
"""

import json
import os
import shutil
import time
from typing import Any

import flax
from flax.metrics import tensorboard
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tensorflow as tf
import tqdm

import pcs
from experiments import config_checks
from experiments import datasets
from experiments import input_pipeline
from experiments import models

METHODS = ('dense', 'pilot', 'mirror', 'spred', 'str', 'cs', 'powerprop', 'l1', 'gmp')
NO_BAD_STEP = np.iinfo(np.int32).max


class NonFiniteError(FloatingPointError):
  """A NaN or Inf appeared in the loss, the gradients or the parameters."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """Linear warmup over ``warmup_epochs``, then cosine to 0 or steps of 0.1 at 50%/75%."""
  total = config.num_epochs * steps_per_epoch
  warmup = config.warmup_epochs * steps_per_epoch
  if config.lr_schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup,
                                              max(total, warmup + 1))
  if config.lr_schedule == 'step':
    return optax.join_schedules(
        [optax.linear_schedule(0.0, config.learning_rate, warmup),
         optax.piecewise_constant_schedule(config.learning_rate, {
             total // 2 - warmup: 0.1, (3 * total) // 4 - warmup: 0.1})], [warmup])
  if config.lr_schedule == 'constant':
    return optax.constant_schedule(config.learning_rate)
  raise ValueError(f"`lr_schedule` must be 'cosine', 'step' or 'constant'; "
                   f'got {config.lr_schedule!r}.')


def make_optimizer(config, steps_per_epoch: int):
  """The inner SGD (momentum, weight decay) wrapped by the configured pcs method."""
  schedule = learning_rate_schedule(config, steps_per_epoch)
  inner = optax.chain(optax.add_decayed_weights(config.weight_decay),
                      optax.sgd(schedule, momentum=config.momentum))
  total = config.num_epochs * steps_per_epoch

  def pilot_alpha(c):
    if c.delta > 1:
      return pcs.alpha_controller(c.alpha, delta=c.delta, steps_per_epoch=steps_per_epoch,
                                  num_epochs=config.num_epochs, l1_threshold=c.l1_threshold)
    return c.alpha

  method = config.method
  if method == 'dense':
    tx = inner
  elif method == 'pilot':
    tx = pcs.pilot(inner, alpha=pilot_alpha(config.pilot), beta=config.pilot.beta)
  elif method == 'mirror':
    tx = pcs.mirror(inner, alpha=pilot_alpha(config.pilot), beta=config.pilot.beta,
                    learning_rate=schedule)
  elif method == 'spred':
    tx = pcs.spred(inner, weight_decay=config.spred.weight_decay)
  elif method == 'str':
    tx = pcs.soft_threshold(inner, weight_decay=config.str.weight_decay,
                            init_threshold=config.str.init_threshold)
  elif method == 'cs':
    tx = pcs.continuous_sparsification(
        inner, l1_strength=config.cs.l1_strength, num_steps=max(total, 1),
        final_temperature=config.cs.final_temperature, mask_init=config.cs.mask_init)
  elif method == 'powerprop':
    tx = pcs.powerprop(inner, power=config.powerprop.power)
  elif method == 'l1':
    tx = pcs.l1(inner, strength=config.l1.strength, learning_rate=schedule)
  elif method == 'gmp':
    tx = pcs.gmp(inner, final_sparsity=config.sparsity,
                 begin_step=int(config.gmp.begin_fraction * total),
                 end_step=int(config.gmp.end_fraction * total),
                 frequency=max(1, int(config.gmp.frequency_epochs * steps_per_epoch)),
                 scope=config.prune_scope)
  else:
    raise ValueError(f'Unknown method {method!r}; choose one of {METHODS}.')
  if config.on_nonfinite == 'skip':
    tx = optax.apply_if_finite(tx, max_consecutive_errors=config.max_nonfinite_steps)
  return optax.with_extra_args_support(tx)


def _variables(params, batch_stats):
  return {'params': params, **({'batch_stats': batch_stats} if batch_stats else {})}


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_train_step(model, tx, mesh, skip_nonfinite: bool = False):
  """The jitted train step: batch sharded on 'data', state replicated.

  It also reports ``bad_step``: its step number if the loss or gradients were
  non-finite (with ``skip_nonfinite``: if the parameters became non-finite, since
  such steps are skipped), else ``NO_BAD_STEP``; reduced with ``min``.
  """
  replicated = NamedSharding(mesh, P())
  by_batch = NamedSharding(mesh, P('data'))

  def train_step(state, batch):
    def loss_fn(params):
      logits, updates = model.apply(_variables(params, state.batch_stats), batch['input'],
                                    train=True, mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
      return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
    deltas, opt_state = tx.update(grads, state.opt_state, state.params, accuracy=accuracy)
    params = optax.apply_updates(state.params, deltas)
    finite_inputs = jnp.isfinite(loss) & _all_finite(grads)
    ok = _all_finite(params) if skip_nonfinite else finite_inputs
    new_state = TrainState(step=state.step + 1, params=params,
                           batch_stats=updates.get('batch_stats', state.batch_stats),
                           opt_state=opt_state)
    return new_state, {'loss': loss, 'accuracy': accuracy,
                       'skipped': (~finite_inputs).astype(jnp.int32),
                       'bad_step': jnp.where(ok, NO_BAD_STEP, state.step)}

  return jax.jit(train_step, in_shardings=(replicated, by_batch),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def make_eval_step(model, mesh):
  """The jitted eval step; it reads only params and batch statistics, so one
  compilation serves every phase of a run whatever the optimizer."""
  replicated = NamedSharding(mesh, P())
  by_batch = NamedSharding(mesh, P('data'))

  def eval_step(params, batch_stats, batch, mask):
    logits = model.apply(_variables(params, batch_stats), batch['input'], train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    correct = jnp.argmax(logits, -1) == batch['label']
    return {'loss': jnp.sum(losses * mask), 'correct': jnp.sum(correct * mask),
            'count': jnp.sum(mask)}

  return jax.jit(eval_step, in_shardings=(replicated, replicated, by_batch, by_batch),
                 out_shardings=replicated)


def _global(batch, sharding):
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def evaluate(evaluate_step, state, builder, spec, split, config, sharding) -> dict:
  """Mean loss and accuracy over a split; batches are padded (and masked) to fill all devices."""
  shards = sharding.mesh.size
  batch_size = -(-config.eval_batch_size // shards) * shards
  sums = None
  for batch, mask in input_pipeline.epoch_batches(builder, spec, split, batch_size,
                                                  train=False, seed=config.seed, epoch=0):
    out = evaluate_step(state.params, state.batch_stats, _global(batch, sharding),
                        _global(mask, sharding))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  return {'loss': float(sums['loss'] / sums['count']),
          'accuracy': float(sums['correct'] / sums['count'])}


@jax.jit
def fingerprint(tree) -> jax.Array:
  """A uint32 digest of every bit of ``tree`` (position-weighted sums of the raw bits).

  Saved with each checkpoint and recomputed after restoring it, so a corrupted or
  truncated checkpoint is detected instead of being loaded.
  """
  total = jnp.uint32(0)
  for i, leaf in enumerate(jax.tree.leaves(tree)):
    leaf = jnp.ravel(jnp.asarray(leaf))
    if leaf.dtype == jnp.bool_:
      leaf = leaf.astype(jnp.uint8)
    bits = leaf.dtype.itemsize * 8
    words = jax.lax.bitcast_convert_type(leaf, jnp.dtype(f'uint{bits}')).astype(jnp.uint32)
    weights = jnp.arange(1, words.size + 1, dtype=jnp.uint32)
    total = total + jnp.uint32(2 * i + 1) * (jnp.sum(words) + jnp.sum(words * weights))
  return total


def _checkpoint_manager(workdir, phase):
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints', phase),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def _epoch_logs(state, train_metrics, test_metrics, epoch, phase) -> dict:
  """The epoch's metrics and every scalar ``pcs.stats`` reports for the optimizer."""
  logs = {'phase': phase, 'epoch': epoch, 'step': int(state.step),
          'train_loss': train_metrics['loss'], 'train_accuracy': train_metrics['accuracy'],
          'test_loss': test_metrics['loss'], 'test_accuracy': test_metrics['accuracy']}
  if pcs.find_states(state.opt_state):
    stats = pcs.stats(state.opt_state, state.params)
  else:  # a plain optax optimizer: the weights' own statistics only
    mask = pcs.select(state.params)
    stats = {'l1_norm': pcs.core.l1_norm(state.params, mask),
             'sparsity': pcs.sparsity(state.params)}
  logs.update({key: float(value) for key, value in jax.device_get(stats).items()})
  return logs


def _run_phase(phase, state, tx, eval_step, config, workdir, model, mesh, builder, spec,
               first_epoch, num_epochs, log_file, writer, extra_to_save):
  """Epochs ``first_epoch..num_epochs`` of one phase, checkpointing after each.

  Returns the state and the last epoch's training metrics (None if no epoch was left).
  """
  train_metrics = None
  train_step = make_train_step(model, tx, mesh, config.on_nonfinite == 'skip')
  sharding = NamedSharding(mesh, P('data'))
  manager = _checkpoint_manager(workdir, phase)
  bar = tqdm.tqdm(range(first_epoch, num_epochs + 1), desc=f'{config.method} {phase}',
                  unit='epoch', initial=first_epoch - 1, total=num_epochs,
                  disable=jax.process_index() != 0)
  for epoch in bar:
    sums, bad_step, steps = None, NO_BAD_STEP, 0
    for batch, _ in input_pipeline.epoch_batches(
        builder, spec, spec.train_split, config.batch_size, train=True, seed=config.seed,
        epoch=epoch if phase == 'train' else 10_000 + epoch):
      state, metrics = train_step(state, _global(batch, sharding))
      bad_step = jnp.minimum(bad_step, metrics.pop('bad_step'))
      sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
      steps += 1
    sums, bad_step = jax.device_get((sums, bad_step))  # one host round trip per epoch
    if bad_step != NO_BAD_STEP:
      last = manager.latest_step()
      manager.close()
      where = (f'the last good checkpoint is {phase} epoch {last} in '
               f'{manager.directory} (kept; nothing after it was saved)' if last is not None
               else 'no checkpoint of this phase was written yet')
      raise NonFiniteError(
          f'Non-finite loss, gradients or parameters at step {int(bad_step)} ({phase} epoch '
          f'{epoch}); {where}. Lower the learning rate, or rerun with '
          "--config.on_nonfinite=skip to skip such steps.")
    skipped = int(sums.pop('skipped'))
    train_metrics = {k: float(v) / steps for k, v in sums.items()}
    train_metrics['skipped_steps'] = skipped
    test_metrics = evaluate(eval_step, state, builder, spec, spec.test_split, config, sharding)
    logs = _epoch_logs(state, train_metrics, test_metrics, epoch, phase)
    logs['skipped_steps'] = train_metrics['skipped_steps']
    bar.set_postfix(acc=f"{logs['test_accuracy']:.3f}", sparsity=f"{logs['sparsity']:.3f}")
    if jax.process_index() == 0:
      log_file.write(json.dumps(logs) + '\n')
      log_file.flush()
      for key, value in logs.items():
        if isinstance(value, float):
          writer.scalar(f'{phase}/{key}', value, logs['step'])
      writer.flush()
    saved = {'state': state, **extra_to_save}
    manager.save(epoch, args=ocp.args.StandardSave(
        {**saved, 'fingerprint': fingerprint(saved)}))
    manager.wait_until_finished()
  manager.close()
  return state, train_metrics


def _restore(manager, template, workdir, phase):
  """The newest checkpoint whose fingerprint verifies, and its step; (None, 0) if none.

  A checkpoint that cannot be read or whose content does not match its fingerprint
  is moved to ``<workdir>/checkpoints/corrupted/`` and the next older one is tried.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=ocp.args.StandardRestore(
          {**template, 'fingerprint': jnp.uint32(0)}))
    except Exception as error:  # pylint: disable=broad-except  (any unreadable checkpoint)
      reason = f'it cannot be read ({type(error).__name__}: {str(error)[:200]})'
    else:
      expected = restored.pop('fingerprint')
      if int(fingerprint(restored)) == int(expected):
        return restored, step
      reason = 'its content does not match its fingerprint'
    target = os.path.join(workdir, 'checkpoints', 'corrupted', f'{phase}-{step}-{int(time.time())}')
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(os.path.join(str(manager.directory), str(step)), target)
    manager.reload()
    print(f'Skipped {phase} checkpoint {step}: {reason}; moved to {target}.')
  return None, 0


def _truncate_logs(path, phase, last_epoch):
  """Drops log lines of epochs after the restored checkpoint (they will be redone)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [json.loads(line) for line in f if line.strip()]
  order = {'train': 0, 'finetune': 1}
  kept = [row for row in lines
          if (order[row['phase']], row['epoch']) <= (order[phase], last_epoch)]
  with open(path, 'w') as f:
    f.writelines(json.dumps(row) + '\n' for row in kept)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the configured experiment in ``workdir`` and returns (and writes) its results."""
  start_time = time.time()
  config_checks.validate(config)
  config_path = os.path.join(workdir, 'config.json')
  if os.path.exists(config_path):
    with open(config_path) as f:
      config_checks.check_workdir(config, json.load(f), workdir)
  spec = datasets.DATASETS[config.dataset]
  builder = datasets.builder(config.dataset, config.data_dir)
  model = models.create_model(config.model, spec.num_classes)
  devices = jax.devices()[:config.num_devices] if config.num_devices else jax.devices()
  if config.batch_size % len(devices):
    raise ValueError(f'`batch_size` ({config.batch_size}) must be divisible by the '
                     f'{len(devices)} devices.')
  mesh = jax.sharding.Mesh(np.array(devices), ('data',))
  replicated = NamedSharding(mesh, P())
  by_batch = NamedSharding(mesh, P('data'))
  eval_step = make_eval_step(model, mesh)
  steps_per_epoch = input_pipeline.steps_per_epoch(builder, spec.train_split, config.batch_size)
  if steps_per_epoch < 1:
    raise ValueError(f'`batch_size` ({config.batch_size}) exceeds the training set.')

  tf.io.gfile.makedirs(workdir)
  if not os.path.exists(config_path):
    with open(config_path, 'w') as f:
      json.dump(config.to_dict(), f, indent=1)
  variables = model.init(jax.random.key(config.seed),
                         jnp.zeros((1,) + spec.input_shape, jnp.float32), train=False)
  params = variables['params']
  batch_stats = variables.get('batch_stats', {})
  tx = make_optimizer(config, steps_per_epoch)
  state = jax.device_put(TrainState(jnp.zeros((), jnp.int32), params, batch_stats,
                                    tx.init(params)), replicated)
  log_path = os.path.join(workdir, 'metrics.jsonl')
  writer = tensorboard.SummaryWriter(os.path.join(workdir, 'tensorboard'))

  finetune_sgd = optax.sgd(config.finetune_learning_rate, momentum=config.momentum)
  manager = _checkpoint_manager(workdir, 'finetune')
  all_kept = jax.device_put(pcs.pruning.all_kept(params),
                            replicated)
  template_tx = pcs.keep_masked(finetune_sgd, all_kept)
  restored, finetune_done = _restore(manager, workdir=workdir, phase='finetune', template={
      'state': jax.device_put(TrainState(state.step, params, batch_stats,
                                         template_tx.init(params)), replicated),
      'masks': all_kept})
  manager.close()
  train_metrics, dense_eval = None, None
  with open(log_path, 'a') as log_file:
    if restored is None:  # (re)start or continue training, then prune
      manager = _checkpoint_manager(workdir, 'train')
      restored_train, done = _restore(manager, {'state': state}, workdir, 'train')
      manager.close()
      if restored_train is not None:
        state = restored_train['state']
        print(f'Resuming {workdir} after training epoch {done}.')
      _truncate_logs(log_path, 'train', done)
      state, train_metrics = _run_phase(
          'train', state, tx, eval_step, config, workdir, model, mesh, builder, spec, done + 1,
          config.num_epochs, log_file, writer, {})
      dense_eval = evaluate(eval_step, state, builder, spec, spec.test_split, config,
                            by_batch)
      pruned, masks = jax.device_put(pcs.prune(jax.device_get(state.params), config.sparsity,
                                               scope=config.prune_scope), replicated)
      finetune_tx = pcs.keep_masked(finetune_sgd, masks)
      state = jax.device_put(TrainState(state.step, pruned, state.batch_stats,
                                        finetune_tx.init(pruned)), replicated)
    else:  # interrupted while fine-tuning: the masks come from the checkpoint
      state, masks = restored['state'], restored['masks']
      finetune_tx = pcs.keep_masked(finetune_sgd, masks)
      print(f'Resuming {workdir} after fine-tuning epoch {finetune_done}.')
    if config.finetune_epochs:
      _truncate_logs(log_path, 'finetune', finetune_done)
      state, train_metrics = _run_phase(
          'finetune', state, finetune_tx, eval_step, config, workdir, model, mesh, builder, spec,
          finetune_done + 1, config.finetune_epochs, log_file, writer, {'masks': masks})

  test = evaluate(eval_step, state, builder, spec, spec.test_split, config, by_batch)
  train = (evaluate(eval_step, state, builder, spec, spec.train_split, config, by_batch)
           if config.eval_train or train_metrics is None
           else {'accuracy': train_metrics['accuracy']})
  results = {
      'method': config.method, 'dataset': config.dataset, 'model': config.model,
      'target_sparsity': float(config.sparsity),
      'achieved_sparsity': pcs.summary(state.params).sparsity,
      'test_accuracy': test['accuracy'], 'train_accuracy': train['accuracy'],
      'test_accuracy_before_pruning': dense_eval['accuracy'] if dense_eval else None,
      'num_epochs': config.num_epochs, 'finetune_epochs': config.finetune_epochs,
      'seed': config.seed, 'num_devices': len(devices),
      'params_fingerprint': int(fingerprint(state.params)),
      'wall_time_s': time.time() - start_time, 'config': config.to_dict(),
  }
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=1)
  return results
