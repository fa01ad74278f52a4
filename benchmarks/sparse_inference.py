"""Sparse inference against dense and against the CSR products a user would pick instead.

Every part is timed interleaved in one process: rounds of every variant in a new random order,
each timed call after an untimed call of itself (a call runs slower right after the dense one,
so a fixed order would always charge that to the same variant), for at least 0.3 s, with
medians and the spread (± half the interquartile range, as a share of the median) reported.
Each run is appended with its machine to ``benchmarks/sparse_runs.jsonl``, and BENCHMARKS.md
shows every recorded run and the targets over the runs of the sparse products as they are
now (a digest of ``csrc/`` and ``pcs/sparse/``, recorded with each run) timed with the
current protocol: a figure that holds on one CPU only is not met. A target against a peer
compares the two times in the same run (not each library's speed-up over its own dense
product).

* **One layer** (4096 x 4096 magnitude-pruned to each sparsity or 2:4, and the transformer MLP's
  768 -> 3072 and 3072 -> 768 at 90%; batches 1, 16, 64, 256): XLA's dense dot, the pcs kernel
  on device arrays (both on XLA's thread pool and on the calling thread, the figure the one
  ``pcs.export`` would keep: the faster, but at batch 1 the pool unless the calling thread
  is clearly faster), jax's BCSR,
  scipy.sparse CSR (single-threaded) and torch.sparse CSR (the CPU build, when installed:
  ``pip install 'pcs[bench]'``). At batch 1 the bandwidth the dense product reaches and the
  memory-traffic bound: the bytes the CSR product must read (values, indices, row pointers,
  x) over that bandwidth.
* **Whole models** (their initial weights magnitude-pruned globally; the mnist1d CNN, whose
  head that empties, in every layer; and the 4096 MLP at 95% in every layer as issue 29
  measured it): the jitted dense model, given its weights and with them closed over
  (compiled in as constants; a target on dense is judged against the faster), against
  ``pcs.export(..., model=, inputs=)`` called as README shows,
  ``exported.bind(model, variables)``; for the 4096 MLP at batch 1
  also a jitted ``pcs.sparse_apply`` given the export as numpy arrays (copied on every call)
  and as device arrays; for the MLPs scipy CSR layer by layer.
* **Where a call's time goes** (every model at 95%, batch 1): XLA's profile of the
  README's call, split into the sparse products, XLA's ops between them and the rest
  (``benchmarks/call_profile.py``).
* **Convolutions** (full run): every distinct Conv layer of ResNet-20 and the 1-D CNN at its
  real input, XLA's dense convolution against im2col and the direct convolution.
* **Fused ReLU** (full run): ReLU in the kernel's store against ReLU applied after it.

  python -m benchmarks.sparse_inference [--inference_repeats=20] [--quick]
"""

import dataclasses
import functools
import hashlib
import json
import operator
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse
from absl import app
from absl import flags

import pcs
from benchmarks import call_profile
from benchmarks import interleaved
from benchmarks import machine
from benchmarks import sparse_nnx
from experiments.common.blocks import write_between
from experiments.vision import models

flags.DEFINE_integer('inference_repeats', 20, 'Timed calls per variant, at least (rounds '
                     'go on for interleaved.MIN_SECONDS).')
flags.DEFINE_bool('quick', False, 'Whole models at 95% only and no convolution study '
                  '(`make bench-sparse`, a few minutes).')
flags.DEFINE_string('sparse_record', 'benchmarks/sparse_runs.jsonl',
                    'Where each run of this benchmark is appended, with its machine.')
flags.DEFINE_string('sparse_output', 'BENCHMARKS.md',
                    'Whose <!-- sparse-runs --> block to rewrite from every recorded run.')
FLAGS = flags.FLAGS

