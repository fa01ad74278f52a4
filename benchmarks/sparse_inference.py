"""Sparse inference against dense and against the CSR products a user would pick instead.

Two parts, each timed interleaved (variant A, B, C, A, B, C, ...) with medians reported:

* **One layer** (4096 x 4096, magnitude-pruned to each sparsity, or 2:4): XLA's dense
  dot, the pcs kernel (CSR, or N:M for 2:4), jax's BCSR (``jax.experimental.sparse``),
  scipy.sparse CSR (single-threaded) and torch.sparse CSR (the CPU build, when installed:
  ``pip install 'pcs[bench]'``). At batch 1 the memory-traffic bound is given too: the
  bytes the CSR product must read (values, indices, row pointers, x) over the bandwidth
  the dense product reaches (its 4 bytes per weight over its time).
* **Convolutions**: every distinct Conv layer of ResNet-20 and the 1-D CNN at its real
  input, XLA's dense convolution against the two ways pcs can take a sparse one: im2col
  (strided slices stacked into a patch matrix, then the CSR product) and the direct
  convolution on the padded input (the path pcs takes). This is the measurement behind
  that choice.
* **Fused ReLU**: the 4096 layer at 95% with ReLU fused into the kernel's store against
  ReLU applied by XLA after it, which is what the adapters do (a Flax model applies its
  activation outside the layer).
* **Whole models** (global magnitude pruning): the jitted dense model against
  ``pcs.export(..., model=, inputs=)`` (the per-layer measured choice at that batch) and
  ``pcs.sparse_apply``; for the MLPs also scipy CSR layer by layer.

  python -m benchmarks.sparse_inference [--inference_repeats=20]
"""

import functools
import operator
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse
from absl import app
from absl import flags

import pcs
from experiments import models

flags.DEFINE_integer('inference_repeats', 20, 'Timed calls per variant.')
FLAGS = flags.FLAGS

SPARSITIES = (0.8, 0.9, 0.95, 0.98, 0.99)
BATCHES = (1, 16, 256)
LAYER = 4096
MODELS = (('MLP 784-4096-4096-10', lambda: models.MLP((4096, 4096, 10)), (784,), BATCHES),
          ('MLP 784-1024-1024-10', lambda: models.MLP((1024, 1024, 10)), (784,), BATCHES),
          ('ResNet-20', models.resnet20, (32, 32, 3), (1, 16)),
          ('mnist1d CNN', models.CNN1D, (40, 1), BATCHES))


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  torch.set_num_threads(2)
  return torch


def _jax_call(fn, *args):
  return jax.block_until_ready(fn(*args))


def _medians(calls, repeats):
  """Interleaved timing of ``{name: thunk}``; medians in ms."""
  for thunk in calls.values():
    thunk()
  times = {k: [] for k in calls}
  for _ in range(repeats):
    for key, thunk in calls.items():
      start = time.perf_counter()
      thunk()
      times[key].append(time.perf_counter() - start)
  return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def _pruned_layer(rng, sparsity):
  kernel = rng.normal(size=(LAYER, LAYER)).astype(np.float32)
  if sparsity == '2:4':
    groups = kernel.T.reshape(LAYER, -1, 4)
    np.put_along_axis(groups, np.argsort(np.abs(groups), axis=-1)[..., :2], 0.0, axis=-1)
    return groups.reshape(LAYER, LAYER).T.copy()
  kernel[np.abs(kernel) < np.quantile(np.abs(kernel), sparsity)] = 0.0
  return kernel


