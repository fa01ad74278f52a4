"""Whole pruned models, linen and NNX, give the dense model's outputs when exported.

The dense model's own forward pass is the independent computation: the sparse run must
match it for the MLP, the 1-D CNN and ResNet-20 with batch norm, in CSR and N:M, under
jit; the artifact round trip must too, in a fresh process without the training code.
"""

import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pcs
from experiments.vision import models
from tests import nnx_models
from pcs.sparse import nnx as sparse_nnx
from tests import helpers

# ResNet-20 on 8x8 inputs: the same layers as on 32x32 at a fraction of the test time.
LINEN = [('cnn1d', (40, 1)), ('mlp', (784,)), ('resnet20', (8, 8, 3))]
NNX = {'mlp': (lambda: nnx_models.MLP(784, (256, 256, 10), rngs=nnx.Rngs(0)), (784,)),
       'cnn1d': (lambda: nnx_models.CNN1D(rngs=nnx.Rngs(0)), (40, 1)),
       'resnet20': (lambda: nnx_models.CifarResNet(rngs=nnx.Rngs(0)), (8, 8, 3))}


def _inputs(shape, batch=3):
  return jnp.asarray(np.random.default_rng(1).normal(size=(batch,) + shape), jnp.float32)


def _linen(name, shape, **prune_kwargs):
  model = models.create_model(name, 10)
  variables = model.init(jax.random.key(0), jnp.zeros((1,) + shape), train=False)
  pruned, _ = pcs.prune(variables['params'], **prune_kwargs)
  return model, {**variables, 'params': pruned}


def _nnx(name, **prune_kwargs):
  build, shape = NNX[name]
  model = build()
  pruned, _ = pcs.prune(nnx.state(model, nnx.Param), **prune_kwargs)
  nnx.update(model, pruned)
  model.eval()
  return model, shape


def _kernels(tree):
  return [leaf for leaf in jax.tree.leaves(pcs.core._boundary.plain(tree)) if leaf.ndim >= 2]  # pylint: disable=protected-access


