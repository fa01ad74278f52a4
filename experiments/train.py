"""Sparsify a Flax model with any pcs method, data-parallel over all devices, resumable.

Training (``num_epochs``) -> exact magnitude pruning to ``sparsity`` (``pcs.prune``)
-> optional fine-tuning with the masks fixed (``finetune_epochs``) -> evaluation.
One ``jax.jit`` step, the batch sharded over a ``('data',)`` mesh of all devices (of
all hosts after ``jax.distributed.initialize``), parameters and optimizer state
replicated: the same code runs on 1 CPU and on a pod. An orbax checkpoint is written
after every epoch (:mod:`experiments.checkpointing`); a rerun with the same workdir
resumes from the last one. The optimizer comes from :mod:`experiments.optimizers`.
"""

import contextlib
import dataclasses
import json
import os
import time
from typing import Any, Optional, TextIO

import flax
from flax.metrics import tensorboard
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import tensorflow as tf
import tqdm

import pcs
from experiments import checkpointing
from experiments import config_checks
from experiments import datasets
from experiments import input_pipeline
from experiments import models
from experiments import optimizers
from experiments import sharding

NO_BAD_STEP = np.iinfo(np.int32).max


class NonFiniteError(FloatingPointError):
  """A NaN or Inf appeared in the loss, the gradients or the parameters."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def _variables(params, batch_stats):
  return {'params': params, **({'batch_stats': batch_stats} if batch_stats else {})}


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_train_step(model, tx, mesh, state_shardings, skip_nonfinite: bool = False):
  """The jitted train step: batch sharded on 'data', the state (donated) placed by
  ``state_shardings`` (replicated, or FSDP: :mod:`experiments.sharding`).

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

  return jax.jit(train_step, in_shardings=(state_shardings, by_batch),
                 out_shardings=(state_shardings, replicated), donate_argnums=0)


