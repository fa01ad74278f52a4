"""Sparsify a Flax model with any pcs method under any mask schedule, data-parallel, resumable.

A run is a list of phases (:func:`experiments.common.phases.plan`): training with
``config.method`` for ``num_epochs`` (under ``gmp`` with the cubic schedule inside it), for ``imp``
``imp.cycles`` more cycles of prune -> rewind -> retrain with the masks fixed, then
exact magnitude pruning to ``sparsity`` (``pcs.prune``) and optional fine-tuning with
the masks fixed (``finetune_epochs``). With ``validation_fraction > 0`` the last part
of the training split is held out and every evaluation uses it: the test split is not
read. ``init_checkpoint`` starts from the final weights of another run.

One ``jax.jit`` step, the batch sharded over a ``('data',)`` mesh of all devices (of
all hosts after ``jax.distributed.initialize``), parameters and optimizer state
replicated or FSDP-sharded: the same code runs on 1 CPU and on a pod. An orbax checkpoint is written
after every epoch (:mod:`experiments.common.checkpointing`); a rerun with the same workdir
resumes from the last one. The optimizer comes from :mod:`experiments.common.optimizers`.
"""

import contextlib
import dataclasses
import json
import os
import time
from typing import Any, List, Optional, TextIO

from flax.metrics import tensorboard
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import tensorflow as tf
import tqdm

import pcs
from experiments.common import checkpointing
from experiments.common import collapse
from experiments.common import config_checks
from experiments.common import datasets
from experiments.common import failures
from experiments.common import optimizers
from experiments.common import phases
from experiments.common import sharding
from experiments.vision import checks
from experiments.vision import input_pipeline
from experiments.vision import models
from experiments.vision import steps

def splits(config: ml_collections.ConfigDict, builder, spec) -> tuple:
  """(train split, evaluation split, its name). With ``validation_fraction`` f > 0 the
  last f of the training split (in its stored, shuffled order) is the evaluation split
  ``'validation'``, and training uses the rest."""
  if not config.validation_fraction:
    return spec.train_split, spec.test_split, 'test'
  total = input_pipeline.num_examples(builder, spec.train_split)
  cut = total - round(config.validation_fraction * total)
  return f'{spec.train_split}[:{cut}]', f'{spec.train_split}[{cut}:]', 'validation'


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
  train_split: str
  eval_split: str
  eval_name: str
  phases: List[phases.Phase]
  log_file: Optional[TextIO] = None
  writer: Any = None
  collapsed: Optional[str] = None  # where and why the run collapsed first, if it did

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
      sums = steps.add_step(sums, out)
    sums = jax.device_get(sums)
    return {'loss': float(sums['loss'] / sums['count']),
            'accuracy': float(sums['correct'] / sums['count'])}

  @property
  def primary(self) -> bool:
    """Process 0 alone writes results, metrics and TensorBoard events."""
    return jax.process_index() == 0

  def shardings(self, tx, state: steps.TrainState) -> steps.TrainState:
    """Where each part of ``state`` lives: parameters by ``config.param_sharding``, the
    optimizer state following them, the rest replicated."""
    specs = sharding.param_specs(state.params, self.mesh, self.config.param_sharding)
    return steps.TrainState(
        step=self.replicated,
        params=sharding.named(self.mesh, specs),
        batch_stats=jax.tree.map(lambda _: self.replicated, state.batch_stats),
        opt_state=sharding.named(self.mesh, sharding.state_specs(
            tx, state.opt_state, state.params, specs)))

  def place(self, tx, state: steps.TrainState) -> steps.TrainState:
    return jax.device_put(state, self.shardings(tx, state))

  def say(self, message: str) -> None:
    if self.primary:
      print(message)

  def truncate_logs(self, phase: str, last_epoch: int) -> None:
    if self.primary:
      checkpointing.truncate_logs(os.path.join(self.workdir, 'metrics.jsonl'),
                                  [p.name for p in self.phases], phase, last_epoch)

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


def _epoch_logs(state, train_metrics, eval_metrics, eval_name, epoch, phase) -> dict:
  """The epoch's metrics and every scalar ``pcs.stats`` reports for the optimizer."""
  logs = {'phase': phase, 'epoch': epoch, 'step': int(state.step),
          'train_loss': train_metrics['loss'], 'train_accuracy': train_metrics['accuracy'],
          f'{eval_name}_loss': eval_metrics['loss'],
          f'{eval_name}_accuracy': eval_metrics['accuracy'],
          'skipped_steps': train_metrics['skipped_steps']}
  stats = (pcs.stats(state.opt_state, state.params) if pcs.find_states(state.opt_state)
           else pcs.weight_stats(state.params))
  logs.update({key: float(value) for key, value in jax.device_get(stats).items()})
  return logs


