"""The compiled sparse kernels (and the pure-JAX reference) against numpy's dense products.

Every case is checked against ``x @ W + b`` computed densely in float64 by numpy, an
independent computation; shapes cover empty rows, an all-zero and a fully dense layer,
odd sizes, int32 indices (fan-in > 65536), batch 1 to large, jit and vmap.
"""

import ctypes
import dataclasses
import functools
import importlib.util
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import pcs
from pcs import sparse


def _pruned(rng, shape, sparsity):
  kernel = rng.normal(size=shape).astype(np.float32)
  kernel[rng.random(shape) < sparsity] = 0.0
  return kernel


def _n_m_pruned(rng, shape, n, m):
  """A kernel keeping the N largest of every M consecutive inputs of each feature."""
  kernel = rng.normal(size=shape).astype(np.float32)
  groups = np.moveaxis(kernel, -1, 0).reshape(shape[-1], -1, m)
  smallest = np.argsort(np.abs(groups), axis=-1)[..., :m - n]
  np.put_along_axis(groups, smallest, 0.0, axis=-1)
  groups[0, 0] = 0.0  # a group with fewer than N nonzeros
  return np.moveaxis(groups.reshape((shape[-1],) + shape[:-1]), 0, -1)


def _dense(x, kernel, bias=None, relu=False):
  y = x.astype(np.float64) @ kernel.reshape(-1, kernel.shape[-1]).astype(np.float64)
  y = y if bias is None else y + bias
  return np.maximum(y, 0.0) if relu else y


CASES = [  # fan_in, features, batch, sparsity
    (1, 1, 1, 0.0), (7, 5, 1, 0.5), (784, 300, 1, 0.95), (784, 300, 3, 0.9),
    (100, 33, 37, 0.8), (64, 64, 256, 0.0), (64, 64, 5, 1.0), (33, 17, 8, 0.7),
    (256, 129, 16, 0.95), (130, 70, 300, 0.99), (50, 40, 2, 0.6), (5, 3, 9, 0.3)]


def test_the_compiled_kernels_are_registered():
  assert sparse.compiled_available(), sparse._compiled._UNAVAILABLE  # pylint: disable=protected-access
  # The library's own list names the four handlers, each at a distinct address.
  spec = importlib.util.find_spec('pcs.sparse._sparse_kernels')
  listed = sparse._compiled.targets(ctypes.CDLL(spec.origin))  # pylint: disable=protected-access
  assert set(listed) == {'pcs_csr_matmul', 'pcs_nm_matmul', 'pcs_csr_conv', 'pcs_nm_conv'}
  assert len(set(listed.values())) == 4 and all(listed.values())
  layer = sparse.csr(np.eye(4, dtype=np.float32))
  hlo = jax.jit(sparse.dense).lower(jnp.ones((1, 4)), layer).as_text()
  assert 'pcs_csr_matmul' in hlo


