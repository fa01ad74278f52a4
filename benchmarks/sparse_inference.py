"""Latency and kernel memory of sparse inference (pcs.export + pcs.sparse_apply) vs dense.

For each model, sparsity (global magnitude pruning) and batch size, the jitted dense
forward pass and the BCOO and BCSR versions are timed interleaved (dense, bcoo, bcsr,
dense, ...); medians and ratios to dense are reported, with the bytes of the layer
kernels in each format and the crossover: the lowest sparsity at which the faster
sparse format beats dense.

  python -m benchmarks.sparse_inference [--inference_repeats=20]
"""

import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import pcs
from experiments import models

flags.DEFINE_integer('inference_repeats', 20,
                     'Timed calls per variant (fewer for ResNet-20 at batch 256).')
FLAGS = flags.FLAGS

SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
BATCHES = (1, 256)
MODELS = (('mnist1d CNN', lambda: models.CNN1D(), (40, 1)),
          ('MLP 784-1024-1024-10', lambda: models.MLP((1024, 1024, 10)), (784,)),
          ('ResNet-20', lambda: models.resnet20(), (32, 32, 3)))


def _bytes(tree):
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _time(fn, args, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return times


def measure(name, make_model, shape, repeats):
  model = make_model()
  variables = model.init(jax.random.key(0), jnp.zeros((1,) + shape), train=False)
  rows = []
  for sparsity in SPARSITIES:
    params, _ = pcs.prune(variables['params'], sparsity)
    pruned = {**variables, 'params': params}
    kernels = [v for v in jax.tree.leaves(params) if v.ndim >= 2]
    exported = {fmt: pcs.export(params, format=fmt) for fmt in ('bcoo', 'bcsr')}
    dense_fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
    sparse_fn = jax.jit(lambda v, e, x: pcs.sparse_apply(model, v, e, x, train=False))
    for batch in BATCHES:
      x = jnp.asarray(np.random.default_rng(0).normal(size=(batch,) + shape), jnp.float32)
      calls = {'dense': (dense_fn, (pruned, x)),
               'bcoo': (sparse_fn, (pruned, exported['bcoo'], x)),
               'bcsr': (sparse_fn, (pruned, exported['bcsr'], x))}
      reference = calls['dense'][0](*calls['dense'][1])
      for fn, args in calls.values():  # compile, warm up, and check agreement
        np.testing.assert_allclose(fn(*args), reference, rtol=1e-3, atol=1e-3)
      n = max(3, repeats // 5) if (name == 'ResNet-20' and batch > 1) else repeats
      times = {k: [] for k in calls}
      for _ in range(n):  # interleaved
        for key, (fn, args) in calls.items():
          times[key] += _time(fn, args, 1)
      median = {k: statistics.median(v) for k, v in times.items()}
      rows.append({'model': name, 'batch': batch, 'sparsity': sparsity,
                   'dense_ms': median['dense'] * 1e3,
                   'bcoo_ratio': median['bcoo'] / median['dense'],
                   'bcsr_ratio': median['bcsr'] / median['dense'],
                   'dense_kb': _bytes(kernels) / 1024,
                   'bcoo_kb': _bytes(exported['bcoo']) / 1024,
                   'bcsr_kb': _bytes(exported['bcsr']) / 1024})
  return rows


def crossover(rows, model, batch):
  for row in sorted((r for r in rows if r['model'] == model and r['batch'] == batch),
                    key=lambda r: r['sparsity']):
    if min(row['bcoo_ratio'], row['bcsr_ratio']) < 1.0:
      return row['sparsity']
  return None


def markdown(rows) -> str:
  lines = ['| model | batch | sparsity | dense (ms) | BCOO / dense | BCSR / dense | '
           'kernels dense / BCOO / BCSR (KiB) |', '|---|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    lines.append(f"| {r['model']} | {r['batch']} | {r['sparsity']:.0%} | {r['dense_ms']:.3f} | "
                 f"{r['bcoo_ratio']:.2f}x | {r['bcsr_ratio']:.2f}x | {r['dense_kb']:.0f} / "
                 f"{r['bcoo_kb']:.0f} / {r['bcsr_kb']:.0f} |")
  lines += ['', '| model | batch | crossover (sparse faster than dense from) |', '|---|---:|---|']
  for name, _, _ in MODELS:
    for batch in BATCHES:
      found = crossover(rows, name, batch)
      where = f'{found:.0%}' if found is not None else 'never (up to 99%)'
      lines.append(f'| {name} | {batch} | {where} |')
  return '\n'.join(lines)


def run(repeats: int) -> list:
  rows = []
  for name, make_model, shape in MODELS:
    rows += measure(name, make_model, shape, repeats)
  return rows


def main(argv):
  del argv
  print(markdown(run(FLAGS.inference_repeats)))


if __name__ == '__main__':
  app.run(main)