@pytest.mark.parametrize('name,shape', LINEN)
def test_linen_sparse_outputs_equal_dense(name, shape):
  model, variables = _linen(name, shape, sparsity=0.9)
  x = _inputs(shape)
  exported = pcs.export(variables['params'], format='csr')
  assert len(exported) == len(_kernels(variables['params']))
  for layer in exported.values():  # the stored entries are the nonzeros only
    assert layer.nnz == np.count_nonzero(layer.todense())
  fast = jax.jit(lambda v, e, x: pcs.sparse_apply(model, v, e, x, train=False))
  np.testing.assert_allclose(fast(variables, exported, x), model.apply(variables, x, train=False),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name,shape', LINEN[:2])
def test_linen_n_m_export(name, shape):
  where = lambda path, leaf: leaf.ndim >= 2 and leaf.shape[-2] % 4 == 0
  model, variables = _linen(name, shape, n_m=(2, 4), where=where)
  exported = pcs.export(variables['params'], format='n_m', n_m=(2, 4), where=where)
  assert all(layer.m == 4 and layer.n == 2 for layer in exported.values())
  x = _inputs(shape, batch=2)
  np.testing.assert_allclose(pcs.sparse_apply(model, variables, exported, x, train=False),
                             model.apply(variables, x, train=False), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name', list(NNX))
def test_nnx_sparse_model_equals_dense_under_nnx_jit_and_jax_jit(name):
  model, shape = _nnx(name, sparsity=0.9)
  x = _inputs(shape)
  sparse = sparse_nnx.sparsify(model, format='csr')
  kinds = {type(node).__name__ for _, node in nnx.iter_graph(sparse)}
  assert 'SparseLinear' in kinds and not kinds & {'Linear'}
  expected = model(x)
  np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(sparse, x), expected, rtol=1e-4,
                             atol=1e-4)
  graphdef, state = nnx.split(sparse)
  plain_jit = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
  np.testing.assert_allclose(plain_jit(state, x), expected, rtol=1e-4, atol=1e-4)
  # The copy's kernels are the pruned ones, and the original model is untouched.
  for path, kernel in sparse_nnx.dense_kernels(sparse).items():
    node = model
    for key in path:
      node = node[key] if isinstance(key, int) else getattr(node, key)
    np.testing.assert_array_equal(kernel, node.kernel.get_value())


def _stood_in(dense_ms, sparse_ms):
  ratio = dense_ms / sparse_ms
  return pcs.sparse.Comparison(dense_ms, sparse_ms, ratio, 0.9 * ratio, 1.1 * ratio, 11)


def test_the_choice_keeps_sparse_only_what_is_faster_alone_and_in_the_whole_model(
    monkeypatch):
  # Timings are stood in for (a timed test would be flaky): a product costs its stored
  # entries, 1.5 units per sparse nonzero against 1 per dense weight.
  def fake_measure(kernel, layer, layer_input, threshold):
    del layer_input, threshold
    return layer, _stood_in(float(kernel.size), 1.5 * layer.nnz)
  monkeypatch.setattr(pcs.sparse._export, '_measure', fake_measure)  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  sparse_kernel = rng.normal(size=(64, 64)).astype(np.float32)
  sparse_kernel[rng.random(sparse_kernel.shape) < 0.99] = 0.0
  params = {'Dense_0': {'kernel': jnp.asarray(sparse_kernel)},
            'Dense_1': {'kernel': jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)},
            'Dense_2': {'kernel': jnp.asarray(sparse_kernel[:, :32])}}
  exported = pcs.export(params, batch_size=1)
  choices = {c.path[0]: c for c in exported.choices}
  assert choices['Dense_1'].format == 'dense' and set(exported) == {('Dense_0',), ('Dense_2',)}
  summary = exported.summary()
  assert 'Dense_1  64x8' in summary and ' dense ' in summary
  assert 'quartiles' in choices['Dense_0'].reason  # the spread is reported
  # A layer at 1.04x is not kept at the default 5% margin, and is at margin 0.
  monkeypatch.setattr(pcs.sparse._export, '_measure',  # pylint: disable=protected-access
                      lambda kernel, layer, *args: (layer, _stood_in(1.04, 1.0)))
  assert not pcs.export(params) and len(pcs.export(params, margin=0.0)) == 3
  monkeypatch.setattr(pcs.sparse._export, '_measure', fake_measure)  # pylint: disable=protected-access
  # The whole model: with Dense_2 sparse it is slower than dense; Dense_0 alone helps.
  asked = []

  def whole_model(layers):
    asked.append(set(layers))
    return _stood_in(10.0, 10.0 - 3.0 * (('Dense_0',) in layers) + 5.0 * (('Dense_2',) in layers))
  checked = pcs.sparse._export.export_kernels(  # pylint: disable=protected-access
      params, compare_model=whole_model)
  assert asked == [{('Dense_0',), ('Dense_2',)}, {('Dense_0',)}]  # the weaker half went first
  assert set(checked) == {('Dense_0',)} and checked.model_ms == (10.0, 7.0)
  assert 'whole model with it was not faster' in {c.path[0]: c for c in checked.choices}[
      'Dense_2'].reason
  assert 'whole model, as bound: sparse 7.000 ms vs dense 10.000 ms' in checked.summary()
  # Faster by the median but not by the lower quartile: inside the noise, so dense.
  noisy = pcs.sparse._export.export_kernels(  # pylint: disable=protected-access
      params, compare_model=lambda layers: pcs.sparse.Comparison(10.0, 9.0, 1.11, 0.97,
                                                                 1.25, 400))
  assert not noisy and noisy.model_ms is None
  never = pcs.sparse._export.export_kernels(  # pylint: disable=protected-access
      params, compare_model=lambda layers: _stood_in(10.0, 10.0 + len(layers)))
  assert not never  # all back to dense
  assert all(c.format == 'dense' for c in never.choices)


@pytest.mark.parametrize('shape, alone, after, on_the_pool, bar', [
    ((1, 64), 0.7, None, False, 0.75),  # the calling thread alone takes under 3/4 of its time
    # Elsewhere timed again after the dense product, where the faster takes it; a tie, the pool.
    ((1, 64), 0.75, 1.0, True, 0.75),   # the bar itself
    ((1, 64), 0.97, 1.4, True, 0.75),   # a helper late alone, at work after other work
    ((1, 64), 0.91, 1.8, True, 0.75),   # run 67's 80% layer: 0.91 alone, 1.81 in the rounds
    ((1, 64), 0.97, 0.84, False, 0.75),  # run 68's 99% layer
    ((1, 64), 1.09, 0.77, False, 0.75),  # run 64's 99% layer
    ((1, 64), 1.6, 1.3, True, 0.75),
    ((1, 64), 1.6, 0.9, False, 0.75),
    ((1, 1, 64), 0.8, 1.2, True, 0.75),  # one column however the batch axes are written
    ((64,), 0.8, 0.8, False, 0.75),
    ((16, 64), 1.6, None, True, 1.0),   # batched: the faster in its own loop
    ((16, 64), 0.97, None, False, 1.0),
    ((16, 64), 1.0, None, True, 1.0),
    ((1, 8, 8, 1), 0.97, None, False, 1.0)])  # a convolution at batch 1: the faster