def _detector(run: Run, phase: phases.Phase) -> collapse.Detector:
  """The collapse check of ``phase``, with the config keys that would prevent a collapse."""
  config = run.config
  clip = '--config.clip_grad_norm=1.0'
  if phase.optimizer == 'finetune':
    return collapse.Detector(run.spec.num_classes, 0, False,
                             f'Lower --config.finetune_learning_rate '
                             f'({config.finetune_learning_rate}) or clip gradients ({clip}).')
  warmup_key = 'warmup_epochs' if phase.sparsity == 0 else 'imp.warmup_epochs'
  warmup = config.warmup_epochs if phase.sparsity == 0 else config.imp.warmup_epochs
  return collapse.Detector(run.spec.num_classes, warmup, True,
                           f'Lower --config.learning_rate ({config.learning_rate}), lengthen '
                           f'--config.{warmup_key} ({warmup}) or clip gradients ({clip}).')


def run_phase(run: Run, phase: phases.Phase, state: steps.TrainState, tx, first_epoch: int,
              extra_to_save: dict, after_epoch=None) -> tuple:
  """Epochs ``first_epoch..`` of one phase, checkpointing after each, then calling
  ``after_epoch(epoch, state)`` if given.

  Returns the state and the last epoch's training metrics (None if no epoch was left).
  """
  config = run.config
  train_metrics = None
  aims = phase.optimizer == 'method' and optimizers.aims_at_target(config)
  train_step = steps.make_train_step(
      run.model, tx, run.mesh, run.shardings(tx, state), config.on_nonfinite == 'skip',
      pruned_to=(config.sparsity, config.prune_scope) if aims else None)
  checkpoints = checkpointing.manager(run.workdir, phase.name)
  bar = tqdm.tqdm(range(first_epoch, phase.num_epochs + 1),
                  desc=f'{config.method}+{config.schedule} {phase.name}', unit='epoch',
                  initial=first_epoch - 1, total=phase.num_epochs,
                  disable=None if run.primary else True)  # None: off without a terminal
  detector = _detector(run, phase)
  for epoch in bar:
    sums, count = None, 0
    for batch, _ in input_pipeline.epoch_batches(
        run.builder, run.spec, run.train_split, config.batch_size, train=True,
        seed=config.seed, epoch=phase.seed_offset + epoch,
        rows=input_pipeline.process_rows(run.by_batch, config.batch_size)):
      state, metrics = train_step(state, _global(batch, run.by_batch))
      sums = steps.add_step(sums, metrics)
      count += 1
    sums = jax.device_get(sums)  # one host round trip per epoch
    bad_step = sums.pop('bad_step')
    if bad_step != steps.NO_BAD_STEP:
      last = checkpoints.latest_step()
      checkpoints.close()
      where = (f'the last good checkpoint is {phase.name} epoch {last} in '
               f'{checkpoints.directory} (kept; nothing after it was saved)' if last is not None
               else 'no checkpoint of this phase was written yet')
      raise collapse.NonFiniteError(
          f'Non-finite loss, gradients or parameters at step {int(bad_step)} ({phase.name} '
          f'epoch {epoch}); {where}. Lower the learning rate, lengthen the warmup or clip '
          'gradients (--config.clip_grad_norm=1.0), or rerun with '
          '--config.on_nonfinite=skip to skip such steps.')
    skipped = int(sums.pop('skipped'))
    train_metrics = {k: float(v) / count for k, v in sums.items()}
    train_metrics['skipped_steps'] = skipped
    logs = _epoch_logs(state, train_metrics, run.evaluate(state, run.eval_split), run.eval_name,
                       epoch, phase.name)
    bar.set_postfix(acc=f"{logs[f'{run.eval_name}_accuracy']:.3f}",
                    sparsity=f"{logs['sparsity']:.3f}")
    run.write(logs)
    why = detector.check(epoch, train_metrics['loss'], logs[f'{run.eval_name}_accuracy'],
                         run.eval_name)
    if why and run.collapsed is None:
      run.collapsed = f'{phase.name} epoch {epoch}: {why}'
      if config.on_collapse == 'stop':
        checkpoints.close()
        raise collapse.CollapseError(f'The run collapsed in {run.collapsed} '
                                     '(--config.on_collapse=warn goes on.)')
      run.say(f'Warning: the run collapsed in {run.collapsed}')
    checkpointing.save(checkpoints, epoch, {'state': state, **extra_to_save})
    if after_epoch is not None:
      after_epoch(epoch, state)
  checkpoints.close()
  return state, train_metrics