@pytest.mark.parametrize('fan_in,features,batch,sparsity', CASES)
@pytest.mark.parametrize('relu', [False, True])
def test_csr_product_equals_dense(fan_in, features, batch, sparsity, relu):
  rng = np.random.default_rng(fan_in * 1000 + batch)
  kernel = _pruned(rng, (fan_in, features), sparsity)
  kernel[:, features // 2] = 0.0  # an empty row of W^T
  bias = rng.normal(size=features).astype(np.float32)
  x = rng.normal(size=(batch, fan_in)).astype(np.float32)
  layer = sparse.csr(kernel)
  assert layer.indices.dtype == np.uint16 and layer.nnz == np.count_nonzero(kernel)
  activation = 'relu' if relu else None
  expected = _dense(x, kernel, bias, relu)
  fast = jax.jit(functools.partial(sparse.dense, activation=activation))(x, layer, bias)
  np.testing.assert_allclose(fast, expected, rtol=1e-5, atol=1e-4)
  reference = sparse.reference_matmul_t(jnp.asarray(x.T), layer, jnp.asarray(bias), activation)
  np.testing.assert_allclose(reference.T, expected, rtol=1e-5, atol=1e-4)


def test_int32_indices_beyond_uint16_fan_in():
  rng = np.random.default_rng(0)
  kernel = _pruned(rng, (70_000, 3), 0.999)
  layer = sparse.csr(kernel)
  assert layer.indices.dtype == np.int32
  x = rng.normal(size=(2, 70_000)).astype(np.float32)
  np.testing.assert_allclose(jax.jit(sparse.dense)(x, layer), _dense(x, kernel), rtol=1e-5,
                             atol=1e-4)


@pytest.mark.parametrize('n,m,batch', [(2, 4, 1), (2, 4, 13), (1, 4, 8), (3, 8, 40),
                                       (1, 2, 2)])
def test_n_m_product_equals_dense(n, m, batch):
  rng = np.random.default_rng(n * 10 + m)
  kernel = _n_m_pruned(rng, (3, 3, 2 * m, 6), n, m)  # a conv kernel
  layer = sparse.nm(kernel, n, m)
  assert layer.positions.dtype == np.uint8 and layer.values.shape == (6, 9 * 2 * m // m * n)
  np.testing.assert_array_equal(layer.todense(), kernel)
  x_t = rng.normal(size=(9 * 2 * m, batch)).astype(np.float32)
  bias = rng.normal(size=6).astype(np.float32)
  expected = _dense(x_t.T, kernel, bias).T
  np.testing.assert_allclose(jax.jit(sparse.matmul_t)(x_t, layer, bias), expected, rtol=1e-5,
                             atol=1e-4)
  np.testing.assert_allclose(sparse.reference_matmul_t(x_t, layer, bias), expected, rtol=1e-5,
                             atol=1e-4)
  # The same kernel as a Dense layer's, through the product that takes x a row per input.
  flat = kernel.reshape(9 * 2 * m, 6)
  np.testing.assert_allclose(jax.jit(sparse.dense)(x_t.T, sparse.nm(flat, n, m), bias),
                             expected.T, rtol=1e-5, atol=1e-4)


def test_an_unstructured_kernel_is_refused_as_n_m_naming_the_pattern_found():
  kernel = _pruned(np.random.default_rng(0), (16, 8), 0.9)
  kernel[:4, 0] = 1.0  # one group of 4 with 4 nonzeros
  with pytest.raises(ValueError, match=r'group of 4 inputs with 4 nonzeros.*no 2:4'):
    sparse.nm(kernel, 2, 4, name='Dense_0')
  with pytest.raises(ValueError, match='needs `n_m`'):
    pcs.export({'Dense_0': {'kernel': jnp.asarray(kernel)}}, format='n_m')


def test_vmap_over_inputs_and_over_weights():
  rng = np.random.default_rng(3)
  kernel = _pruned(rng, (40, 12), 0.8)
  layer = sparse.csr(kernel)
  xs = rng.normal(size=(5, 3, 40)).astype(np.float32)
  mapped = jax.jit(jax.vmap(sparse.dense, in_axes=(0, None)))(xs, layer)
  np.testing.assert_allclose(mapped, np.stack([_dense(x, kernel) for x in xs]), rtol=1e-5,
                             atol=1e-4)
  # Two layers of one sparsity pattern, mapped together with their inputs.
  other = np.where(kernel != 0, rng.normal(size=kernel.shape), 0.0).astype(np.float32)
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), layer, sparse.csr(other))
  both = jax.jit(jax.vmap(sparse.dense))(xs[:2], stacked)
  np.testing.assert_allclose(both[0], _dense(xs[0], kernel), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(both[1], _dense(xs[1], other), rtol=1e-5, atol=1e-4)


def test_batch_sharded_under_shard_map_and_replicated_under_jit():
  mesh = jax.make_mesh((8,), ('batch',))
  rng = np.random.default_rng(4)
  kernel = _pruned(rng, (64, 32), 0.9)
  layer = sparse.csr(kernel)
  x = rng.normal(size=(16, 64)).astype(np.float32)
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, P('batch')))
  per_shard = jax.shard_map(sparse.dense, mesh=mesh, in_specs=(P('batch'), P()),
                            out_specs=P('batch'))
  np.testing.assert_allclose(jax.jit(per_shard)(sharded, layer), _dense(x, kernel),
                             rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(jax.jit(sparse.dense)(sharded, layer), _dense(x, kernel),
                             rtol=1e-5, atol=1e-4)


def _xla_conv(x, kernel, strides, padding, bias=None, relu=False):
  spatial = kernel.ndim - 2
  letters = 'DHW'[-spatial:]
  y = jax.lax.conv_general_dilated(
      x, kernel, (strides,) * spatial if isinstance(strides, int) else strides, padding,
      dimension_numbers=('N' + letters + 'C', letters + 'IO', 'N' + letters + 'C'),
      precision='highest')
  y = np.asarray(y, np.float64) + (0.0 if bias is None else bias)
  return np.maximum(y, 0.0) if relu else y


CONV_CASES = [  # window, strides, padding, input shape (N, *spatial, C)
    ((3, 3), 1, 'SAME', (2, 9, 7, 4)), ((3, 3), 2, 'VALID', (1, 11, 8, 4)),
    ((5,), 2, 'SAME', (3, 40, 4)), ((1, 1), 2, 'SAME', (2, 8, 8, 4)),
    ((3, 3), 1, [(2, 0), (1, 1)], (1, 6, 6, 4)), ((3,), 1, 'SAME', (2, 45, 8)),
    ((3, 3), 1, 'SAME', (1, 5, 70, 4)), ((3, 3), (1, 2), 'SAME', (1, 7, 9, 4)),
    ((3, 3), 2, 'VALID', (2, 7, 6, 4)), ((2, 2, 2), 1, 'VALID', (2, 4, 5, 3, 4))]


@pytest.mark.parametrize('window,strides,padding,shape', CONV_CASES)
@pytest.mark.parametrize('layout', ['csr', '2:4'])
def test_conv_equals_xla_convolution(window, strides, padding, shape, layout):
  """Direct (1-D, 2-D) and im2col (3-D, under 8 output positions) sparse convolutions
  against XLA's dense one, with an all-zero output channel, a bias and ReLU; widths past
  one 32-column tile."""
  rng = np.random.default_rng(5)
  shape_w = window + (shape[-1], 6)
  kernel = _pruned(rng, shape_w, 0.7) if layout == 'csr' else _n_m_pruned(rng, shape_w, 2, 4)
  kernel[..., 2] = 0.0
  layer = sparse.csr(kernel) if layout == 'csr' else sparse.nm(kernel, 2, 4, name='conv')
  bias = rng.normal(size=6).astype(np.float32)
  x = rng.normal(size=shape).astype(np.float32)
  for relu in (False, True):
    got = jax.jit(functools.partial(sparse.conv, strides=strides, padding=padding,
                                    activation='relu' if relu else None))(x, layer, bias)
    np.testing.assert_allclose(got, _xla_conv(x, kernel, strides, padding, bias, relu),
                               rtol=1e-5, atol=1e-4)


def test_conv_runs_direct_for_1d_and_2d_and_im2col_for_3d_and_small_outputs():
  def targets(kernel_shape, x_shape, strides=1):
    layer = sparse.csr(np.ones(kernel_shape, np.float32))
    conv = functools.partial(sparse.conv, strides=strides)
    hlo = jax.jit(conv).lower(jnp.ones(x_shape), layer).as_text()
    return {t for t in ('pcs_csr_matmul', 'pcs_nm_matmul', 'pcs_csr_conv', 'pcs_nm_conv')
            if t in hlo}
  assert targets((3, 3, 2, 4), (1, 8, 8, 2)) == {'pcs_csr_conv'}
  assert targets((3, 2, 4), (1, 16, 2)) == {'pcs_csr_conv'}
  assert targets((3, 2, 4), (1, 14, 2), strides=2) == {'pcs_csr_matmul'}  # 7 positions
  assert targets((2, 2, 2, 2, 4), (1, 4, 4, 4, 2)) == {'pcs_csr_matmul'}


def test_conv_with_int32_indices_and_under_vmap():
  rng = np.random.default_rng(6)
  kernel = _pruned(rng, (3, 3, 7300, 2), 0.99)  # fan-in 65700 > 65536: int32 indices
  layer = sparse.csr(kernel)
  assert layer.indices.dtype == np.int32
  x = rng.normal(size=(1, 4, 4, 7300)).astype(np.float32)
  np.testing.assert_allclose(jax.jit(sparse.conv)(x, layer), _xla_conv(x, kernel, 1, 'SAME'),
                             rtol=1e-5, atol=1e-4)
  small = _pruned(rng, (3, 3, 3, 5), 0.5)
  xs = rng.normal(size=(4, 2, 6, 6, 3)).astype(np.float32)
  mapped = jax.jit(jax.vmap(sparse.conv, in_axes=(0, None)))(xs, sparse.csr(small))
  np.testing.assert_allclose(mapped, np.stack([_xla_conv(x, small, 1, 'SAME') for x in xs]),
                             rtol=1e-5, atol=1e-4)


def _targets_lowered_for(fn, platform, *args):
  """The pcs FFI targets in ``fn``'s module lowered for ``platform`` (no device needed)."""
  names = ('pcs_csr_matmul', 'pcs_nm_matmul', 'pcs_csr_conv', 'pcs_nm_conv')
  checks = [jax.export.DisabledSafetyCheck.custom_call(name) for name in names]
  text = jax.export.export(jax.jit(fn), platforms=[platform], disabled_checks=checks)(
      *args).mlir_module()
  return {name for name in names if name in text}


def test_the_call_is_chosen_for_the_platform_it_is_lowered_for():
  rng = np.random.default_rng(7)
  layer = sparse.csr(_pruned(rng, (3, 3, 2, 4), 0.5))
  x = jnp.ones((1, 6, 6, 2))
  assert _targets_lowered_for(sparse.conv, 'cpu', x, layer) == {'pcs_csr_conv'}
  flat = sparse.nm(_n_m_pruned(rng, (32, 5), 2, 4), 2, 4)
  assert _targets_lowered_for(sparse.dense, 'cpu', jnp.ones((2, 32)), flat) == {
      'pcs_nm_matmul'}
  for platform in ('cuda', 'tpu'):
    assert not _targets_lowered_for(sparse.conv, platform, x, layer)
    assert not _targets_lowered_for(sparse.dense, platform, jnp.ones((2, 32)), flat)


def _elsewhere(monkeypatch):
  """Runs what a GPU or TPU runs, on this CPU: no platform takes the compiled kernels."""
  monkeypatch.setattr(sparse._compiled, 'COMPILED_PLATFORMS', ())  # pylint: disable=protected-access


def _without_library(monkeypatch):
  """Runs what a CPU without the compiled library runs: the pure-JAX reference."""
  monkeypatch.setattr(sparse._compiled, '_UNAVAILABLE', 'not built (test)')  # pylint: disable=protected-access


def test_off_cpu_the_products_route_to_bcsr_and_to_dense_and_say_so(monkeypatch):
  rng = np.random.default_rng(8)
  csr_kernel = _pruned(rng, (30, 7), 0.8)
  nm_kernel = _n_m_pruned(rng, (32, 5), 2, 4)
  x_t = rng.normal(size=(csr_kernel.shape[0], 6)).astype(np.float32)
  bias = rng.normal(size=7).astype(np.float32)
  _elsewhere(monkeypatch)
  monkeypatch.setattr(sparse._compiled.jax, 'default_backend', lambda: 'gpu')  # pylint: disable=protected-access
  with pytest.warns(RuntimeWarning, match="CPU-only.*gpu.*jax's BCSR"):
    got = sparse.matmul_t(x_t, sparse.csr(csr_kernel), bias, 'relu')
  np.testing.assert_allclose(got, _dense(x_t.T, csr_kernel, bias, relu=True).T, rtol=1e-5,
                             atol=1e-4)
  hlo = jax.jit(lambda x, w: sparse.matmul_t(x, w)).lower(x_t, sparse.csr(csr_kernel)).as_text()
  assert 'pcs_csr_matmul' not in hlo and 'pcs_' not in hlo
  x_t = rng.normal(size=(32, 6)).astype(np.float32)
  got = jax.jit(lambda x, w: sparse.matmul_t(x, w))(x_t, sparse.nm(nm_kernel, 2, 4))
  np.testing.assert_allclose(got, _dense(x_t.T, nm_kernel).T, rtol=1e-5, atol=1e-4)
  for strides in (1, 2):  # the direct convolution's stand-in reads columns from the phases
    conv_kernel = _pruned(rng, (3, 3, 2, 4), 0.5)
    x = rng.normal(size=(2, 9, 8, 2)).astype(np.float32)
    conv = functools.partial(sparse.conv, strides=strides, activation='relu')
    np.testing.assert_allclose(conv(x, sparse.csr(conv_kernel)),
                               _xla_conv(x, conv_kernel, strides, 'SAME', relu=True),
                               rtol=1e-5, atol=1e-4)


def _dense_grads(kind, x, kernel, bias, **options):
  """d/d(x, kernel, bias) of sum(r * act(f(x, W) + b)) by jax on the dense kernel."""
  def loss(x, kernel, bias):
    if kind == 'dense':
      y = x @ kernel
    else:
      spatial = kernel.ndim - 2
      letters = 'DHW'[-spatial:]
      y = jax.lax.conv_general_dilated(
          x, kernel, (options['strides'],) * spatial, options['padding'],
          dimension_numbers=('N' + letters + 'C', letters + 'IO', 'N' + letters + 'C'),
          precision='highest')
    y = jax.nn.relu(y + bias)
    return jnp.sum(jnp.sin(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape)) * y)
  return loss, jax.grad(loss, argnums=(0, 1, 2))(x, kernel, bias)