def layer_rows(repeats):
  """One 4096 x 4096 layer at every sparsity and batch: ms per product for each peer."""
  rng, torch, rows = np.random.default_rng(0), _torch(), []
  sparse = pcs.sparse
  bcsr_module = __import__('jax.experimental.sparse', fromlist=['BCSR'])
  for sparsity in SPARSITIES + ('2:4',):
    kernel = _pruned_layer(rng, sparsity)
    layer = sparse.nm(kernel, 2, 4) if sparsity == '2:4' else sparse.csr(kernel)
    dense_w = jnp.asarray(kernel)
    bcsr = bcsr_module.BCSR.fromdense(dense_w.T)
    csr_t = scipy.sparse.csr_matrix(kernel.T)
    for batch in BATCHES:
      x = rng.normal(size=(batch, LAYER)).astype(np.float32)
      xj = jnp.asarray(x)
      ours = jax.jit(sparse.dense)
      dense = jax.jit(lambda x, w: x @ w)
      bcsr_fn = jax.jit(lambda x, m: (m @ x.T).T)
      calls = {'dense': functools.partial(_jax_call, dense, xj, dense_w),
               'pcs': functools.partial(_jax_call, ours, xj, layer),
               'scipy': functools.partial(operator.matmul, csr_t, x.T)}
      if batch < 256:  # jax's BCSR takes seconds per call at batch 256
        calls['jax BCSR'] = functools.partial(_jax_call, bcsr_fn, xj, bcsr)
      if torch is not None:
        tx = torch.from_numpy(x.T.copy())
        tdense = torch.from_numpy(kernel.T.copy())
        calls['torch CSR'] = functools.partial(operator.matmul, tdense.to_sparse_csr(), tx)
        calls['torch dense'] = functools.partial(operator.matmul, tdense, tx)
      np.testing.assert_allclose(ours(xj, layer), x @ kernel, rtol=1e-3, atol=1e-3)
      ms = _medians(calls, repeats if batch < 256 else max(3, repeats // 4))
      row = {'sparsity': sparsity, 'batch': batch, **ms, 'pcs_kb': layer.nbytes / 1024}
      if batch == 1:
        bandwidth = kernel.nbytes / (ms['dense'] * 1e-3)  # bytes/s the dense GEMV reaches
        moved = layer.nbytes + x.nbytes + 4 * LAYER
        row['bound'] = 1e3 * moved / bandwidth
      rows.append(row)
  return rows


CONV_SPARSITIES = (0.9, 0.95, 0.99)


def _conv_layers():
  """``(model, kernel shape, input shape, options)`` of every distinct Conv layer."""
  seen = {}
  for name, make_model, shape, _ in MODELS:
    model = make_model()
    recorded = pcs.sparse.linen.layer_inputs(model, jnp.zeros((1,) + shape), train=False)
    params = jax.eval_shape(lambda m=model, s=shape: m.init(
        jax.random.key(0), jnp.zeros((1,) + s), train=False))['params']
    for path, layer_input in recorded.items():
      if layer_input.conv_options is None:
        continue
      leaf = params
      for key in path + ('kernel',):
        leaf = leaf[key]
      options = dict(layer_input.conv_options)
      key = (tuple(leaf.shape), layer_input.shape[1:], repr(sorted(options.items())))
      seen.setdefault(key, (name, tuple(leaf.shape), layer_input.shape[1:], options))
  return list(seen.values())


def conv_rows(repeats):
  """Each Conv layer: dense, im2col and direct sparse convolutions, batches 1 and 16."""
  rng, rows = np.random.default_rng(0), []
  layers = pcs.sparse._layers  # pylint: disable=protected-access
  for name, kernel_shape, in_shape, options in _conv_layers():
    window = kernel_shape[:-2]
    strides = options['strides']
    strides = (strides,) * len(window) if isinstance(strides, int) else tuple(strides)
    for sparsity in CONV_SPARSITIES:
      kernel = rng.normal(size=kernel_shape).astype(np.float32)
      kernel[np.abs(kernel) < np.quantile(np.abs(kernel), sparsity)] = 0.0
      layer = pcs.sparse.csr(kernel)
      for batch in (1, 16):
        x = jnp.asarray(rng.normal(size=(batch,) + in_shape), jnp.float32)
        pads = [tuple(p) for p in layers.conv_pads(options['padding'], in_shape[:-1], window,
                                                   strides)]
        dims = 'HW'[-len(window):]
        numbers = ('N' + dims + 'C', dims + 'IO', 'N' + dims + 'C')
        dense = jax.jit(lambda x, k, p=pads, s=strides, n=numbers: jax.lax.conv_general_dilated(
            x, k, s, p, dimension_numbers=n))
        im2col = jax.jit(lambda x, w, p=pads, s=strides, win=window: layers._im2col(  # pylint: disable=protected-access
            x, w, None, win, s, p, None))
        direct = jax.jit(lambda x, w, p=pads, s=strides, win=window: layers._direct(  # pylint: disable=protected-access
            x, w, None, win, s, p, None))
        expected = dense(x, jnp.asarray(kernel))
        for fn in (im2col, direct):
          np.testing.assert_allclose(fn(x, layer), expected, rtol=1e-3, atol=1e-3)
        calls = {'dense': functools.partial(_jax_call, dense, x, jnp.asarray(kernel)),
                 'im2col': functools.partial(_jax_call, im2col, x, layer),
                 'direct': functools.partial(_jax_call, direct, x, layer)}
        hlo = jax.jit(functools.partial(pcs.sparse.conv, **options)).lower(x, layer).as_text()
        rows.append({'model': name, 'kernel': kernel_shape, 'input': (batch,) + in_shape,
                     'strides': strides, 'sparsity': sparsity, 'batch': batch,
                     'taken': 'direct' if 'pcs_csr_conv' in hlo else 'im2col',
                     **_medians(calls, repeats)})
  return rows


def relu_rows(repeats):
  """The 4096 layer at 95%: ReLU fused into the kernel against ReLU after it."""
  rng, rows = np.random.default_rng(1), []
  layer = pcs.sparse.csr(_pruned_layer(rng, 0.95))
  fused = jax.jit(functools.partial(pcs.sparse.dense, activation='relu'))
  after = jax.jit(lambda x, w: jax.nn.relu(pcs.sparse.dense(x, w)))
  for batch in BATCHES:
    x = jnp.asarray(rng.normal(size=(batch, LAYER)), jnp.float32)
    np.testing.assert_allclose(fused(x, layer), after(x, layer), rtol=1e-5, atol=1e-5)
    ms = _medians({'fused': functools.partial(_jax_call, fused, x, layer),
                   'after': functools.partial(_jax_call, after, x, layer)},
                  repeats if batch < 256 else max(3, repeats // 4))
    rows.append({'batch': batch, **ms})
  return rows


def _scipy_mlp(params):
  layers = [(scipy.sparse.csr_matrix(np.asarray(params[f'Dense_{i}']['kernel']).T),
             np.asarray(params[f'Dense_{i}']['bias'])[:, None]) for i in range(len(params))]

  def forward(x_t):
    for i, (w, b) in enumerate(layers):
      x_t = w @ x_t + b
      if i < len(layers) - 1:
        x_t = np.maximum(x_t, 0.0)
    return x_t
  return forward


def _apply(model, variables, x):
  return model.apply(variables, x, train=False)


def _sparse_apply(model, variables, exported, x):
  return pcs.sparse_apply(model, variables, exported, x, train=False)


def model_rows(repeats):
  """Whole models: dense jitted, pcs (measured per-layer choice), scipy CSR for MLPs."""
  rows = []
  for name, make_model, shape, batches in MODELS:
    model = make_model()
    variables = model.init(jax.random.key(0), jnp.zeros((1,) + shape), train=False)
    dense_fn = jax.jit(functools.partial(_apply, model))
    sparse_fn = jax.jit(functools.partial(_sparse_apply, model))
    for sparsity in SPARSITIES:
      params, _ = pcs.prune(variables['params'], sparsity)
      pruned = {**variables, 'params': params}
      for batch in batches:
        x = jnp.asarray(np.random.default_rng(0).normal(size=(batch,) + shape), jnp.float32)
        exported = pcs.export(params, model=model, inputs=x, apply_kwargs={'train': False})
        np.testing.assert_allclose(sparse_fn(pruned, exported, x), dense_fn(pruned, x),
                                   rtol=1e-3, atol=1e-3)
        calls = {'dense': functools.partial(_jax_call, dense_fn, pruned, x),
                 'pcs': functools.partial(_jax_call, sparse_fn, pruned, exported, x)}
        if name.startswith('MLP'):
          calls['scipy'] = functools.partial(_scipy_mlp(params), np.asarray(x).T.copy())
        ms = _medians(calls, repeats if batch < 256 else max(3, repeats // 4))
        rows.append({'model': name, 'sparsity': sparsity, 'batch': batch, **ms,
                     'sparse_layers': len(exported), 'layers': len(exported.choices)})
  return rows


def _ratio(row, key):
  return f"{row['dense'] / row[key]:.2f}x" if key in row else '-'


def _faster(row):
  return 'direct' if row['direct'] < row['im2col'] else 'im2col'


def conv_markdown(conv) -> str:
  """The convolution table: im2col and direct against dense, and which of them won."""
  lines = ['Convolutions: speed-up over XLA\'s dense convolution of the two sparse methods, '
           'and the one `pcs.sparse.conv` takes (direct from '
           f'{pcs.sparse._layers.MIN_DIRECT_POSITIONS} output positions per image).', '',  # pylint: disable=protected-access
           '| model | kernel | input | strides | sparsity | dense (ms) | im2col | direct | '
           'faster | pcs takes |', '|---|---|---|---|---:|---:|---:|---:|---|---|']
  for r in conv:
    lines.append(f"| {r['model']} | {'x'.join(map(str, r['kernel']))} | "
                 f"{'x'.join(map(str, r['input']))} | {'x'.join(map(str, r['strides']))} | "
                 f"{r['sparsity']:.0%} | {r['dense']:.3f} | {_ratio(r, 'im2col')} | "
                 f"{_ratio(r, 'direct')} | {_faster(r)} | {r['taken']} |")
  wins = sum(_faster(r) == 'direct' for r in conv)
  right = sum(_faster(r) == r['taken'] for r in conv)
  lines += ['', f'The direct convolution was faster than im2col in {wins} of {len(conv)} cases; '
            f'pcs took the faster of the two in {right} of {len(conv)}.']
  return '\n'.join(lines)


def relu_markdown(relu) -> str:
  """ReLU fused into the kernel against ReLU after it."""
  lines = ['ReLU fused into the sparse kernel against ReLU after it (the 4096 layer at 95%).',
           '', '| batch | fused (ms) | after (ms) | after / fused |', '|---:|---:|---:|---:|']
  for r in relu:
    lines.append(f"| {r['batch']} | {r['fused']:.3f} | {r['after']:.3f} | "
                 f"{r['after'] / r['fused']:.2f}x |")
  return '\n'.join(lines)


def markdown(layer, whole, conv=(), relu=()) -> str:
  """The two tables: speed-ups over dense (dense ms / variant ms; > 1 is faster)."""
  lines = ['One 4096 x 4096 layer: speed-up over XLA\'s dense dot (torch CSR: over torch\'s '
           'dense matmul); at batch 1 the memory-traffic bound of the CSR product.', '',
           '| sparsity | batch | dense (ms) | pcs | scipy CSR | torch CSR | jax BCSR | '
           'bound (ms) / pcs (ms) | pcs kernel (KiB) |',
           '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in layer:
    torch = f"{r['torch dense'] / r['torch CSR']:.2f}x" if 'torch CSR' in r else '-'
    bound = f"{r['bound']:.3f} / {r['pcs']:.3f}" if 'bound' in r else '-'
    label = r['sparsity'] if isinstance(r['sparsity'], str) else f"{r['sparsity']:.0%}"
    lines.append(f"| {label} | {r['batch']} | {r['dense']:.3f} | {_ratio(r, 'pcs')} | "
                 f"{_ratio(r, 'scipy')} | {torch} | {_ratio(r, 'jax BCSR')} | {bound} | "
                 f"{r['pcs_kb']:.0f} |")
  lines += ['', 'Whole models: speed-up over the dense jitted model (pcs: `pcs.export` with the '
            'per-layer measured choice at that batch, then `pcs.sparse_apply`).', '',
            '| model | sparsity | batch | dense (ms) | pcs | layers sparse | scipy CSR |',
            '|---|---:|---:|---:|---:|---:|---:|']
  for r in whole:
    lines.append(f"| {r['model']} | {r['sparsity']:.0%} | {r['batch']} | {r['dense']:.3f} | "
                 f"{_ratio(r, 'pcs')} | {r['sparse_layers']}/{r['layers']} | "
                 f"{_ratio(r, 'scipy')} |")
  if conv:
    lines += ['', conv_markdown(conv)]
  if relu:
    lines += ['', relu_markdown(relu)]
  return '\n'.join(lines)


def _at(rows, **where):
  return next(r for r in rows if all(r.get(k) == v for k, v in where.items()))


def verdicts(layer, whole, conv=(), relu=()) -> list:
  """The issue's targets, met or missed by how much, as table rows (``conv`` and
  ``relu`` set no target)."""
  del conv, relu
  def line(target, value, met):
    return f'| {target} | {value} | {"met" if met else "missed"} |'
  out = []
  mlp = _at(whole, model='MLP 784-4096-4096-10', sparsity=0.95, batch=1)
  speed = mlp['dense'] / mlp['pcs']
  out.append(line('MLP 784-4096-4096-10, 95%, batch 1: >= 5x dense (at least 3x)',
                  f'{speed:.2f}x', speed >= 5))
  out.append(line('... and no slower than scipy', f"pcs {mlp['pcs']:.3f} ms, scipy "
                  f"{mlp['scipy']:.3f} ms", mlp['pcs'] <= mlp['scipy']))
  for sparsity, goal in ((0.9, 3), (0.95, 6), (0.99, 25)):
    r = _at(layer, sparsity=sparsity, batch=1)
    speed = r['dense'] / r['pcs']
    peers = [r['dense'] / r['scipy']] + ([r['torch dense'] / r['torch CSR']]
                                          if 'torch CSR' in r else [])
    out.append(line(f'one 4096 layer, batch 1, {sparsity:.0%}: >= {goal}x dense and >= the '
                    'best of scipy and torch', f'{speed:.2f}x (best peer {max(peers):.2f}x)',
                    speed >= goal and speed >= max(peers)))
  r = _at(layer, sparsity=0.95, batch=1)
  out.append(line('one 4096 layer, 95%, batch 1: within 2x of the memory-traffic bound',
                  f"{r['pcs'] / r['bound']:.2f}x the bound", r['pcs'] <= 2 * r['bound']))
  mlp = _at(whole, model='MLP 784-4096-4096-10', sparsity=0.95, batch=256)
  out.append(line('MLP 784-4096-4096-10, 95%, batch 256: >= 1.5x dense',
                  f"{mlp['dense'] / mlp['pcs']:.2f}x", mlp['dense'] / mlp['pcs'] >= 1.5))
  resnet = _at(whole, model='ResNet-20', sparsity=0.95, batch=1)
  out.append(line('ResNet-20, 95%, batch 1: >= 1.5x dense',
                  f"{resnet['dense'] / resnet['pcs']:.2f}x",
                  resnet['dense'] / resnet['pcs'] >= 1.5))
  worst = min(whole, key=lambda r: r['dense'] / r['pcs'])
  out.append(line('every exported model: never more than 5% slower than dense',
                  f"slowest: {worst['model']} {worst['sparsity']:.0%} batch {worst['batch']}, "
                  f"{worst['dense'] / worst['pcs']:.2f}x", worst['pcs'] <= 1.05 * worst['dense']))
  return out


def run(repeats: int):
  """Every part: ``(layer rows, whole-model rows, conv rows, relu rows)``."""
  return layer_rows(repeats), model_rows(repeats), conv_rows(repeats), relu_rows(repeats)


def main(argv):
  del argv
  rows = run(FLAGS.inference_repeats)
  print(markdown(*rows))
  print('\n| target | this run | verdict |\n|---|---|---|')
  print('\n'.join(verdicts(*rows)))


if __name__ == '__main__':
  app.run(main)
