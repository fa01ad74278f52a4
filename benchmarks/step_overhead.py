"""Train-step time and optimizer-state memory of pcs.pilot / pcs.mirror vs the bare optimizer.

Measured interleaved in one run (bare, pilot, mirror, bare, ...) so that machine
noise hits all variants alike; reports medians and ratios to the bare optimizer
(SGD, momentum 0.9, as in the paper's recipe). Targets: pilot <= 1.10x on the MLP,
<= 1.02x on the conv net; mirror's state equal to the bare optimizer's.

  python -m benchmarks.step_overhead [--repeats=20] [--conv_batch=128]
"""

import platform
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

import pcs
from experiments import models

flags.DEFINE_integer('repeats', 20, 'Timed steps per variant (after warm-up).')
flags.DEFINE_integer('mlp_batch', 256, 'Batch size of the MLP (784-1024-1024-10).')
flags.DEFINE_integer('conv_batch', 128, 'Batch size of ResNet-20 on 32x32x3 inputs.')
FLAGS = flags.FLAGS


def _variants(lr=0.1, names=None):
  inner = lambda: optax.sgd(lr, momentum=0.9)
  variants = {
      'bare': lambda: inner(),
      'pilot': lambda: pcs.pilot(inner(), alpha=1e-4),
      'mirror': lambda: pcs.mirror(inner(), alpha=1e-4, learning_rate=lr),
      'spred': lambda: pcs.spred(inner(), weight_decay=1e-4),
      'str': lambda: pcs.soft_threshold(inner(), weight_decay=1e-4),
      'cs': lambda: pcs.continuous_sparsification(inner(), l1_strength=1e-4, num_steps=1000),
      'powerprop': lambda: pcs.powerprop(inner()),
      'l1': lambda: pcs.l1(inner(), strength=1e-4, learning_rate=lr),
      'gmp': lambda: pcs.gmp(inner(), final_sparsity=0.9, begin_step=0, end_step=1000),
  }
  return {k: v() for k, v in variants.items() if names is None or k in names}


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


def _bytes(tree):
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def measure(name, model, input_shape, batch, repeats, names=None):
  """Median step time and state bytes of each variant, measured interleaved."""
  rng = np.random.default_rng(0)
  inputs = jnp.asarray(rng.normal(size=(batch,) + input_shape), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, size=batch), jnp.int32)
  variables = model.init(jax.random.key(0), inputs)
  params = variables['params']
  extra = {k: v for k, v in variables.items() if k != 'params'}
  runs = {}
  for variant, tx in _variants(names=names).items():
    state = tx.init(params)
    step = _make_step(model, tx, bool(extra))
    carry = (params, extra, state)
    for _ in range(2):  # compile and warm up
      *carry, loss = step(*carry, inputs, labels)
      loss.block_until_ready()
    runs[variant] = {'step': step, 'carry': carry, 'times': [],
                     'state_bytes': _bytes(state)}
  for _ in range(repeats):
    for run in runs.values():
      start = time.perf_counter()
      *run['carry'], loss = run['step'](*run['carry'], inputs, labels)
      loss.block_until_ready()
      run['times'].append(time.perf_counter() - start)
  param_bytes = _bytes(params)
  bare = statistics.median(runs['bare']['times'])
  rows = []
  for variant, run in runs.items():
    median = statistics.median(run['times'])
    rows.append((name, variant, median * 1e3, median / bare,
                 run['state_bytes'] / param_bytes))
    assert run['step']._cache_size() == 1, 'retraced'
  return rows


def run_all(repeats):
  """Every method on the MLP and ResNet-20, and pilot/mirror on MLPs of growing width."""
  rows = measure('MLP 784-1024-1024-10', models.MLP((1024, 1024, 10)), (784,),
                 FLAGS.mlp_batch, repeats)
  rows += measure('ResNet-20', models.resnet20(), (32, 32, 3), FLAGS.conv_batch, repeats)
  for width in (256, 2048, 4096):
    rows += measure(f'MLP 784-{width}-{width}-10', models.MLP((width, width, 10)), (784,),
                    FLAGS.mlp_batch, repeats, names=('bare', 'pilot', 'mirror'))
  return rows


def markdown(rows) -> str:
  lines = ['| model | variant | median step (ms) | time / bare | optimizer state / params |',
           '|---|---|---:|---:|---:|']
  for name, variant, ms, ratio, state in rows:
    lines.append(f'| {name} | {variant} | {ms:.2f} | {ratio:.3f}x | {state:.2f}x |')
  return '\n'.join(lines)


def main(argv):
  del argv
  print(f'# pcs step overhead: {platform.processor() or platform.machine()}, '
        f'{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}, '
        f'optax {optax.__version__}, {time.strftime("%Y-%m-%d")}')
  print(markdown(run_all(FLAGS.repeats)))


if __name__ == '__main__':
  app.run(main)