GRAD_CASES = [  # kind, kernel shape, input shape, layout, options
    ('dense', (24, 7), (5, 24), 'csr', {}), ('dense', (32, 6), (3, 32), '2:4', {}),
    ('conv', (3, 3, 4, 5), (2, 9, 7, 4), 'csr', {'strides': 2, 'padding': 'SAME'}),
    ('conv', (3, 3, 4, 5), (1, 8, 8, 4), '2:4', {'strides': 1, 'padding': 'VALID'}),
    ('conv', (2, 2, 2, 4, 3), (1, 3, 4, 3, 4), 'csr', {'strides': 1, 'padding': 'VALID'})]


@pytest.mark.parametrize('path', ['compiled', 'reference', 'off_cpu'])
@pytest.mark.parametrize('kind,kernel_shape,x_shape,layout,options', GRAD_CASES)
def test_gradients_equal_the_dense_models_on_every_path(monkeypatch, path, kind, kernel_shape,
                                                        x_shape, layout, options):
  """jax.grad through the sparse layer (direct and im2col convolutions, ReLU fused) equals
  jax's gradient of the dense layer in the input, the bias and the kernel's nonzeros."""
  if path == 'reference':
    _without_library(monkeypatch)
  elif path == 'off_cpu':
    _elsewhere(monkeypatch)
  rng = np.random.default_rng(11)
  kernel = (_pruned(rng, kernel_shape, 0.6) if layout == 'csr'
            else _n_m_pruned(rng, kernel_shape, 2, 4))
  layer = sparse.csr(kernel) if layout == 'csr' else sparse.nm(kernel, 2, 4)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  bias = jnp.asarray(rng.normal(size=kernel_shape[-1]), jnp.float32)
  loss, (dx, dkernel, dbias) = _dense_grads(kind, x, jnp.asarray(kernel), bias, **options)
  product = getattr(sparse, kind)

  def sparse_loss(x, layer, bias):
    y = product(x, layer, bias, activation='relu', **options)
    return jnp.sum(jnp.sin(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape)) * y)
  with warnings_ignored():
    np.testing.assert_allclose(sparse_loss(x, layer, bias), loss(x, jnp.asarray(kernel), bias),
                               rtol=1e-5)
    got_x, got_layer, got_bias = jax.jit(jax.grad(sparse_loss, argnums=(0, 1, 2),
                                                  allow_int=True))(
        x, layer, bias)
  np.testing.assert_allclose(got_x, dx, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got_bias, dbias, rtol=1e-4, atol=1e-4)
  # The stored values' cotangent, scattered back, is the dense gradient where an entry is
  # stored (N:M also stores the zeros of a group with fewer than N nonzeros).
  stored = dataclasses.replace(layer, values=np.ones_like(layer.values)).todense() != 0
  got = dataclasses.replace(layer, values=got_layer.values).todense()
  np.testing.assert_allclose(got, np.where(stored, dkernel, 0.0), rtol=1e-4, atol=1e-4)


