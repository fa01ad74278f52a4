"""Sparse inference gives the dense model's outputs, in every format, for Dense and Conv models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pcs
from experiments import models

# ResNet-20 on 8x8 inputs: the same layers as on 32x32 at a fraction of the test time.
MODELS = [('cnn1d', (40, 1)), ('mlp', (784,)), ('resnet20', (8, 8, 3))]


def _pruned(name, shape, **prune_kwargs):
  model = models.create_model(name, 10)
  variables = model.init(jax.random.key(0), jnp.zeros((1,) + shape), train=False)
  pruned, _ = pcs.prune(variables['params'], **prune_kwargs)
  return model, {**variables, 'params': pruned}


# ResNet-20's sparse graph takes ~45 s to compile per format: BCSR is covered by the others.
@pytest.mark.parametrize('name,shape,format', [
    (name, shape, fmt) for name, shape in MODELS for fmt in ('bcoo', 'bcsr')
    if not (name == 'resnet20' and fmt == 'bcsr')])
def test_sparse_outputs_equal_dense_outputs(name, shape, format):
  model, variables = _pruned(name, shape, sparsity=0.9)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(3,) + shape), jnp.float32)
  exported = pcs.export(variables['params'], format=format)
  assert len(exported) == len([p for p in jax.tree.leaves(variables['params']) if p.ndim >= 2])
  dense = model.apply(variables, x, train=False)
  fast = jax.jit(lambda v, e, x: pcs.sparse_apply(model, v, e, x, train=False))
  np.testing.assert_allclose(fast(variables, exported, x), dense, rtol=1e-4, atol=1e-4)
  # The stored entries are the nonzeros only.
  for kernel in exported.values():
    assert int(kernel.nse) == int(jnp.sum(kernel.todense() != 0))


@pytest.mark.parametrize('name,shape', MODELS)
def test_n_m_compressed_layout(name, shape):
  model, variables = _pruned(name, shape, n_m=(2, 4), where=lambda path, x: x.ndim >= 2
                             and x.shape[-2] % 4 == 0)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2,) + shape), jnp.float32)
  where = lambda path, leaf: leaf.ndim >= 2 and leaf.shape[-2] % 4 == 0
  exported = pcs.export(variables['params'], format='n_m', where=where)
  for kernel in exported.values():
    assert kernel.m == 4 and kernel.positions.dtype == jnp.uint8
  np.testing.assert_allclose(pcs.sparse_apply(model, variables, exported, x, train=False),
                             model.apply(variables, x, train=False), rtol=1e-4, atol=1e-4)


def test_export_errors():
  params = {'Dense_0': {'kernel': jnp.ones((8, 4))}}
  with pytest.raises(ValueError, match='`format` must be one of'):
    pcs.export(params, format='csr')
  with pytest.raises(ValueError, match='no N:M pattern'):
    pcs.export(params, format='n_m')