SPARSITIES = (0.8, 0.9, 0.95, 0.98, 0.99)
BATCHES = (1, 16, 256)
LAYER_BATCHES = (1, 16, 64, 256)
LAYER = 4096
# One layer: (fan_in, features, sparsities); the transformer MLP's two shapes at 90%.
LAYERS = ((LAYER, LAYER, None), (768, 3072, (0.9,)), (3072, 768, (0.9,)))
# Whole models: (name, constructor, input shape, batches, how its initial weights are
# pruned). The mnist1d CNN is pruned in every layer: its weights are untrained, and a
# layer's initial scale falls with its fan-in, so 95% globally kept no weight of its
# 640 -> 10 head (a model that ignores its input).
MODELS = (('MLP 784-4096-4096-10', lambda: models.MLP((4096, 4096, 10)), (784,), BATCHES,
           'global'),
          ('MLP 784-1024-1024-10', lambda: models.MLP((1024, 1024, 10)), (784,), BATCHES,
           'global'),
          ('ResNet-20', models.resnet20, (32, 32, 3), (1, 16), 'global'),
          ('mnist1d CNN', models.CNN1D, (40, 1), BATCHES, 'layerwise'))
# Issue 29's MLP: (model, sparsity, batch) also pruned to that sparsity in every layer
# (`scope='layerwise'`); pruned globally, its first layer (784 x 4096) keeps 26% of its weights.
EVERY_LAYER = (MODELS[0][0], 0.95, 1)
# The whole-model rows whose call is also profiled (benchmarks/call_profile.py): every
# model at (sparsity, batch), pruned as MODELS prunes it.
PROFILED = (0.95, 1)


def _torch():
  interleaved.bound_openmp_spin()
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  torch.set_num_threads(2)
  return torch


def _pruned_layer(rng, sparsity, fan_in=LAYER, features=LAYER):
  kernel = rng.normal(size=(fan_in, features)).astype(np.float32)
  if sparsity == '2:4':
    groups = kernel.T.reshape(features, -1, 4)
    np.put_along_axis(groups, np.argsort(np.abs(groups), axis=-1)[..., :2], 0.0, axis=-1)
    return groups.reshape(features, fan_in).T.copy()
  kernel[np.abs(kernel) < np.quantile(np.abs(kernel), sparsity)] = 0.0
  return kernel


def _kept(pool_ms, caller_ms, batch, alone):
  """``'pcs pool'`` or ``'pcs caller'``: which one ``pcs.export`` keeps for a Dense layer
  at this batch. Its rule (``pcs.sparse._export.on_the_calling_thread``: the faster, but at
  batch 1 the calling thread where it is clearly faster in a loop of its own, else the
  faster after other work) on t_caller / t_pool timed as the export times it in a loop of
  their own (``alone``) and in this benchmark's rounds, after the other variants (the
  export: after the dense product)."""
  export = pcs.sparse._export  # pylint: disable=protected-access
  caller = export.on_the_calling_thread(batch == 1, alone, caller_ms / pool_ms)
  return 'pcs caller' if caller else 'pcs pool'