def warnings_ignored():
  return warnings.catch_warnings(action='ignore', category=RuntimeWarning)


def test_bad_inputs_are_refused():
  layer = sparse.csr(np.eye(4, dtype=np.float32))
  with pytest.raises(TypeError, match='must be a floating-point array'):
    sparse.dense(jnp.ones((1, 4), jnp.int32), layer)
  with pytest.raises(ValueError, match='must end in 4 features'):
    sparse.dense(jnp.ones((1, 5)), layer)
  with pytest.raises(ValueError, match='`bias` must be float32 of shape'):
    sparse.dense(jnp.ones((1, 4)), layer, jnp.ones(3))
  with pytest.raises(ValueError, match='`activation` must be one of'):
    sparse.dense(jnp.ones((1, 4)), layer, activation='gelu')
  with pytest.raises(TypeError, match='must be a compressed weight'):
    sparse.matmul_t(jnp.ones((4, 1)), np.eye(4, dtype=np.float32))


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_half_precision_inputs_compute_in_float32_and_keep_their_dtype(dtype):
  rng = np.random.default_rng(5)
  kernel = rng.normal(size=(32, 8)).astype(np.float32)
  kernel[rng.random(kernel.shape) < 0.8] = 0.0
  x = jnp.asarray(rng.normal(size=(3, 32)), dtype)
  bias = jnp.asarray(rng.normal(size=8), jnp.float32)
  y = jax.jit(sparse.dense)(x, sparse.csr(kernel), bias)
  assert y.dtype == dtype
  # float64 of the rounded input, rounded once at the end: only the output's rounding.
  expected = np.asarray(x, np.float64) @ kernel.astype(np.float64) + np.asarray(bias)
  np.testing.assert_allclose(np.asarray(y, np.float64), expected,
                             rtol=float(jnp.finfo(dtype).eps), atol=1e-6)
  conv_kernel = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
  conv_kernel[rng.random(conv_kernel.shape) < 0.7] = 0.0
  image = jnp.asarray(rng.normal(size=(2, 6, 6, 4)), dtype)
  out = sparse.conv(image, sparse.csr(conv_kernel))
  assert out.dtype == dtype
  np.testing.assert_allclose(np.asarray(out, np.float32),
                             _xla_conv(image.astype(jnp.float32), conv_kernel, 1, 'SAME'),
                             rtol=2 * float(jnp.finfo(dtype).eps), atol=1e-2)