def test_a_layer_leaves_the_pool_only_where_the_calling_thread_is_clearly_faster(
    monkeypatch, shape, alone, after, on_the_pool, bar):
  export = pcs.sparse._export  # pylint: disable=protected-access
  formats = pcs.sparse._formats  # pylint: disable=protected-access
  asked = []

  def compare(first, second, threshold=1.0, before=None):  # stood-in t_first / t_second
    del first, second
    asked.append((threshold, before is not None))
    ratio = [alone] + ([after] if after is not None else []) + [2.0]  # threads, then dense
    ratio = ratio[len(asked) - 1]
    return pcs.sparse.Comparison(ratio, 1.0, ratio, ratio, ratio, 11)
  monkeypatch.setattr(export.timing, 'compare', compare)
  if len(shape) == 4:  # a 3x3 convolution from 1 channel to 4, SAME padding
    kernel = np.zeros((3, 3, 1, 4), np.float32)
    kernel[1, 1] = 1.0
    layer_input = export.LayerInput(shape, {'strides': (1, 1), 'padding': 'SAME'})
  else:
    kernel = np.zeros((64, 32), np.float32)
    kernel[::4, ::2] = 1.0
    layer_input = export.LayerInput(shape)
  layer = pcs.sparse.csr(kernel)
  kept, _ = export._measure(kernel, layer, layer_input, threshold=1.05)  # pylint: disable=protected-access
  # The thread choice is timed until clear of its bar; after other work (the dense product
  # before each pair) only for a one-column product not clearly faster on the calling thread.
  assert asked == [(bar, False)] + ([(1.0, True)] if after is not None else []) + [
      (1.05, False)]
  assert kept.threads == (formats.THREADS_POOL if on_the_pool else formats.THREADS_CALLER)


def test_the_export_times_each_pair_in_random_order_each_call_after_itself(monkeypatch):
  """pcs.sparse._timing.compare: per pair, dense and sparse in a seeded random order, each
  timed run (between two clock reads) right after an untimed run of the same thunk."""
  timing = pcs.sparse._timing  # pylint: disable=protected-access
  log = []
  clock = types.SimpleNamespace(perf_counter=lambda: (log.append('t'), len(log))[1])
  monkeypatch.setattr(timing, 'time', clock)  # this module's clock only
  result = timing.compare(lambda: log.append('d'), lambda: log.append('s'))
  runs = ''.join(log[1:])  # after the clock's start; each pair ends with a read of the time
  pairs = [runs[i:i + 9] for i in range(0, len(runs), 9)]  # spent so far ('t')
  assert result.pairs == len(pairs) >= timing.MIN_PAIRS
  assert set(pairs) == {'dtdtststt', 'ststdtdtt'}  # both orders, each call twice, timed second
  assert result.speedup == 1.0  # every timed run spans one tick of the fake clock


def test_other_work_runs_before_each_untimed_call_when_asked(monkeypatch):
  """pcs.sparse._timing.compare(before=...): the other work, then the untimed run, then the
  timed one, for each thunk of each pair."""
  timing = pcs.sparse._timing  # pylint: disable=protected-access
  log = []
  clock = types.SimpleNamespace(perf_counter=lambda: (log.append('t'), len(log))[1])
  monkeypatch.setattr(timing, 'time', clock)
  result = timing.compare(lambda: log.append('d'), lambda: log.append('s'),
                          before=lambda: log.append('b'))
  runs = ''.join(log[1:])
  pairs = [runs[i:i + 11] for i in range(0, len(runs), 11)]
  assert result.pairs == len(pairs) >= timing.MIN_PAIRS
  assert set(pairs) == {'bdtdtbststt', 'bststbdtdtt'}


