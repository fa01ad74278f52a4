"""Train the character LM with any pcs method under any mask schedule, in Flax NNX.

The run's phases are the vision binary's (:func:`experiments.common.phases.plan`): training with
``config.method`` (under ``gmp``, its cubic schedule inside it), for ``imp``
``imp.cycles`` cycles of prune -> rewind -> retrain with the masks fixed, exact
layerwise magnitude pruning of the kernels to ``sparsity`` (``pcs.prune(...,
where=pcs.kernels)``: every Linear / LinearGeneral kernel, attention projections
included, not the embeddings, biases or norms), and optional fine-tuning with the masks
fixed (``pcs.keep_masked``). The optimizer is :func:`experiments.common.optimizers.make_optimizer`
in ``nnx.Optimizer(model, tx, wrt=nnx.Param)``, stepped by an ``nnx.jit`` train step as
Flax's NNX examples write it.

The metric is the mean next-byte cross-entropy L (nats) on ``eval_split``, reported with
bits per byte L / ln 2 (bits per character: the text is ASCII but for 17 bytes) and
perplexity exp(L). A non-finite loss stops the run (or is skipped, ``on_nonfinite``);
a jumped loss or next-byte accuracy at chance after the warmup is a collapse
(:mod:`experiments.common.collapse`, 256 classes).

Writes ``<workdir>/config.json``, ``metrics.jsonl`` (one line per epoch, with
``pcs.stats``), ``results.json`` and the final weights (orbax, ``checkpoints/final``:
:func:`load_model` reads them back). A finished run's workdir is not trained again.
"""

import functools
import json
import math
import os
import time
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

import pcs
from experiments.charlm import input_pipeline
from experiments.charlm import models
from experiments.common import checkpointing
from experiments.common import collapse
from experiments.common import config_checks
from experiments.common import optimizers
from experiments.common import phases