@pytest.mark.parametrize('batch', [1, 5, 40])
def test_bfloat16_values_on_the_compiled_reference_and_off_cpu_paths(batch, monkeypatch):
  rng = np.random.default_rng(9)
  kernel = _pruned(rng, (70, 33), 0.8)
  layer = sparse.csr(kernel).with_values(jnp.bfloat16)
  rounded = np.asarray(kernel.astype(jnp.bfloat16), np.float64)  # the weights as stored
  x = rng.normal(size=(batch, 70)).astype(np.float32)
  bias = rng.normal(size=33).astype(np.float32)
  expected = np.maximum(x.astype(np.float64) @ rounded + bias, 0.0)
  compiled = jax.jit(functools.partial(sparse.dense, activation='relu'))(x, layer, bias)
  np.testing.assert_allclose(compiled, expected, rtol=1e-5, atol=1e-5)
  reference = sparse.reference_matmul_t(jnp.asarray(x.T), layer, jnp.asarray(bias), 'relu')
  np.testing.assert_allclose(reference.T, expected, rtol=1e-5, atol=1e-5)
  conv_kernel = _pruned(rng, (3, 3, 2, 4), 0.5)
  image = rng.normal(size=(2, 9, 8, 2)).astype(np.float32)
  half = sparse.csr(conv_kernel).with_values(jnp.bfloat16)
  np.testing.assert_allclose(
      sparse.conv(image, half),
      _xla_conv(image, np.asarray(conv_kernel.astype(jnp.bfloat16), np.float32), 1, 'SAME'),
      rtol=1e-5, atol=1e-4)
  _elsewhere(monkeypatch)
  monkeypatch.setattr(sparse._compiled.jax, 'default_backend', lambda: 'gpu')  # pylint: disable=protected-access
  with warnings.catch_warnings():  # the fallback is said once per process
    warnings.simplefilter('ignore', RuntimeWarning)
    got = sparse.matmul_t(x.T, layer, bias, 'relu')
  np.testing.assert_allclose(got.T, expected, rtol=1e-5, atol=1e-4)
