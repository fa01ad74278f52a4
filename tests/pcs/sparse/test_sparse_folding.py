"""Inference batch norm folded into the exported Dense/Conv layers, and fused ReLU.

The folded sparse model is checked against the unfolded model computed independently:
numpy in float64 (convolution, batch norm, ReLU written out) for small linen and NNX
models, and the dense model's own forward pass for ResNet-20 (linen and NNX) with
batch statistics that are not the identity. The export's choice with folds is checked
with stood-in timings.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pcs
from experiments.vision import models
from tests import nnx_models
from pcs.sparse import nnx as sparse_nnx


def _conv64(x, kernel, bias, strides):
  """A SAME channels-last 2-D convolution in float64, one window offset at a time."""
  (kh, kw), s = kernel.shape[:2], strides
  pads = jax.lax.padtype_to_pads(x.shape[1:3], (kh, kw), (s, s), 'SAME')
  xp = np.pad(np.asarray(x, np.float64), [(0, 0), *pads, (0, 0)])
  ho, wo = -(-x.shape[1] // s), -(-x.shape[2] // s)
  y = np.zeros((x.shape[0], ho, wo, kernel.shape[-1]))
  for a in range(kh):
    for b in range(kw):
      y += np.einsum('nhwc,co->nhwo', xp[:, a:a + s * (ho - 1) + 1:s, b:b + s * (wo - 1) + 1:s],
                     np.asarray(kernel[a, b], np.float64))
  return y + np.asarray(bias, np.float64)


def _norm64(y, mean, var, scale, offset, epsilon):
  return ((y - np.asarray(mean, np.float64)) / np.sqrt(np.asarray(var, np.float64) + epsilon)
          * np.asarray(scale, np.float64) + np.asarray(offset, np.float64))


def _forward64(x, conv, norm1, dense, norm2):
  """relu(bn1(conv(x))) flattened, then bn2(dense(.)), in float64."""
  y = np.maximum(_norm64(_conv64(x, *conv, strides=2), *norm1, epsilon=1e-3), 0.0)
  z = y.reshape(y.shape[0], -1) @ np.asarray(dense[0], np.float64) + dense[1]
  return _norm64(z, *norm2, epsilon=1e-5)


class ConvNet(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = nn.Conv(6, (3, 3), strides=2)(x)
    y = nn.relu(nn.BatchNorm(use_running_average=not train, epsilon=1e-3)(y))
    return nn.BatchNorm(use_running_average=not train)(nn.Dense(5)(y.reshape(y.shape[0], -1)))


class NnxConvNet(nnx.Module):

  def __init__(self, rngs):
    self.conv = nnx.Conv(4, 6, (3, 3), strides=2, rngs=rngs)
    self.norm1 = nnx.BatchNorm(6, epsilon=1e-3, rngs=rngs)
    self.dense = nnx.Linear(6 * 4 * 3, 5, rngs=rngs)
    self.norm2 = nnx.BatchNorm(5, rngs=rngs)

  def __call__(self, x):
    y = nnx.relu(self.norm1(self.conv(x)))
    return self.norm2(self.dense(y.reshape(y.shape[0], -1)))


def _randomized(tree, seed):
  """Every leaf replaced: kernels pruned to 70%, statistics and scales far from 0 and 1."""
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    name = jax.tree_util.keystr(path)
    if 'var' in name:
      return jnp.asarray(rng.uniform(0.3, 2.0, a.shape), a.dtype)
    if 'kernel' in name:
      k = rng.normal(size=a.shape) / np.sqrt(np.prod(a.shape[:-1]))
      return jnp.asarray(np.where(rng.random(a.shape) < 0.7, 0.0, k), a.dtype)
    return jnp.asarray(rng.normal(size=a.shape), a.dtype)
  return jax.tree_util.tree_map_with_path(leaf, tree)


def _inputs(shape, seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize('fuse_relu', [(), ('Conv_0',)])
def test_linen_folded_model_equals_the_unfolded_one_in_float64(fuse_relu):
  model, x = ConvNet(), _inputs((3, 8, 6, 4))
  variables = _randomized(model.init(jax.random.key(0), x), seed=2)
  exported = pcs.export(variables, model=model, inputs=x, format='csr', fuse_relu=fuse_relu)
  assert exported.folded_norms == {('BatchNorm_0',): ('Conv_0',),
                                   ('BatchNorm_1',): ('Dense_0',)}
  assert exported.epilogue(('Conv_0',)).activation == ('relu' if fuse_relu else None)
  assert 'batch norm BatchNorm_0 folded' in exported.summary()
  p, s = variables['params'], variables['batch_stats']
  norm = lambda name: (s[name]['mean'], s[name]['var'], p[name]['scale'], p[name]['bias'])
  expected = _forward64(x, (p['Conv_0']['kernel'], p['Conv_0']['bias']), norm('BatchNorm_0'),
                        (p['Dense_0']['kernel'], p['Dense_0']['bias']), norm('BatchNorm_1'))
  np.testing.assert_allclose(exported.bind(model, variables)(x), expected, rtol=1e-5,
                             atol=1e-5)
  # The stored kernel is W * gamma / sqrt(var + eps), zeros kept.
  scale = np.asarray(p['BatchNorm_0']['scale'], np.float64) / np.sqrt(
      np.asarray(s['BatchNorm_0']['var'], np.float64) + 1e-3)
  np.testing.assert_allclose(exported[('Conv_0',)].todense(),
                             np.asarray(p['Conv_0']['kernel'], np.float64) * scale, rtol=1e-6)
  # Given params alone (no statistics), or with folding off, nothing is folded.
  for unfolded in (pcs.export(p, model=model, inputs=x, format='csr'),
                   pcs.export(variables, model=model, inputs=x, format='csr',
                              fold_batch_norm=False)):
    assert not unfolded.epilogues
    np.testing.assert_allclose(unfolded.bind(model, variables)(x), expected, rtol=1e-5,
                               atol=1e-5)


def test_nnx_folded_model_equals_the_unfolded_one_in_float64():
  model = NnxConvNet(nnx.Rngs(0))
  nnx.update(model, _randomized(nnx.state(model, nnx.Param), seed=3),
             _randomized(nnx.state(model, nnx.BatchStat), seed=4))
  model.eval()
  x = _inputs((3, 8, 6, 4))
  exported = pcs.export(model, inputs=x, format='csr', fuse_relu=['conv'])
  assert exported.folded_norms == {('norm1',): ('conv',), ('norm2',): ('dense',)}
  sparse = sparse_nnx.sparsify(model, exported)
  assert type(sparse.norm1).__name__ == type(sparse.norm2).__name__ == 'FoldedNorm'
  v = lambda variable: variable.get_value()
  norm = lambda n: (v(n.mean), v(n.var), v(n.scale), v(n.bias))
  expected = _forward64(x, (v(model.conv.kernel), v(model.conv.bias)), norm(model.norm1),
                        (v(model.dense.kernel), v(model.dense.bias)), norm(model.norm2))
  assert np.all(np.isfinite(expected))
  np.testing.assert_allclose(sparse(x), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(sparse_nnx.bind(sparse)(x), expected, rtol=1e-5, atol=1e-5)
  model.train()  # a batch norm in training mode is not folded
  assert not pcs.export(model, inputs=x, format='csr').epilogues


def _resnet_linen(x):
  model = models.create_model('resnet20', 10)
  variables = model.init(jax.random.key(0), x, train=False)
  stats = _randomized(variables['batch_stats'], seed=4)
  params, _ = pcs.prune(variables['params'], 0.9)
  return model, {'params': params, 'batch_stats': stats}


def test_resnet20_folded_equals_dense_in_linen_and_nnx():
  x = _inputs((2, 8, 8, 3))
  model, variables = _resnet_linen(x)
  exported = pcs.export(variables, model=model, inputs=x, call_kwargs={'train': False},
                        format='csr')
  assert len(exported) == 22 and len(exported.epilogues) == 21  # every conv, not the head
  np.testing.assert_allclose(exported.bind(model, variables, train=False)(x),
                             model.apply(variables, x, train=False), rtol=1e-4, atol=1e-4)
  net = nnx_models.CifarResNet(rngs=nnx.Rngs(0))
  pruned, _ = pcs.prune(nnx.state(net, nnx.Param), 0.9)
  nnx.update(net, pruned, _randomized(nnx.state(net, nnx.BatchStat), seed=5))
  net.eval()
  sparse = sparse_nnx.sparsify(net, inputs=x, format='csr')
  folded = [n for _, n in nnx.iter_graph(sparse) if isinstance(n, sparse_nnx.FoldedNorm)]
  assert len(folded) == 21
  assert np.all(np.isfinite(net(x)))
  np.testing.assert_allclose(sparse_nnx.bind(sparse)(x), net(x), rtol=1e-4, atol=1e-4)


def test_the_measured_choice_binds_the_folded_model(monkeypatch):
  """Stood-in timings: every layer faster alone; the whole-model comparison receives the
  folded sparse model, which must equal dense, and keeps it."""
  x = _inputs((1, 8, 8, 3))
  model, variables = _resnet_linen(x)
  monkeypatch.setattr(pcs.sparse._export, '_measure',  # pylint: disable=protected-access
                      lambda kernel, layer, *args: (layer, pcs.sparse.Comparison(
                          2.0, 1.0, 2.0, 1.8, 2.2, 11)))
  seen = []

  def compare_calls(dense, sparse, inputs, threshold):
    np.testing.assert_allclose(sparse(inputs), dense(inputs), rtol=1e-4, atol=1e-4)
    seen.append(threshold)
    return pcs.sparse.Comparison(3.0, 2.0, 1.5, 1.4, 1.6, 11)
  monkeypatch.setattr(pcs.sparse._timing, 'compare_calls', compare_calls)  # pylint: disable=protected-access
  exported = pcs.export(variables, model=model, inputs=x, call_kwargs={'train': False})
  assert seen and len(exported) == 22 and len(exported.epilogues) == 21
  assert exported.model_ms == (3.0, 2.0)


def test_folds_survive_the_artifact_and_version_1_files_still_load(tmp_path):
  x = _inputs((2, 8, 8, 3))
  model, variables = _resnet_linen(x)
  exported = pcs.export(variables, model=model, inputs=x, call_kwargs={'train': False},
                        format='csr', fuse_relu=['Conv_0'])
  path = str(tmp_path / 'resnet.npz')
  pcs.sparse.save(path, exported, variables)
  loaded_variables, loaded = pcs.sparse.load(path)
  assert loaded.folded_norms == exported.folded_norms
  assert loaded.epilogue(('Conv_0',)).activation == 'relu'
  np.testing.assert_allclose(loaded.bind(model, loaded_variables, train=False)(x),
                             model.apply(variables, x, train=False), rtol=1e-4, atol=1e-4)
  # A file of version 1 (N:M's pattern as `n_m`, `threads` only when not the pool).
  params = {'Dense_0': {'kernel': jnp.asarray(np.kron(np.eye(4), [[1.0], [0.0]]), jnp.float32)}}
  old = pcs.export(params, format='n_m', n_m=(1, 2))
  pcs.sparse.save(str(tmp_path / 'v1.npz'), old, {'params': params})
  with np.load(str(tmp_path / 'v1.npz')) as archive:
    contents = dict(archive)
  manifest = json.loads(contents['manifest'].tobytes().decode())
  manifest['version'] = 1
  for entry in manifest['layers']:
    entry['n_m'] = [entry['meta']['n'], entry['meta']['m']]
    entry['threads'] = 1
    del entry['meta']
  contents['manifest'] = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
  np.savez(tmp_path / 'v1.npz', **contents)
  _, read = pcs.sparse.load(str(tmp_path / 'v1.npz'))
  layer = read[('Dense_0',)]
  assert (layer.n, layer.m, layer.threads) == (1, 2, 1)
  np.testing.assert_array_equal(layer.todense(), params['Dense_0']['kernel'])


def test_bad_fusion_and_folding_requests_are_refused():
  model, x = ConvNet(), _inputs((1, 8, 6, 4))
  variables = model.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"`fuse_relu` names \['Conv_9'\].*Conv_0"):
    pcs.export(variables, model=model, inputs=x, format='csr', fuse_relu=['Conv_9'])
  exported = pcs.export(variables, model=model, inputs=x, format='csr')
  with pytest.raises(ValueError, match=r'BatchNorm_0 is folded into Conv_0.*inference'):
    pcs.sparse_apply(model, variables, exported, x, train=True, mutable=['batch_stats'])
  with pytest.raises(ValueError, match=r'an nnx\.Module is its own model'):
    pcs.export(NnxConvNet(nnx.Rngs(0)), model=model, inputs=x)


class ReadTwice(nn.Module):
  """A conv whose output feeds its batch norm and, past it, the result: not foldable."""

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(4, (3, 3), use_bias=False)(x)
    return nn.BatchNorm(use_running_average=True)(y) + y


def test_a_layer_output_read_past_its_batch_norm_is_caught_by_the_check_against_dense():
  model, x = ReadTwice(), _inputs((2, 6, 6, 4))
  variables = _randomized(model.init(jax.random.key(0), x), seed=6)
  with pytest.raises(ValueError, match=r'differs from the model.*fold_batch_norm=False'):
    pcs.export(variables, model=model, inputs=x, format='csr')
  exported = pcs.export(variables, model=model, inputs=x, format='csr', fold_batch_norm=False)
  np.testing.assert_allclose(exported.bind(model, variables)(x), model.apply(variables, x),
                             rtol=1e-4, atol=1e-4)
