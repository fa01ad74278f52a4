"""Train-step time and memory of every pcs method against the bare optimizer it wraps.

Each (model, inner optimizer) pair is measured interleaved in one run (bare, pilot,
mirror, ..., bare, ...) so that machine noise hits all variants alike; reports medians,
ratios to the bare optimizer, optimizer-state bytes and the compiled step's temporary
bytes (``compiled.memory_analysis()``). Inner optimizers: SGD with momentum 0.9 (the
paper's recipe) and Adam.

  python -m benchmarks.step_overhead [--repeats=20] [--conv_repeats=10]
"""

import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

import pcs
from experiments.vision import models

flags.DEFINE_integer('repeats', 20, 'Timed steps per variant on the MLPs (after warm-up).')
flags.DEFINE_integer('conv_repeats', 10, 'Timed steps per variant on ResNet-20.')
flags.DEFINE_integer('mlp_batch', 256, 'Batch size of the MLPs.')
flags.DEFINE_integer('conv_batch', 128, 'Batch size of ResNet-20 on 32x32x3 inputs.')
FLAGS = flags.FLAGS

# name -> (inner optimizer, its learning rate): what the methods wrap.
INNERS = {
    'sgd-momentum': (lambda lr: optax.sgd(lr, momentum=0.9), 0.1),
    'adam': (optax.adam, 1e-3),
}
METHODS = ('bare', 'pilot', 'mirror', 'spred', 'str', 'cs', 'powerprop', 'l1', 'gmp')
MLP_WIDTHS = (1024, 2048, 4096)


def variants(make, lr: float, names=METHODS) -> dict:
  """Every method around a fresh ``make(lr)`` optimizer, with the decays of the paper's runs."""
  builders = {
      'bare': lambda: make(lr),
      'pilot': lambda: pcs.pilot(make(lr), alpha=1e-4),
      'mirror': lambda: pcs.mirror(make(lr), alpha=1e-4, learning_rate=lr),
      'spred': lambda: pcs.spred(make(lr), weight_decay=1e-4),
      'str': lambda: pcs.soft_threshold(make(lr), weight_decay=1e-4),
      'cs': lambda: pcs.continuous_sparsification(make(lr), l1_strength=1e-4, num_steps=1000),
      'powerprop': lambda: pcs.powerprop(make(lr)),
      'l1': lambda: pcs.l1(make(lr), strength=1e-4, learning_rate=lr),
      'gmp': lambda: pcs.gmp(make(lr), final_sparsity=0.9, begin_step=0, end_step=1000),
  }
  return {name: builders[name]() for name in names}


def _make_step(model, tx, has_batch_stats):
  def loss_fn(params, extra, inputs, labels):
    variables = {'params': params, **extra}
    if has_batch_stats:
      logits, new_extra = model.apply(variables, inputs, mutable=['batch_stats'])
    else:
      logits, new_extra = model.apply(variables, inputs), extra
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, new_extra

  @jax.jit
  def step(params, extra, opt_state, inputs, labels):
    (loss, extra), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, extra, inputs, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), extra, opt_state, loss

  return step


def tree_bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def measure(name, model, input_shape, batch, repeats, inner='sgd-momentum', names=METHODS):
  """One row per variant: median step time and its ratio to bare, state and temp bytes."""
  rng = np.random.default_rng(0)
  inputs = jnp.asarray(rng.normal(size=(batch,) + input_shape), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, size=batch), jnp.int32)
  variables = model.init(jax.random.key(0), inputs)
  params = variables['params']
  extra = {k: v for k, v in variables.items() if k != 'params'}
  runs = {}
  for variant, tx in variants(*INNERS[inner], names).items():
    state = tx.init(params)
    # Compiled once, ahead of time; the executable rejects any input it was not built
    # for, so the timed steps cannot retrace.
    step = _make_step(model, tx, bool(extra)).lower(params, extra, state, inputs,
                                                    labels).compile()
    carry = (params, extra, state)
    for _ in range(2):  # warm up
      *carry, loss = step(*carry, inputs, labels)
      loss.block_until_ready()
    runs[variant] = {'step': step, 'carry': carry, 'times': [], 'state_bytes': tree_bytes(state),
                     'temp_bytes': step.memory_analysis().temp_size_in_bytes}
  for _ in range(repeats):
    for run in runs.values():
      start = time.perf_counter()
      *run['carry'], loss = run['step'](*run['carry'], inputs, labels)
      loss.block_until_ready()
      run['times'].append(time.perf_counter() - start)
  param_bytes = tree_bytes(params)
  bare = statistics.median(runs['bare']['times'])
  rows = []
  for variant, run in runs.items():
    median = statistics.median(run['times'])
    rows.append({'model': name, 'inner': inner, 'variant': variant, 'ms': median * 1e3,
                 'ratio': median / bare, 'state': run['state_bytes'] / param_bytes,
                 'temp_mib': run['temp_bytes'] / 2**20,
                 'extra_temp_mib': (run['temp_bytes'] - runs['bare']['temp_bytes']) / 2**20})
  return rows


def run_all(repeats, conv_repeats):
  """Every method on MLPs of growing width and ResNet-20, around both inner optimizers."""
  rows = []
  for inner in INNERS:
    for width in MLP_WIDTHS:
      rows += measure(f'MLP 784-{width}-{width}-10', models.MLP((width, width, 10)), (784,),
                      FLAGS.mlp_batch, repeats, inner)
    rows += measure('ResNet-20', models.resnet20(), (32, 32, 3), FLAGS.conv_batch, conv_repeats,
                    inner)
  return rows


def markdown(rows) -> str:
  lines = ['| model | inner | variant | median step (ms) | time / bare | optimizer state / params '
           '| step temp (MiB) | temp over bare (MiB) |',
           '|---|---|---|---:|---:|---:|---:|---:|']
  for r in rows:
    lines.append(f"| {r['model']} | {r['inner']} | {r['variant']} | {r['ms']:.2f} | "
                 f"{r['ratio']:.3f}x | {r['state']:.2f}x | {r['temp_mib']:.1f} | "
                 f"{r['extra_temp_mib']:+.1f} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  print(markdown(run_all(FLAGS.repeats, FLAGS.conv_repeats)))


if __name__ == '__main__':
  app.run(main)