def _setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Checks the config and the workdir, and builds the data, model, mesh and eval step;
  nothing is written before every check has passed."""
  checks.validate(config)
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
  train_split, eval_split, eval_name = splits(config, builder, spec)
  steps_per_epoch = input_pipeline.steps_per_epoch(builder, train_split, config.batch_size)
  if steps_per_epoch < 1:
    raise ValueError(f'`batch_size` ({config.batch_size}) exceeds the training set.')
  run = Run(config, workdir, spec, builder, model, mesh, steps.make_eval_step(model, mesh),
            steps_per_epoch, train_split, eval_split, eval_name, phases.plan(config))
  tf.io.gfile.makedirs(workdir)
  if jax.process_index() == 0 and not os.path.exists(config_path):
    with open(config_path, 'w') as f:
      json.dump(config.to_dict(), f, indent=1)
  return run


def _prune(state: steps.TrainState, sparsity: float, scope: str) -> tuple:
  """``pcs.prune`` on device, so sharded parameters of several hosts need no gather."""
  return jax.jit(lambda p: pcs.prune(p, sparsity, scope=scope))(state.params)


def _initial_weights(run: Run) -> tuple:
  """(params, batch_stats): the model's initialization with ``config.seed``, or the final
  weights of the run in ``config.init_checkpoint``."""
  config = run.config
  variables = run.model.init(jax.random.key(config.seed),
                             jnp.zeros((1,) + run.spec.input_shape, jnp.float32), train=False)
  weights = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  if config.init_checkpoint:
    weights = checkpointing.load_weights(config.init_checkpoint, weights)
  return weights['params'], weights['batch_stats']


class _Evaluations:
  """Evaluations made between phases (before pruning, before fine-tuning), kept in
  ``<workdir>/evaluations.json`` so that a resumed run still reports them."""

  def __init__(self, run: Run):
    self.run = run
    self.path = os.path.join(run.workdir, 'evaluations.json')
    self.values = {}
    if os.path.exists(self.path):
      with open(self.path) as f:
        self.values = json.load(f)

  def record(self, key: str, state: steps.TrainState) -> float:
    """Evaluates ``state``, keeps its accuracy as ``key`` and returns it."""
    self.values[key] = self.run.evaluate(state, self.run.eval_split)['accuracy']
    if self.run.primary:
      with open(self.path, 'w') as f:
        json.dump(self.values, f)
    return self.values[key]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the configured experiment in ``workdir`` and returns (and writes) its results.

  Each phase resumes from its last good checkpoint; the phases before it are skipped,
  and the step into a phase (pruning, rewinding) is recomputed from the checkpoint of
  the phase before, so it is the same after a restart.
  """
  start_time = time.time()
  run = _setup(config, workdir)
  params, batch_stats = _initial_weights(run)
  all_kept = jax.device_put(pcs.pruning.all_kept(params), run.replicated)
  rewinding = config.schedule == 'imp' and config.imp.rewind == 'weights'

  def optimizer(phase: phases.Phase, masks):
    if phase.optimizer == 'finetune':
      return optimizers.finetune_optimizer(config, masks)
    return optimizers.make_optimizer(config, run.steps_per_epoch,
                                     masks if phase.sparsity else None)

  def fresh_state(phase: phases.Phase, step, params, batch_stats, masks) -> tuple:
    tx = optimizer(phase, masks)
    return tx, run.place(tx, steps.TrainState(step, params, batch_stats, tx.init(params)))

  # The newest phase with a good checkpoint, if any.
  current, first_epoch, masks = 0, 1, all_kept
  tx, state = fresh_state(run.phases[0], jnp.zeros((), jnp.int32), params, batch_stats,
                          all_kept)
  for index in reversed(range(len(run.phases))):
    phase = run.phases[index]
    template = state if index == 0 else fresh_state(phase, state.step, params, batch_stats,
                                                    all_kept)[1]
    restored, done = checkpointing.restore(workdir, phase.name,
                                           {'state': template, 'masks': all_kept})
    if restored is not None:
      current, first_epoch, masks = index, done + 1, restored['masks']
      tx, state = optimizer(phase, masks), restored['state']
      run.say(f'Resuming {workdir} after {phase.name} epoch {done}.')
      break

  def save_rewind_point(epoch, state):
    if rewinding and epoch == config.imp.rewind_epoch:
      checkpointing.save_once(workdir, 'rewind', {'params': state.params,
                                                  'batch_stats': state.batch_stats})

  if first_epoch == 1 and current == 0:
    save_rewind_point(0, state)
  evaluations = _Evaluations(run)
  train_metrics = None
  # Both are closed on the way out, an error included: an open TensorBoard writer keeps a
  # TensorFlow thread that can abort the interpreter at exit, and the quality benchmark
  # runs hundreds of runs in one process.
  with (open(os.path.join(workdir, 'metrics.jsonl'), 'a') if run.primary
        else contextlib.nullcontext()) as run.log_file, \
       (contextlib.closing(tensorboard.SummaryWriter(os.path.join(workdir, 'tensorboard')))
        if run.primary else contextlib.nullcontext()) as run.writer:
    try:
      for index in range(current, len(run.phases)):
        phase = run.phases[index]
        if index > current:  # enter the phase from the end of the one before
          if index == 1:
            evaluations.record('before_first_prune', state)
          if (phase.sparsity == config.sparsity
              and run.phases[index - 1].sparsity != config.sparsity):
            evaluations.record('before_final_prune', state)
          pruned, masks = _prune(state, phase.sparsity, config.prune_scope)
          start_params, start_stats = pruned, state.batch_stats
          if rewinding and phase.optimizer == 'method':
            point, _ = checkpointing.restore(workdir, 'rewind', {
                'params': state.params, 'batch_stats': state.batch_stats})
            start_params = pcs.apply_masks(point['params'], masks)
            start_stats = point['batch_stats']
          if phase.optimizer == 'finetune':
            evaluations.record('before_finetune', state.replace(params=pruned))
          tx, state = fresh_state(phase, state.step, start_params, start_stats, masks)
          first_epoch = 1
        run.truncate_logs(phase.name, first_epoch - 1)
        state, metrics = run_phase(run, phase, state, tx, first_epoch, {'masks': masks},
                                   save_rewind_point if phase.name == 'train' else None)
        train_metrics = metrics or train_metrics
    except collapse.CollapseError:
      _write_results(run, {**_identity(config), 'collapsed': run.collapsed,
                           'wall_time_s': time.time() - start_time, 'config': config.to_dict()})
      raise

  if len(run.phases) == 1:
    evaluations.record('before_first_prune', state)
  if run.phases[-1].sparsity != config.sparsity:  # one-shot pruning at the end
    evaluations.record('before_final_prune', state)
    pruned, masks = _prune(state, config.sparsity, config.prune_scope)
    state = state.replace(params=pruned)
  checkpointing.save_once(workdir, 'final', {'params': state.params,
                                             'batch_stats': state.batch_stats})
  accuracy = (run.evaluate(state, run.eval_split)['accuracy']
              if run.phases[-1].optimizer == 'finetune'
              else evaluations.record('before_finetune', state))  # nothing changes after it
  train = (run.evaluate(state, run.train_split)
           if config.eval_train or train_metrics is None
           else {'accuracy': train_metrics['accuracy']})
  name = run.eval_name
  achieved = pcs.summary(state.params).sparsity
  missed = failures.off_target(float(config.sparsity), achieved)
  results = {
      **_identity(config), **({'collapsed': run.collapsed} if run.collapsed else {}),
      **({'off_target': missed} if missed else {}),
      'achieved_sparsity': achieved,
      'eval_split': name, f'{name}_accuracy': accuracy,
      'train_accuracy': train['accuracy'],
      # After the first training phase, before any pruning (for IMP: the dense model).
      f'{name}_accuracy_before_first_prune': evaluations.values.get('before_first_prune'),
      # Just before the prune to the final sparsity (IMP: at the end of the second-to-last
      # cycle; one-shot: the trained model; GMP: its trained model, already that sparse).
      f'{name}_accuracy_before_final_prune': evaluations.values.get('before_final_prune'),
      f'{name}_accuracy_before_finetune': evaluations.values.get('before_finetune'),
      'num_epochs': config.num_epochs, 'finetune_epochs': config.finetune_epochs,
      'num_devices': run.mesh.size,
      'params_fingerprint': int(checkpointing.fingerprint(state.params)),
      'wall_time_s': time.time() - start_time, 'config': config.to_dict(),
  }
  _write_results(run, results)
  return results


def _identity(config: ml_collections.ConfigDict) -> dict:
  return {'method': config.method, 'schedule': config.schedule, 'dataset': config.dataset,
          'model': config.model, 'target_sparsity': float(config.sparsity), 'seed': config.seed}


def _write_results(run: Run, results: dict) -> None:
  """``<workdir>/results.json`` (process 0). A run that collapsed (``collapsed``: where
  and why) and stopped has no accuracy in it."""
  if run.primary:
    with open(os.path.join(run.workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=1)