def test_measured_export_of_models_with_convolutions():
  model, variables = _linen('cnn1d', (40, 1), sparsity=0.95)
  x = _inputs((40, 1), batch=1)
  with pytest.raises(ValueError, match='needs its input shape'):
    pcs.export(variables['params'])
  exported = pcs.export(variables['params'], model=model, inputs=x,
                        call_kwargs={'train': False})
  assert len(exported.choices) == 4
  np.testing.assert_allclose(pcs.sparse_apply(model, variables, exported, x, train=False),
                             model.apply(variables, x, train=False), rtol=1e-4, atol=1e-4)
  nnx_model, shape = _nnx('cnn1d', sparsity=0.95)
  sparse = sparse_nnx.sparsify(nnx_model, inputs=_inputs(shape, batch=1))
  np.testing.assert_allclose(sparse(_inputs(shape)), nnx_model(_inputs(shape)), rtol=1e-4,
                             atol=1e-4)


def test_nnx_state_exports_and_empty_trees_are_refused():
  model, _ = _nnx('mlp', sparsity=0.9)
  exported = pcs.export(nnx.state(model, nnx.Param), format='csr')
  assert set(exported) == {('layers', 0), ('layers', 1), ('layers', 2)}
  for tree in ({}, {'bias': jnp.ones(3)}):
    with pytest.raises(ValueError, match=r'found no Dense/Conv kernel.*nnx\.Module'):
      pcs.export(tree, format='csr')


def test_mismatched_model_and_export_are_refused():
  _, variables = _linen('mlp', (784,), sparsity=0.9)
  other = models.MLP((128, 10))
  other_variables = other.init(jax.random.key(0), jnp.zeros((1, 784)))
  exported = pcs.export(variables['params'], format='csr')
  with pytest.raises(ValueError, match='belongs to another model'):
    pcs.sparse_apply(other, other_variables, exported, _inputs((784,)))
  nnx_model, _ = _nnx('mlp', sparsity=0.9)
  small = nnx_models.MLP(784, (128, 10), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='belongs to another model'):
    sparse_nnx.sparsify(small, pcs.export(nnx.state(nnx_model, nnx.Param), format='csr'))


_FRESH_PROCESS = '''
import sys, numpy as np, jax.numpy as jnp, pcs
from flax import nnx
from experiments.vision import models
from tests import nnx_models
from pcs.sparse import nnx as sparse_nnx
kind, path, x_path = sys.argv[1:]
x = jnp.asarray(np.load(x_path))
if kind == 'linen':
  variables, exported = pcs.sparse.load(path)
  out = pcs.sparse_apply(models.create_model('cnn1d', 10), variables, exported, x, train=False)
else:
  out = pcs.sparse.load(path, nnx_models.CNN1D(rngs=nnx.Rngs(7)))(x)
np.save(x_path + '.out.npy', np.asarray(out))
'''


def test_artifact_runs_in_a_fresh_process_and_refuses_tampering(tmp_path):
  x = _inputs((40, 1))
  np.save(tmp_path / 'x.npy', np.asarray(x))
  model, variables = _linen('cnn1d', (40, 1), sparsity=0.9)
  nnx_model, _ = _nnx('cnn1d', sparsity=0.9)
  saved = {'linen': (pcs.export(variables['params'], format='csr'), variables,
                     model.apply(variables, x, train=False)),
           'nnx': (pcs.export(nnx.state(nnx_model, nnx.Param), format='csr'),
                   nnx.state(nnx_model, nnx.Param), nnx_model(x))}
  for kind, (exported, tree, expected) in saved.items():
    path = str(tmp_path / f'{kind}.npz')
    pcs.sparse.save(path, exported, tree)
    done = subprocess.run([sys.executable, '-c', _FRESH_PROCESS, kind, path,
                           str(tmp_path / 'x.npy')], capture_output=True, text=True,
                          cwd=helpers.REPO, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(str(tmp_path / 'x.npy') + '.out.npy'), expected,
                               rtol=1e-4, atol=1e-4)
  path = str(tmp_path / 'linen.npz')
  with open(path, 'rb') as f:
    data = f.read()
  with open(tmp_path / 'truncated.npz', 'wb') as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(ValueError, match='truncated or not a pcs export'):
    pcs.sparse.load(str(tmp_path / 'truncated.npz'))
  _, exported = pcs.sparse.load(path)
  with np.load(path) as archive:
    contents = dict(archive)
  name = next(n for n in contents if n != 'manifest' and contents[n].dtype == np.uint16)
  contents[name] = contents[name].copy()
  contents[name][0] = 60000  # an index outside the kernel, hash unchanged
  np.savez(tmp_path / 'tampered.npz', **contents)
  with pytest.raises(ValueError, match='does not match its manifest'):
    pcs.sparse.load(str(tmp_path / 'tampered.npz'))
  # A pickled object array is refused by numpy itself, before anything runs.
  contents['manifest'] = np.array([object()], dtype=object)
  np.savez(tmp_path / 'pickled.npz', **contents)
  with pytest.raises(ValueError, match='truncated or not a pcs export'):
    pcs.sparse.load(str(tmp_path / 'pickled.npz'))
  assert len(exported) == 4