EVAL_SPLITS = ('validation', 'test')
SAMPLE_PROMPT = b'def '


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the key and what is allowed, for the first bad value: the
  data, the model and the inner optimizer here, the training keys by
  :func:`experiments.common.config_checks.validate_training`."""
  config_checks.choice(config, 'dataset', (input_pipeline.NAME,))
  config_checks.choice(config, 'eval_split', EVAL_SPLITS)
  config_checks.choice(config, 'optimizer', optimizers.INNER_OPTIMIZERS)
  for key, minimum in (('context', 1), ('width', 1), ('depth', 1), ('num_heads', 1),
                       ('mlp_width', 1), ('steps_per_epoch', 0), ('eval_bytes', 0),
                       ('sample_bytes', 0)):
    config_checks.integer(config, key, minimum)
  config_checks.need(config.width % config.num_heads == 0,
                     f'config.width ({config.width}) must be divisible by config.num_heads '
                     f'({config.num_heads}).')
  config_checks.validate_training(config)


def steps_per_epoch(config: ml_collections.ConfigDict, train_text: np.ndarray) -> int:
  """``config.steps_per_epoch``, or (0) as many steps as one pass over the training text."""
  return config.steps_per_epoch or max(1, len(train_text) // (config.batch_size * config.context))


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _cross_entropy(model, batch):
  logits = model(batch['input'])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch['target']), logits


@functools.partial(nnx.jit, static_argnames=('skip_nonfinite', 'pruned_to'))
def train_step(model, optimizer, batch, skip_nonfinite: bool = False,
               pruned_to: Optional[Tuple[float, str]] = None):
  """One step; ``bad`` is 1 if the loss or gradients were non-finite (with
  ``skip_nonfinite``, where such steps are skipped: if the parameters became non-finite).
  The next-byte accuracy goes to the optimizer (Algorithm 1's alpha controller reads it);
  with ``pruned_to=(sparsity, scope)`` so does that of the model with its kernels pruned
  so, as ``pruned_accuracy=`` (``pcs.target_alpha_controller`` reads it)."""
  def loss_fn(model):
    losses, logits = _cross_entropy(model, batch)
    return losses.mean(), logits

  (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['target'])
  extra = {}
  if pruned_to is not None:
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    pruned, _ = pcs.prune(params, pruned_to[0], scope=pruned_to[1], where=pcs.kernels)
    _, pruned_logits = _cross_entropy(nnx.merge(graphdef, pruned, rest), batch)
    extra['pruned_accuracy'] = jnp.mean(jnp.argmax(pruned_logits, -1) == batch['target'])
  optimizer.update(model, grads, accuracy=accuracy, **extra)
  finite = jnp.isfinite(loss) & _all_finite(grads)
  ok = _all_finite(nnx.state(model, nnx.Param)) if skip_nonfinite else finite
  return {'loss': loss, 'accuracy': accuracy, 'skipped': (~finite).astype(jnp.int32),
          'bad': (~ok).astype(jnp.int32)}


@nnx.jit
def _eval_step(model, batch, mask):
  losses, logits = _cross_entropy(model, batch)
  weights = jnp.broadcast_to(mask[:, None], losses.shape)
  return {'loss': jnp.sum(losses * weights),
          'correct': jnp.sum((jnp.argmax(logits, -1) == batch['target']) * weights),
          'count': jnp.sum(weights)}


def evaluate(model: models.CharLM, text: np.ndarray, batch_size: int) -> dict:
  """Mean next-byte ``loss`` (nats), ``bits_per_byte``, ``perplexity`` and ``accuracy``
  over ``text`` (:func:`input_pipeline.eval_batches`)."""
  sums = None
  for batch, mask in input_pipeline.eval_batches(text, context=model.context,
                                                 batch_size=batch_size):
    out = _eval_step(model, batch, mask)
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  loss = float(sums['loss'] / sums['count'])
  return {'loss': loss, 'bits_per_byte': loss / math.log(2),
          'perplexity': math.exp(min(loss, 700.0)),
          'accuracy': float(sums['correct'] / sums['count'])}


def prune(model: models.CharLM, sparsity: float, scope: str = 'layerwise'):
  """Zeroes the round(s n) smallest-magnitude kernel weights (``scope``: per kernel, or
  over all kernels); returns the masks."""
  pruned, masks = pcs.prune(nnx.state(model, nnx.Param), sparsity, scope=scope,
                            where=pcs.kernels)
  nnx.update(model, pruned)
  return masks


def kernel_sparsity(model: models.CharLM) -> float:
  """The fraction of exact zeros over the kernels (what ``pcs.prune`` prunes)."""
  return float(pcs.sparsity(nnx.state(model, nnx.Param), where=pcs.kernels))


def save_model(model: models.CharLM, workdir: str) -> None:
  """The weights as ``<workdir>/checkpoints/final`` (orbax, fingerprinted)."""
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  checkpointing.save_once(workdir, 'final', {'params': params})


def load_model(config: ml_collections.ConfigDict, workdir: str) -> models.CharLM:
  """The model of ``config`` with the final weights of the finished run in ``workdir``."""
  model = models.create_model(config, config.seed)
  state = nnx.state(model, nnx.Param)
  restored = checkpointing.load_weights(workdir, {'params': nnx.to_pure_dict(state)})
  nnx.replace_by_pure_dict(state, restored['params'])
  nnx.update(model, state)
  return model


class _Run:
  """What the phases of one run share: config, data, step counts and outputs."""

  def __init__(self, config, data, log):
    self.config, self.data, self.log = config, data, log
    self.steps = steps_per_epoch(config, data['train'])
    self.eval_text = (data[config.eval_split][:config.eval_bytes] if config.eval_bytes
                      else data[config.eval_split])
    self.collapsed: Optional[str] = None

  def evaluate(self, model) -> dict:
    return evaluate(model, self.eval_text, self.config.eval_batch_size)

  def detector(self, phase) -> collapse.Detector:
    config, clip = self.config, '--config.clip_grad_norm=1.0'
    if phase.optimizer == 'finetune':
      return collapse.Detector(models.VOCAB, 0, False,
                               f'Lower --config.finetune_learning_rate '
                               f'({config.finetune_learning_rate}) or clip gradients ({clip}).')
    warmup_key = 'warmup_epochs' if phase.sparsity == 0 else 'imp.warmup_epochs'
    warmup = config.warmup_epochs if phase.sparsity == 0 else config.imp.warmup_epochs
    return collapse.Detector(models.VOCAB, warmup, True,
                             f'Lower --config.learning_rate ({config.learning_rate}), lengthen '
                             f'--config.{warmup_key} ({warmup}) or clip gradients ({clip}).')

  def run_phase(self, model, optimizer, phase, after_epoch=None) -> dict:
    """The epochs of ``phase``; returns the last epoch's mean training metrics."""
    config, detector, split = self.config, self.detector(phase), self.config.eval_split
    aims = phase.optimizer == 'method' and optimizers.aims_at_target(config)
    pruned_to = (config.sparsity, config.prune_scope) if aims else None
    metrics = {}
    for epoch in range(1, phase.num_epochs + 1):
      sums = None
      for batch in input_pipeline.train_batches(
          self.data['train'], context=config.context, batch_size=config.batch_size,
          steps=self.steps, seed=config.seed, epoch=phase.seed_offset + epoch):
        out = train_step(model, optimizer, batch, config.on_nonfinite == 'skip', pruned_to)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
      sums = jax.device_get(sums)
      if sums['bad']:
        raise collapse.NonFiniteError(
            f'Non-finite loss, gradients or parameters in {phase.name} epoch {epoch}. Lower '
            'the learning rate, lengthen the warmup or clip gradients '
            '(--config.clip_grad_norm=1.0), or rerun with --config.on_nonfinite=skip.')
      metrics = {'loss': float(sums['loss']) / self.steps,
                 'accuracy': float(sums['accuracy']) / self.steps}
      evaluation = self.evaluate(model)
      params = nnx.state(model, nnx.Param)
      stats = (pcs.stats(optimizer.opt_state, params) if pcs.find_states(optimizer.opt_state)
               else pcs.weight_stats(params))
      logs = {'phase': phase.name, 'epoch': epoch, 'step': int(optimizer.step[...]),
              'train_loss': metrics['loss'], 'train_accuracy': metrics['accuracy'],
              'skipped_steps': int(sums['skipped']),
              **{f'{split}_{key}': value for key, value in evaluation.items()},
              **{key: float(value) for key, value in jax.device_get(stats).items()}}
      self.log.write(json.dumps(logs) + '\n')
      self.log.flush()
      print(f"{phase.name} epoch {epoch}: train loss {metrics['loss']:.3f}, {split} "
            f"{evaluation['bits_per_byte']:.3f} bits/byte, sparsity {logs['sparsity']:.3f}",
            flush=True)
      why = detector.check(epoch, metrics['loss'], evaluation['accuracy'], split)
      if why and self.collapsed is None:
        self.collapsed = f'{phase.name} epoch {epoch}: {why}'
        if config.on_collapse == 'stop':
          raise collapse.CollapseError(
              f'The run collapsed in {self.collapsed} (--config.on_collapse=warn goes on.)')
        print(f'Warning: the run collapsed in {self.collapsed}', flush=True)
      if after_epoch is not None:
        after_epoch(epoch)
    return metrics


def _identity(config) -> dict:
  return {'method': config.method, 'schedule': config.schedule, 'dataset': config.dataset,
          'model': 'charlm', 'target_sparsity': float(config.sparsity), 'seed': config.seed}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       model: Optional[models.CharLM] = None) -> dict:
  """Runs the configured experiment in ``workdir``; returns (and writes) its results.

  ``model``: start from its weights (it is trained in place) instead of a fresh model
  initialized with ``config.seed``.
  """
  start_time = time.time()
  validate(config)
  config_path = os.path.join(workdir, 'config.json')
  results_path = os.path.join(workdir, 'results.json')
  if os.path.exists(config_path):
    with open(config_path) as f:
      config_checks.check_workdir(config, json.load(f), workdir)
    if os.path.exists(results_path):
      with open(results_path) as f:
        return json.load(f)
  data = input_pipeline.load(config.data_dir)
  os.makedirs(workdir, exist_ok=True)
  with open(config_path, 'w') as f:
    json.dump(config.to_dict(), f, indent=1)
  model = model if model is not None else models.create_model(config, config.seed)
  run_phases = phases.plan(config)
  split, evaluations, metrics = config.eval_split, {}, {}
  rewind = {}
  rewinding = config.schedule == 'imp' and config.imp.rewind == 'weights'

  def save_rewind_point(epoch):
    if rewinding and epoch == config.imp.rewind_epoch:
      rewind['params'] = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))

  save_rewind_point(0)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as log:
    run = _Run(config, data, log)
    try:
      masks = None
      for index, phase in enumerate(run_phases):
        if index == 1:
          evaluations['before_first_prune'] = run.evaluate(model)['loss']
        if index:
          if phase.sparsity == config.sparsity != run_phases[index - 1].sparsity:
            evaluations['before_final_prune'] = run.evaluate(model)['loss']
          masks = prune(model, phase.sparsity, config.prune_scope)
          if rewinding and phase.optimizer == 'method':
            nnx.update(model, pcs.apply_masks(rewind['params'], masks))
          if phase.optimizer == 'finetune':
            evaluations['before_finetune'] = run.evaluate(model)['loss']
        tx = (optimizers.finetune_optimizer(config, masks) if phase.optimizer == 'finetune'
              else optimizers.make_optimizer(config, run.steps, masks))
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        metrics = run.run_phase(model, optimizer, phase,
                                save_rewind_point if phase.name == 'train' else None) or metrics
    except collapse.CollapseError:
      _write(results_path, {**_identity(config), 'collapsed': run.collapsed,
                            'wall_time_s': time.time() - start_time,
                            'config': config.to_dict()})
      raise
  if run_phases[-1].sparsity != config.sparsity:  # one-shot pruning at the end
    evaluations['before_final_prune'] = run.evaluate(model)['loss']
    evaluations.setdefault('before_first_prune', evaluations['before_final_prune'])
    prune(model, config.sparsity, config.prune_scope)
  final = run.evaluate(model)
  for key in ('before_first_prune', 'before_finetune'):
    evaluations.setdefault(key, final['loss'])
  save_model(model, workdir)
  sample_bytes = min(config.sample_bytes, config.context - len(SAMPLE_PROMPT))
  results = {
      **_identity(config), **({'collapsed': run.collapsed} if run.collapsed else {}),
      'achieved_sparsity': kernel_sparsity(model), 'eval_split': split,
      **{f'{split}_{key}': value for key, value in final.items()},
      'train_loss': metrics.get('loss'),
      # After the first training phase, before any pruning (for IMP: the dense model);
      # just before the prune to the final sparsity; just before fine-tuning.
      **{f'{split}_loss_{key}': value for key, value in evaluations.items()},
      'sample': (SAMPLE_PROMPT + models.generate(model, SAMPLE_PROMPT, sample_bytes)).decode(
          'utf-8', 'replace') if sample_bytes > 0 else '',
      'num_epochs': config.num_epochs, 'finetune_epochs': config.finetune_epochs,
      'steps_per_epoch': run.steps,
      'params_fingerprint': int(checkpointing.fingerprint(nnx.state(model, nnx.Param))),
      'wall_time_s': time.time() - start_time, 'config': config.to_dict(),
  }
  _write(results_path, results)
  return results


def _write(path: str, results: dict) -> None:
  with open(path, 'w') as f:
    json.dump(results, f, indent=1)