def layer_rows(repeats):
  """One layer at every shape, sparsity and batch: ms per product for each peer. pcs is
  timed on device arrays both on the thread pool and on the calling thread alone; its
  figure is the one ``pcs.export``'s rule keeps (:func:`_kept`)."""
  rng, torch, rows = np.random.default_rng(0), _torch(), []
  sparse = pcs.sparse
  bcsr_module = __import__('jax.experimental.sparse', fromlist=['BCSR'])
  for fan_in, features, sparsities in LAYERS:
    if sparsities is None:  # the 4096 layer: every sparsity, and 2:4
      sparsities = SPARSITIES + ('2:4',)
    for sparsity in sparsities:
      kernel = _pruned_layer(rng, sparsity, fan_in, features)
      layer = jax.device_put(sparse.nm(kernel, 2, 4) if sparsity == '2:4' else sparse.csr(kernel))
      caller = dataclasses.replace(layer, threads=sparse._formats.THREADS_CALLER)  # pylint: disable=protected-access
      dense_w = jnp.asarray(kernel)
      bcsr = bcsr_module.BCSR.fromdense(dense_w.T)
      csr_t = scipy.sparse.csr_matrix(kernel.T)
      for batch in LAYER_BATCHES:
        x = rng.normal(size=(batch, fan_in)).astype(np.float32)
        xj = jnp.asarray(x)
        ours = jax.jit(sparse.dense)
        dense = jax.jit(lambda x, w: x @ w)
        bcsr_fn = jax.jit(lambda x, m: (m @ x.T).T)
        calls = {'dense': functools.partial(interleaved.ready, dense, xj, dense_w),
                 'pcs pool': functools.partial(interleaved.ready, ours, xj, layer),
                 'pcs caller': functools.partial(interleaved.ready, ours, xj, caller),
                 'scipy': functools.partial(operator.matmul, csr_t, x.T)}
        if sparsity != '2:4':  # bfloat16 values (Exported.astype), on the pool
          calls['pcs bf16 values'] = functools.partial(interleaved.ready, ours, xj,
                                                       layer.with_values(jnp.bfloat16))
        if batch < 64:  # jax's BCSR takes seconds per call at large batches
          calls['jax BCSR'] = functools.partial(interleaved.ready, bcsr_fn, xj, bcsr)
        if torch is not None:
          tx = torch.from_numpy(x.T.copy())
          tdense = torch.from_numpy(kernel.T.copy())
          calls['torch CSR'] = functools.partial(operator.matmul, tdense.to_sparse_csr(), tx)
        for variant in (layer, caller):
          np.testing.assert_allclose(ours(xj, variant), x @ kernel, rtol=1e-3, atol=1e-3)
        alone = pcs.sparse._timing.compare(  # pylint: disable=protected-access
            calls['pcs caller'], calls['pcs pool'],
            threshold=pcs.sparse._export.pool_bar(batch == 1)).speedup  # pylint: disable=protected-access
        ms = interleaved.medians(calls, repeats if batch < 64 else max(3, repeats // 4))
        threads = _kept(ms['pcs pool'], ms['pcs caller'], batch, alone)
        row = {'shape': (fan_in, features), 'sparsity': sparsity, 'batch': batch, **ms,
               'pcs': ms[threads], 'threads': threads.split()[1], 'pcs_kb': layer.nbytes / 1024,
               'caller over pool alone': alone}
        row['spread']['pcs'] = row['spread'][threads]
        if batch == 1:
          bandwidth = kernel.nbytes / (ms['dense'] * 1e-3)  # bytes/s the dense GEMV reaches
          moved = layer.nbytes + x.nbytes + 4 * features
          row['bandwidth_gbs'] = bandwidth / 1e9
          row['bound'] = 1e3 * moved / bandwidth
        rows.append(row)
  return rows


CONV_SPARSITIES = (0.9, 0.95, 0.99)


def _conv_layers():
  """``(model, kernel shape, input shape, options)`` of every distinct Conv layer."""
  seen = {}
  for name, make_model, shape, *_ in MODELS:
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
        calls = {'dense': functools.partial(interleaved.ready, dense, x, jnp.asarray(kernel)),
                 'im2col': functools.partial(interleaved.ready, im2col, x, layer),
                 'direct': functools.partial(interleaved.ready, direct, x, layer)}
        hlo = jax.jit(functools.partial(pcs.sparse.conv, **options)).lower(x, layer).as_text()
        rows.append({'model': name, 'kernel': kernel_shape, 'input': (batch,) + in_shape,
                     'strides': strides, 'sparsity': sparsity, 'batch': batch,
                     'taken': 'direct' if 'pcs_csr_conv' in hlo else 'im2col',
                     **interleaved.medians(calls, repeats)})
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
    ms = interleaved.medians({'fused': functools.partial(interleaved.ready, fused, x, layer),
                              'after': functools.partial(interleaved.ready, after, x, layer)},
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


def _on_host(exported):
  """``exported`` with numpy arrays, as ``pcs.export`` returned them before 2026-12."""
  return jax.tree.map(np.asarray, exported)


def _closed_over(model, variables):
  """The dense model jitted with ``variables`` closed over (compiled in as constants)."""
  return jax.jit(lambda x: _apply(model, variables, x))


def _same_program(bound, dense_fn, variables, x) -> bool:
  """Whether the bound call traces to the dense model's very program (jaxprs printed
  alike), as where the export kept every layer dense and folded nothing: a timing of the
  two then measures only how two compilations of one program differ."""
  return str(bound.trace(x).jaxpr) == str(dense_fn.trace(variables, x).jaxpr)


def model_rows(repeats, sparsities=None):
  """Whole models: dense jitted, given its weights and with them closed over, against
  ``exported.bind`` (the README's call), scipy CSR
  layer by layer for the MLPs; for the 4096 MLP at batch 1 also ``pcs.sparse_apply``
  under ``jax.jit`` given the export as numpy arrays (copied on every call) and as
  device arrays. Each model pruned as :data:`MODELS` says, and :data:`EVERY_LAYER` also
  per layer (each row's ``scope``); ``same_program`` where the bound call is the dense
  program (:func:`_same_program`). ``sparsities``: default ``SPARSITIES``."""
  rows = []
  for name, make_model, shape, batches, model_scope in MODELS:
    model = make_model()
    variables = model.init(jax.random.key(0), jnp.zeros((1,) + shape), train=False)
    dense_fn = jax.jit(functools.partial(_apply, model))
    sparse_fn = jax.jit(functools.partial(_sparse_apply, model))
    cases = [(sparsity, model_scope, batches) for sparsity in sparsities or SPARSITIES]
    every_layer, sparsity, batch = EVERY_LAYER
    if every_layer == name and model_scope == 'global' and sparsity in (sparsities or
                                                                           SPARSITIES):
      cases.append((sparsity, 'layerwise', (batch,)))
    for sparsity, scope, scope_batches in cases:
      params, _ = pcs.prune(variables['params'], sparsity, scope=scope)
      pruned = {**variables, 'params': params}
      for batch in scope_batches:
        x = jnp.asarray(np.random.default_rng(0).normal(size=(batch,) + shape), jnp.float32)
        exported = pcs.export(pruned, model=model, inputs=x, call_kwargs={'train': False})
        bound = exported.bind(model, pruned, train=False)
        np.testing.assert_allclose(bound(x), dense_fn(pruned, x), rtol=1e-3, atol=1e-3)
        calls = {'dense': functools.partial(interleaved.ready, dense_fn, pruned, x),
                 'dense closed over': functools.partial(interleaved.ready,
                                                        _closed_over(model, pruned), x),
                 'pcs': functools.partial(interleaved.ready, bound, x)}
        if name == MODELS[0][0] and batch == 1 and scope == 'global':
          calls['pcs numpy args'] = functools.partial(interleaved.ready, sparse_fn, pruned,
                                                      _on_host(exported), x)
          calls['pcs device args'] = functools.partial(interleaved.ready, sparse_fn, pruned,
                                                       exported, x)
        if name.startswith('MLP'):
          calls['scipy'] = functools.partial(_scipy_mlp(params), np.asarray(x).T.copy())
        ms = interleaved.medians(calls, repeats if batch < 256 else max(3, repeats // 4))
        rows.append({'model': name, 'sparsity': sparsity, 'scope': scope, 'batch': batch, **ms,
                     'sparse_layers': len(exported), 'layers': len(exported.choices),
                     'same_program': _same_program(bound, dense_fn, pruned, x)})
        if (sparsity, batch) == PROFILED and scope == model_scope:
          rows[-1]['profile'] = call_profile.profile(bound, x)
  return rows


def profile_markdown(whole) -> str:
  """Where the README's call spends its time (the rows profiled, :data:`PROFILED`)."""
  profiled = [r for r in whole if 'profile' in r]
  if not profiled:
    return ''
  sparsity, batch = PROFILED
  lines = ['Where the time of a call goes (`benchmarks/call_profile.py`: XLA\'s profile of '
           f'{call_profile.CALLS} calls of `exported.bind(...)`, after {call_profile.WARMUP} '
           'unprofiled ones; medians per call, '
           f'in us; at {sparsity:.0%}, batch {batch}). "Waited for": the call as its caller '
           'waits for it, dispatch included; "executable": from the start of its first op to '
           'the end of its last, the sparse products, XLA\'s ops between them, and the time '
           'between ops. An "add" among what an op fuses is an elementwise add: in ResNet-20 '
           'the residual adds, which ride in the ops that pad, transpose or split into '
           'stride phases for the next product (XLA copies an add into each op that reads '
           'it, so there are more such ops than adds, and their time is mostly that other '
           'work).', '',
           '| model | waited for | executable | sparse products | XLA ops | between ops | '
           'XLA ops holding an add | slowest XLA ops (what they fuse: us) |',
           '|---|---:|---:|---:|---:|---:|---:|---|']
  for r in profiled:
    p = r['profile']
    adds = [op for op in p['ops'] if 'add' in op[1]]
    slowest = '; '.join(f"{name} ({', '.join(what)}): {us:.1f}" for name, what, us
                        in p['ops'][:4])
    lines.append(f"| {r['model']} | {p['wall_us']:.0f} | {p['executable_us']:.0f} | "
                 f"{p['products_us']:.0f} | {p['xla_us']:.0f} | {p['between_us']:.0f} | "
                 f"{len(adds)}, {sum(op[2] for op in adds):.0f} us | {slowest} |")
  return '\n'.join(lines)


def _ratio(row, key):
  return f"{row['dense'] / row[key]:.2f}x" if key in row else '-'


def _over_closed(row):
  closed = 'dense closed over'
  return f"{row[closed] / row['pcs']:.2f}x{_spread(row, closed)}" if closed in row else '-'


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


def _spread(row, key):
  return f" ±{50 * row['spread'][key]:.0f}%" if key in row.get('spread', {}) else ''


def markdown(layer, whole, conv=(), relu=(), nnx_rows=(), decode=()) -> str:
  """The tables: speed-ups over dense (dense ms / variant ms; > 1 is faster), each with
  half its interquartile range (±, as a share of its median time)."""
  lines = ['One layer: speed-up over XLA\'s dense dot, the same for every peer, so a ratio '
           'over another is the ratio of their times (the targets compare times); '
           'pcs on device arrays, on the threads `pcs.export` keeps for a Dense layer at that '
           'batch (which, in "threads"; `pcs.sparse._export.on_the_calling_thread` on t_caller '
           '/ t_pool timed in a loop of their own, as the export times them, and in these '
           'rounds, after the other variants; runs 1-71 used earlier rules: the faster in '
           'these rounds, from run 44 at batch 1 the pool unless the calling thread took '
           f'under {pcs.sparse._export.POOL_KEPT_UNTIL:g} of its time alone, from run 56 '  # pylint: disable=protected-access
           'also the calling thread if faster in the rounds where the pool was at least '
           f'1/{pcs.sparse._export.POOL_KEPT_UNTIL:g} times faster alone (from run 67: faster '  # pylint: disable=protected-access
           'at all)); '
           'at batch 1 the bandwidth the dense product reaches and the '
           'memory-traffic bound of the CSR product (the bytes it must read over that '
           'bandwidth); "bf16 values": pcs with its values stored in bfloat16 '
           '(`exported.astype(jnp.bfloat16)`, 4 bytes a nonzero instead of 6).', '',
           '| layer | sparsity | batch | dense (ms) | pcs | threads | pcs, bf16 values | '
           'scipy CSR | torch CSR | jax BCSR | dense GB/s | bound (ms) / pcs (ms) | '
           'pcs kernel (KiB) |',
           '|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|']
  for r in layer:
    torch = f"{_ratio(r, 'torch CSR')}{_spread(r, 'torch CSR')}" if 'torch CSR' in r else '-'
    bound = f"{r['bound']:.3f} / {r['pcs']:.3f}" if 'bound' in r else '-'
    gbs = f"{r['bandwidth_gbs']:.1f}" if 'bandwidth_gbs' in r else '-'
    label = r['sparsity'] if isinstance(r['sparsity'], str) else f"{r['sparsity']:.0%}"
    lines.append(f"| {r['shape'][0]} -> {r['shape'][1]} | {label} | {r['batch']} | "
                 f"{r['dense']:.3f} | {_ratio(r, 'pcs')}{_spread(r, 'pcs')} | {r['threads']} | "
                 f"{_ratio(r, 'pcs bf16 values')} | {_ratio(r, 'scipy')}{_spread(r, 'scipy')} | "
                 f"{torch} | "
                 f"{_ratio(r, 'jax BCSR')} | {gbs} | {bound} | {r['pcs_kb']:.0f} |")
  lines += ['', 'Whole models: speed-up over the dense jitted model, their initial weights '
            'magnitude-pruned globally ("every layer": to that sparsity in each layer; the '
            'mnist1d CNN from run 86). pcs: `pcs.export` with the '
            'per-layer measured choice at that batch, called as README shows, '
            '`exported.bind(model, variables)`. For the 4096 MLP at batch 1, the same export '
            'through a jitted `pcs.sparse_apply` given numpy arrays (copied on every call) and '
            'device arrays. "dense program": the export kept every layer dense, and the bound '
            'call traces to the dense model\'s own program (from run 86), so its ratio is how '
            'two compilations of one program time. "over dense closed over" (from run 98): '
            'pcs\'s speed-up over the dense model jitted with its weights closed over, which '
            'jax compiles in as constants.', '',
            '| model | sparsity | batch | dense (ms) | pcs (bind) | over dense closed over | '
            'numpy args | device args | layers sparse | scipy CSR |',
            '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in whole:
    every_layer = ' every layer' if _scope(r) == 'layerwise' else ''
    lines.append(f"| {r['model']} | {r['sparsity']:.0%}{every_layer} | {r['batch']} | "
                 f"{r['dense']:.3f} | "
                 f"{_ratio(r, 'pcs')}{_spread(r, 'pcs')} | {_over_closed(r)} | "
                 f"{_ratio(r, 'pcs numpy args')} | "
                 f"{_ratio(r, 'pcs device args')} | {r['sparse_layers']}/{r['layers']}"
                 f"{' (dense program)' if r.get('same_program') else ''} | "
                 f"{_ratio(r, 'scipy')} |")
  profile = profile_markdown(whole)
  if profile:
    lines += ['', profile]
  if conv:
    lines += ['', conv_markdown(conv)]
  if relu:
    lines += ['', relu_markdown(relu)]
  if nnx_rows or decode:
    lines += ['', sparse_nnx.markdown(nnx_rows, decode)]
  return '\n'.join(lines)


def _scope(row):
  """How a whole model was pruned (runs recorded before the field pruned globally)."""
  return row.get('scope', 'global')


def _at(rows, scope='global', **where):
  """The row with these values, pruned over ``scope`` (whole models), or None."""
  return next((r for r in rows
               if _scope(r) == scope and all(r.get(k) == v for k, v in where.items())), None)


def _best_peer(row):
  """The fastest peer in ``row`` and its ms per product: scipy CSR or torch CSR."""
  peers = {'scipy CSR': row['scipy']}
  if 'torch CSR' in row:
    peers['torch CSR'] = row['torch CSR']
  return min(peers.items(), key=lambda item: item[1])


def verdicts(layer, whole, conv=(), relu=(), nnx_rows=(), decode=()) -> list:
  """The targets of issues 29 and 30, met or missed, as table rows, each against the peers
  of this same run (``conv`` and ``relu`` set no target)."""
  del conv, relu
  def line(target, value, met):
    return f'| {target} | {value} | {"met" if met else "missed"} |'
  out = []
  for r in layer:
    if r['batch'] != 1 or r['sparsity'] == '2:4':
      continue
    peer, best = _best_peer(r)
    out.append(line(f"one layer {r['shape'][0]} -> {r['shape'][1]}, {r['sparsity']:.0%}, "
                    'batch 1: >= the best of scipy and torch CSR (goal 1.5x it)',
                    f"{r['dense'] / r['pcs']:.2f}x dense; pcs {r['pcs']:.3f} ms, {peer} "
                    f"{best:.3f} ms ({best / r['pcs']:.2f}x it)", r['pcs'] <= best))
    if r['shape'] == (LAYER, LAYER) and r['sparsity'] in (0.9, 0.95):
      out.append(line(f"one layer {r['shape'][0]} -> {r['shape'][1]}, {r['sparsity']:.0%}, "
                      'batch 1: within 1.5x of the memory-traffic bound',
                      f"{r['pcs'] / r['bound']:.2f}x the bound", r['pcs'] <= 1.5 * r['bound']))
  for r in layer:
    if r['batch'] > 1 and r['sparsity'] != '2:4' and 'torch CSR' in r:
      out.append(line(f"one layer {r['shape'][0]} -> {r['shape'][1]}, {r['sparsity']:.0%}, "
                      f"batch {r['batch']}: >= torch CSR",
                      f"pcs {r['pcs']:.3f} ms, torch CSR {r['torch CSR']:.3f} ms "
                      f"({r['torch CSR'] / r['pcs']:.2f}x it)", r['pcs'] <= r['torch CSR']))
  for scope, pruned in (('layerwise', '95% in every layer'), ('global', '95% globally')):
    mlp = _at(whole, scope, model='MLP 784-4096-4096-10', sparsity=0.95, batch=1)
    if mlp is None:  # a run recorded before the MLP was pruned per layer
      continue
    speed, note = interleaved.over_dense(mlp, 'pcs')
    out.append(line(f'MLP 784-4096-4096-10, {pruned}, batch 1, called as README shows: '
                    '>= 5x dense', f'{speed:.2f}x{note}', speed >= 5))
    out.append(line(f'MLP 784-4096-4096-10, {pruned}, batch 1: faster than scipy layer by '
                    'layer', f"pcs {mlp['pcs']:.3f} ms, scipy {mlp['scipy']:.3f} ms",
                    mlp['pcs'] <= mlp['scipy']))
  speed, note = interleaved.over_dense(_at(whole, model='ResNet-20', sparsity=0.95, batch=1),
                                      'pcs')
  out.append(line('ResNet-20, 95%, batch 1: >= 1.5x dense', f'{speed:.2f}x{note}',
                  speed >= 1.5))
  out.append(_every_model(whole, line))
  return out + sparse_nnx.verdicts(nnx_rows, decode)


def _every_model(whole, line) -> str:
  """The verdict on "every exported model >= 0.95x dense": judged on the rows whose bound
  call is not the dense program (``same_program``); those that are run what dense runs,
  and their measured spread is shown beside the verdict."""
  target = 'every exported model as its user calls it: >= 0.95x dense'
  judged = [r for r in whole if not r.get('same_program')]
  same = [r['dense'] / r['pcs'] for r in whole if r.get('same_program')]
  aside = (f"; {len(same)} kept every layer dense, the dense program itself, measured at "
           f"{min(same):.2f}-{max(same):.2f}x" if same else '')
  if not judged:
    return line(target, f'no model kept a layer sparse{aside}', True)
  speed, note, worst = min(((*interleaved.over_dense(r, 'pcs'), r) for r in judged),
                          key=lambda found: found[0])
  return line(target, f"slowest: {worst['model']} {worst['sparsity']:.0%} batch "
              f"{worst['batch']}, {speed:.2f}x{note}{aside}", speed >= 0.95)


def run(repeats: int, quick: bool = False):
  """Every part: ``(layer rows, whole-model rows, conv rows, relu rows, NNX model rows,
  decoding rows)``; ``quick``: whole models at 95% only, no convolution or ReLU study."""
  nnx_rows = (sparse_nnx.model_rows(repeats), sparse_nnx.decode_rows(repeats))
  if quick:
    return layer_rows(repeats), model_rows(repeats, (0.95,)), [], [], *nnx_rows
  return (layer_rows(repeats), model_rows(repeats), conv_rows(repeats), relu_rows(repeats),
          *nnx_rows)


# What a run measures of pcs: the kernels' source and pcs.sparse, which calls them.
_CODE = (os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'csrc'),
         os.path.dirname(os.path.abspath(pcs.sparse.__file__)))


def code_version() -> str:
  """A digest of the sparse products as they are in this checkout: the SHA-1 of every
  ``.cc``, ``.h`` and ``.py`` file under ``csrc/`` and ``pcs/sparse/`` but the C++ tests
  (``*_test.cc``; paths and contents, in sorted order), first 12 hex digits."""
  digest = hashlib.sha1()
  for root in _CODE:
    for name in sorted(os.listdir(root)):
      if name.endswith(('.cc', '.h', '.py')) and not name.endswith('_test.cc'):
        digest.update(f'{os.path.basename(root)}/{name}\n'.encode())
        with open(os.path.join(root, name), 'rb') as f:
          digest.update(f.read())
  return digest.hexdigest()[:12]


def record(rows, path: str, code: Optional[str] = None) -> dict:
  """Appends this run (its machine, timing protocol, ``code``: the :func:`code_version`
  of the code it ran, read when it started, default now; and its rows) to the JSON-lines
  file ``path``."""
  entry = {'machine': machine.describe(), 'cpu': machine.cpu_model(),
           'timing': interleaved.PROTOCOL, 'code': code or code_version(),
           'rows': dict(zip(('layer', 'whole', 'conv', 'relu', 'nnx', 'decode'), rows))}
  with open(path, 'a') as f:
    f.write(json.dumps(entry) + '\n')
  return entry


def _rows(entry):
  """A recorded run's rows, with the layer shapes as tuples again."""
  rows = entry['rows']
  layer = [{**r, 'shape': tuple(r['shape'])} for r in rows['layer']]
  return (layer, rows['whole'], rows['conv'], rows['relu'], rows.get('nnx', []),
          rows.get('decode', []))


def _timing(entry) -> int:
  """The timing protocol a recorded run used (runs recorded before the field: 1)."""
  return entry.get('timing', 1)


def runs_markdown(path: str) -> str:
  """Every recorded run (newest first, each with its machine, tables and targets), and a
  table of the targets over the runs of the sparse products as they are now
  (:func:`code_version`) timed with the current protocol (:data:`interleaved.PROTOCOL`):
  a target is met only where it holds on each of them. Runs of earlier code or of an
  earlier protocol are shown, and their count kept beside, but not judged."""
  with open(path) as f:
    entries = [json.loads(line) for line in f if line.strip()]
  verdict_rows = [verdicts(*_rows(e)) for e in entries]
  code = code_version()
  timed_now = [_timing(e) == interleaved.PROTOCOL for e in entries]
  current = [now and e.get('code') == code for e, now in zip(entries, timed_now)]
  earlier_code = sum(timed_now) - sum(current)
  earlier_timing = len(entries) - sum(timed_now)
  said = []
  if earlier_code:
    said.append(f'{earlier_code} measured earlier code')
  if earlier_timing:
    said.append('; '.join(
        f'{sum(_timing(e) == p for e in entries)} timed with protocol {p}, '
        + interleaved.PROTOCOLS[p]
        for p in sorted({_timing(e) for e in entries} - {interleaved.PROTOCOL})))
  lines = [f'{len(entries)} recorded run(s) of `benchmarks/sparse_inference.py` '
           f'(`{path}`), on: {", ".join(sorted({e["cpu"] for e in entries}))}.', '',
           '### Targets on every machine', '',
           f'Judged on the {sum(current)} run(s) of the sparse products as they are now '
           f'(code {code}: `csrc/` and `pcs/sparse/`, `code_version()`) timed as '
           f'`benchmarks/interleaved.py` times now (protocol {interleaved.PROTOCOL}: '
           f'{interleaved.PROTOCOLS[interleaved.PROTOCOL]}). '
           + (f'The {len(entries) - sum(current)} other run(s) are not judged; their outcomes '
              'are in the last column: ' + '; '.join(said) + '.' if said else ''), '',
           '| target | runs met / measured | verdict | earlier code or timing: met / measured |',
           '|---|---:|---|---:|']
  outcome: dict = {}
  for rows, now in zip(verdict_rows, current):
    for row in rows:
      target, verdict = row.split(' | ')[0].lstrip('| '), row.rsplit(' | ', 1)[1].strip(' |')
      outcome.setdefault(target, {True: [], False: []})[now].append(verdict == 'met')
  for target, met in outcome.items():
    judged, old = met[True], met[False]
    verdict = ('not measured' if not judged
               else 'met on each' if all(judged) else 'missed')
    lines.append(f'| {target} | {sum(judged)} / {len(judged)} | {verdict} | '
                 f'{sum(old)} / {len(old)} |')
  for entry, rows in reversed(list(zip(entries, verdict_rows))):
    lines += ['', f'### {entry["machine"]}', '',
              f'Timing protocol {_timing(entry)}; code {entry.get("code", "not recorded")}.',
              '', markdown(*_rows(entry)), '',
              '| target | this run | verdict |', '|---|---|---|', *rows]
  return '\n'.join(lines)


def main(argv):
  del argv
  code = code_version()  # the code imported: a file edited during the run is not it
  rows = run(FLAGS.inference_repeats, FLAGS.quick)
  record(rows, FLAGS.sparse_record, code)
  print(markdown(*rows))
  print('\n| target | this run | verdict |\n|---|---|---|')
  print('\n'.join(verdicts(*rows)))
  write_runs(FLAGS.sparse_record, FLAGS.sparse_output)


def write_runs(record_path: str, output: str) -> None:
  """Rewrites the ``<!-- sparse-runs -->`` block of ``output`` from every recorded run."""
  write_between(output, 'sparse-runs', runs_markdown(record_path))


if __name__ == '__main__':
  app.run(main)