def test_a_layout_reading_outside_its_kernel_is_invalid():
  layer = pcs.sparse.csr(np.eye(4, dtype=np.float32))
  bad = pcs.sparse.CSR(values=layer.values, indices=np.array([0, 1, 2, 9], np.uint16),
                       indptr=layer.indptr, kernel_shape=(4, 4))
  with pytest.raises(ValueError, match=r'column indices must lie in \[0, 4\)'):
    bad.validate('layer')


def test_the_kernels_are_built_by_the_package_build():
  assert os.path.exists(os.path.join(helpers.REPO, 'csrc', 'sparse_kernels.cc'))
  assert pcs.sparse.compiled_available()


@pytest.mark.parametrize('dtype', [None, jnp.bfloat16])
def test_sparse_layers_in_a_bfloat16_model_return_what_the_dense_layers_return(dtype):
  # A linen and an NNX model with float32 weights fed bfloat16 inputs, computing in `dtype`:
  # the sparse copy returns the dense layer's dtype, and its values are the float64
  # product of the same rounded input (to that dtype's rounding).
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(4, 16)), jnp.bfloat16)
  tolerance = 1e-2 if dtype else 1e-5
  linen_model = nn.Dense(8, dtype=dtype)
  params, _ = pcs.prune(linen_model.init(jax.random.key(0), x)['params'], 0.8)
  got = pcs.export(params, format='csr').bind(linen_model, {'params': params})(x)
  assert got.dtype == linen_model.apply({'params': params}, x).dtype == (dtype or jnp.float32)
  expected = np.asarray(x, np.float64) @ np.asarray(params['kernel'], np.float64)
  np.testing.assert_allclose(np.asarray(got, np.float64), expected + np.asarray(params['bias']),
                             rtol=tolerance, atol=tolerance)
  net = nnx.Linear(16, 8, dtype=dtype, rngs=nnx.Rngs(0))
  pruned, _ = pcs.prune(nnx.state(net, nnx.Param), 0.8)
  nnx.update(net, pruned)
  sparse = sparse_nnx.sparsify(net, format='csr')
  assert sparse(x).dtype == net(x).dtype == (dtype or jnp.float32)
  expected = np.asarray(x, np.float64) @ np.asarray(net.kernel.get_value(), np.float64)
  np.testing.assert_allclose(np.asarray(sparse(x), np.float64),
                             expected + np.asarray(net.bias.get_value()),
                             rtol=tolerance, atol=tolerance)


def test_bfloat16_values_equal_the_product_of_the_rounded_weights_and_survive_the_file(
    tmp_path):
  model, variables = _linen('mlp', (784,), sparsity=0.9)
  x = _inputs((784,))
  exported = pcs.export(variables['params'], format='csr').astype(jnp.bfloat16)
  for layer in exported.values():
    assert layer.values.dtype == jnp.bfloat16 and layer.nbytes < 6 * layer.nnz
  # The float64 forward pass of the kernels rounded to bfloat16, as numpy computes it.
  rounded = jax.tree.map(lambda a: np.asarray(a, np.float64), variables['params'])
  for path in exported:
    rounded[path[0]]['kernel'] = np.asarray(
        np.asarray(variables['params'][path[0]]['kernel']).astype(jnp.bfloat16), np.float64)
  h = np.asarray(x, np.float64)
  for i in range(3):
    h = h @ rounded[f'Dense_{i}']['kernel'] + rounded[f'Dense_{i}']['bias']
    h = np.maximum(h, 0.0) if i < 2 else h
  np.testing.assert_allclose(exported.bind(model, variables, train=False)(x), h, rtol=1e-4,
                             atol=1e-4)
  path = str(tmp_path / 'half.npz')
  pcs.sparse.save(path, exported, variables)
  loaded_variables, loaded = pcs.sparse.load(path)
  assert all(layer.values.dtype == jnp.bfloat16 for layer in loaded.values())
  np.testing.assert_allclose(loaded.bind(model, loaded_variables, train=False)(x), h,
                             rtol=1e-4, atol=1e-4)
  nm = pcs.sparse.nm(np.eye(4, dtype=np.float32), 1, 2)
  assert nm.with_values(jnp.bfloat16).values.dtype == np.float32  # N:M keeps float32