def make_eval_step(model, mesh):
  """The jitted eval step; it reads only params and batch statistics, so one
  compilation serves every phase of a run whatever the optimizer. Its inputs keep
  the shardings they have (the params may be FSDP-sharded)."""
  replicated = NamedSharding(mesh, P())

  def eval_step(params, batch_stats, batch, mask):
    logits = model.apply(_variables(params, batch_stats), batch['input'], train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    correct = jnp.argmax(logits, -1) == batch['label']
    return {'loss': jnp.sum(losses * mask), 'correct': jnp.sum(correct * mask),
            'count': jnp.sum(mask)}

  return jax.jit(eval_step, out_shardings=replicated)


@dataclasses.dataclass
class Run:
  """What every phase of one run shares: config, data, model, mesh, steps and outputs."""
  config: ml_collections.ConfigDict
  workdir: str
  spec: Any
  builder: Any
  model: Any
  mesh: jax.sharding.Mesh
  eval_step: Any
  steps_per_epoch: int
  log_file: Optional[TextIO] = None
  writer: Any = None

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def by_batch(self) -> NamedSharding:
    return NamedSharding(self.mesh, P('data'))

  def evaluate(self, state, split) -> dict:
    """Mean loss and accuracy over a split; batches are padded (and masked) to fill all
    devices."""
    shards = self.mesh.size
    batch_size = -(-self.config.eval_batch_size // shards) * shards
    sums = None
    for batch, mask in input_pipeline.epoch_batches(
        self.builder, self.spec, split, batch_size, train=False, seed=self.config.seed,
        epoch=0, rows=input_pipeline.process_rows(self.by_batch, batch_size)):
      out = self.eval_step(state.params, state.batch_stats, _global(batch, self.by_batch),
                           _global(mask, self.by_batch))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    return {'loss': float(sums['loss'] / sums['count']),
            'accuracy': float(sums['correct'] / sums['count'])}

  @property
  def primary(self) -> bool:
    """Process 0 alone writes results, metrics and TensorBoard events."""
    return jax.process_index() == 0

  def shardings(self, tx, state: TrainState) -> TrainState:
    """Where each part of ``state`` lives: parameters by ``config.param_sharding``, the
    optimizer state following them, the rest replicated."""
    specs = sharding.param_specs(state.params, self.mesh, self.config.param_sharding)
    return TrainState(
        step=self.replicated,
        params=sharding.named(self.mesh, specs),
        batch_stats=jax.tree.map(lambda _: self.replicated, state.batch_stats),
        opt_state=sharding.named(self.mesh, sharding.state_specs(
            tx, state.opt_state, state.params, specs)))

  def place(self, tx, state: TrainState) -> TrainState:
    return jax.device_put(state, self.shardings(tx, state))

  def say(self, message: str) -> None:
    if self.primary:
      print(message)

  def truncate_logs(self, phase: str, last_epoch: int) -> None:
    if self.primary:
      checkpointing.truncate_logs(os.path.join(self.workdir, 'metrics.jsonl'), phase,
                                  last_epoch)

  def write(self, logs: dict) -> None:
    """One metrics.jsonl line and the TensorBoard scalars (process 0 only)."""
    if not self.primary:
      return
    self.log_file.write(json.dumps(logs) + '\n')
    self.log_file.flush()
    for key, value in logs.items():
      if isinstance(value, float):
        self.writer.scalar(f"{logs['phase']}/{key}", value, logs['step'])
    self.writer.flush()


def _global(batch, sharding):
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def _epoch_logs(state, train_metrics, test_metrics, epoch, phase) -> dict:
  """The epoch's metrics and every scalar ``pcs.stats`` reports for the optimizer."""
  logs = {'phase': phase, 'epoch': epoch, 'step': int(state.step),
          'train_loss': train_metrics['loss'], 'train_accuracy': train_metrics['accuracy'],
          'test_loss': test_metrics['loss'], 'test_accuracy': test_metrics['accuracy'],
          'skipped_steps': train_metrics['skipped_steps']}
  if pcs.find_states(state.opt_state):
    stats = pcs.stats(state.opt_state, state.params)
  else:  # a plain optax optimizer: the weights' own statistics only
    stats = {'l1_norm': pcs.core.l1_norm(state.params, pcs.select(state.params)),
             'sparsity': pcs.sparsity(state.params)}
  logs.update({key: float(value) for key, value in jax.device_get(stats).items()})
  return logs


def run_phase(run: Run, phase: str, state: TrainState, tx, first_epoch: int,
              extra_to_save: dict) -> tuple:
  """Epochs ``first_epoch..`` of one phase, checkpointing after each.

  Returns the state and the last epoch's training metrics (None if no epoch was left).
  """
  config = run.config
  num_epochs = config.num_epochs if phase == 'train' else config.finetune_epochs
  train_metrics = None
  train_step = make_train_step(run.model, tx, run.mesh, run.shardings(tx, state),
                               config.on_nonfinite == 'skip')
  checkpoints = checkpointing.manager(run.workdir, phase)
  bar = tqdm.tqdm(range(first_epoch, num_epochs + 1), desc=f'{config.method} {phase}',
                  unit='epoch', initial=first_epoch - 1, total=num_epochs,
                  disable=not run.primary)
  for epoch in bar:
    sums, bad_step, steps = None, NO_BAD_STEP, 0
    for batch, _ in input_pipeline.epoch_batches(
        run.builder, run.spec, run.spec.train_split, config.batch_size, train=True,
        seed=config.seed, epoch=epoch if phase == 'train' else 10_000 + epoch,
        rows=input_pipeline.process_rows(run.by_batch, config.batch_size)):
      state, metrics = train_step(state, _global(batch, run.by_batch))
      bad_step = jnp.minimum(bad_step, metrics.pop('bad_step'))
      sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
      steps += 1
    sums, bad_step = jax.device_get((sums, bad_step))  # one host round trip per epoch
    if bad_step != NO_BAD_STEP:
      last = checkpoints.latest_step()
      checkpoints.close()
      where = (f'the last good checkpoint is {phase} epoch {last} in '
               f'{checkpoints.directory} (kept; nothing after it was saved)' if last is not None
               else 'no checkpoint of this phase was written yet')
      raise NonFiniteError(
          f'Non-finite loss, gradients or parameters at step {int(bad_step)} ({phase} epoch '
          f'{epoch}); {where}. Lower the learning rate, or rerun with '
          '--config.on_nonfinite=skip to skip such steps.')
    skipped = int(sums.pop('skipped'))
    train_metrics = {k: float(v) / steps for k, v in sums.items()}
    train_metrics['skipped_steps'] = skipped
    logs = _epoch_logs(state, train_metrics, run.evaluate(state, run.spec.test_split), epoch,
                       phase)
    bar.set_postfix(acc=f"{logs['test_accuracy']:.3f}", sparsity=f"{logs['sparsity']:.3f}")
    run.write(logs)
    checkpointing.save(checkpoints, epoch, {'state': state, **extra_to_save})
  checkpoints.close()
  return state, train_metrics


def _setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Checks the config and the workdir, and builds the data, model, mesh and eval step;
  nothing is written before every check has passed."""
  config_checks.validate(config)
  config_path = os.path.join(workdir, 'config.json')
  if os.path.exists(config_path):
    with open(config_path) as f:
      config_checks.check_workdir(config, json.load(f), workdir)
  spec = datasets.DATASETS[config.dataset]
  model = models.create_model(config.model, spec.num_classes)
  devices = jax.devices()[:config.num_devices] if config.num_devices else jax.devices()
  if config.batch_size % len(devices):
    raise ValueError(f'`batch_size` ({config.batch_size}) must be divisible by the '
                     f'{len(devices)} devices.')
  mesh = jax.sharding.Mesh(np.array(devices), ('data',))
  builder = datasets.builder(config.dataset, config.data_dir)
  steps_per_epoch = input_pipeline.steps_per_epoch(builder, spec.train_split, config.batch_size)
  if steps_per_epoch < 1:
    raise ValueError(f'`batch_size` ({config.batch_size}) exceeds the training set.')
  run = Run(config, workdir, spec, builder, model, mesh, make_eval_step(model, mesh),
            steps_per_epoch)
  tf.io.gfile.makedirs(workdir)
  if jax.process_index() == 0 and not os.path.exists(config_path):
    with open(config_path, 'w') as f:
      json.dump(config.to_dict(), f, indent=1)
  return run


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the configured experiment in ``workdir`` and returns (and writes) its results."""
  start_time = time.time()
  run = _setup(config, workdir)
  variables = run.model.init(jax.random.key(config.seed),
                             jnp.zeros((1,) + run.spec.input_shape, jnp.float32), train=False)
  params = variables['params']
  batch_stats = variables.get('batch_stats', {})
  tx = optimizers.make_optimizer(config, run.steps_per_epoch)
  state = run.place(tx, TrainState(jnp.zeros((), jnp.int32), params, batch_stats,
                                   tx.init(params)))
  if run.primary:
    run.writer = tensorboard.SummaryWriter(os.path.join(workdir, 'tensorboard'))

  finetune_sgd = optax.sgd(config.finetune_learning_rate, momentum=config.momentum)
  all_kept = jax.device_put(pcs.pruning.all_kept(params), run.replicated)
  template_tx = pcs.keep_masked(finetune_sgd, all_kept)
  restored, finetune_done = checkpointing.restore(workdir, 'finetune', {
      'state': run.place(template_tx, TrainState(state.step, params, batch_stats,
                                                 template_tx.init(params))),
      'masks': all_kept})
  train_metrics, dense_eval = None, None
  with (open(os.path.join(workdir, 'metrics.jsonl'), 'a') if run.primary
        else contextlib.nullcontext()) as run.log_file:
    if restored is None:  # (re)start or continue training, then prune
      restored_train, done = checkpointing.restore(workdir, 'train', {'state': state})
      if restored_train is not None:
        state = restored_train['state']
        run.say(f'Resuming {workdir} after training epoch {done}.')
      run.truncate_logs('train', done)
      state, train_metrics = run_phase(run, 'train', state, tx, done + 1, {})
      dense_eval = run.evaluate(state, run.spec.test_split)
      # On device, so that sharded parameters of several hosts need no gather to one.
      pruned, masks = jax.jit(lambda p: pcs.prune(p, config.sparsity,
                                                  scope=config.prune_scope))(state.params)
      finetune_tx = pcs.keep_masked(finetune_sgd, masks)
      state = run.place(finetune_tx, TrainState(state.step, pruned, state.batch_stats,
                                                finetune_tx.init(pruned)))
    else:  # interrupted while fine-tuning: the masks come from the checkpoint
      state, masks = restored['state'], restored['masks']
      finetune_tx = pcs.keep_masked(finetune_sgd, masks)
      run.say(f'Resuming {workdir} after fine-tuning epoch {finetune_done}.')
    if config.finetune_epochs:
      run.truncate_logs('finetune', finetune_done)
      state, train_metrics = run_phase(run, 'finetune', state, finetune_tx, finetune_done + 1,
                                       {'masks': masks})

  test = run.evaluate(state, run.spec.test_split)
  train = (run.evaluate(state, run.spec.train_split)
           if config.eval_train or train_metrics is None
           else {'accuracy': train_metrics['accuracy']})
  results = {
      'method': config.method, 'dataset': config.dataset, 'model': config.model,
      'target_sparsity': float(config.sparsity),
      'achieved_sparsity': pcs.summary(state.params).sparsity,
      'test_accuracy': test['accuracy'], 'train_accuracy': train['accuracy'],
      'test_accuracy_before_pruning': dense_eval['accuracy'] if dense_eval else None,
      'num_epochs': config.num_epochs, 'finetune_epochs': config.finetune_epochs,
      'seed': config.seed, 'num_devices': run.mesh.size,
      'params_fingerprint': int(checkpointing.fingerprint(state.params)),
      'wall_time_s': time.time() - start_time, 'config': config.to_dict(),
  }
  if run.primary:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=1)
  return results
