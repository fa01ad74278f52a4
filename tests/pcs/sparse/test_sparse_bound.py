"""The bound call (``exported.bind``): compiled once per input signature, given only the
bound arrays its trace reads, computing what the dense model computes.

The arrays a call reads are counted by hand from the model's structure: a layer
exported sparse reads its compressed arrays and not its dense kernel; a batch norm
folded into the layer before it reads nothing, and that layer reads the folded bias,
not its own."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pcs
from pcs.sparse import _bound as bound_lib
from pcs.sparse import nnx as sparse_nnx


class ConvNet(nn.Module):
  """Conv -> BatchNorm -> ReLU -> Dense -> BatchNorm: 12 variables."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(6, (3, 3))(x)))
    return nn.BatchNorm(use_running_average=not train)(nn.Dense(5)(y.reshape(y.shape[0], -1)))


def _passed(call, *args) -> int:
  """How many bound arrays the compiled call is given at ``args``."""
  return len(jax.tree.leaves(call.trace(*args).lower().args_info[0][0]))


def _setup():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 6, 5, 4)), jnp.float32)
  model = ConvNet()
  variables = model.init(jax.random.key(0), x)
  params, _ = pcs.prune(variables['params'], 0.7)
  stats = jax.tree.map(lambda v: v + 0.5, variables['batch_stats'])
  return model, {'params': params, 'batch_stats': stats}, x


@pytest.mark.parametrize('fold', [True, False])
def test_linen_bound_call_passes_the_arrays_the_sparse_model_reads(fold):
  model, variables, x = _setup()
  assert len(jax.tree.leaves(variables)) == 12
  exported = pcs.export(variables, model=model, inputs=x, format='csr', fold_batch_norm=fold)
  call = exported.bind(model, variables)
  # Folded: no variable is read (both norms folded, both biases replaced); unfolded: all
  # but the two dense kernels.
  assert _passed(call, x) == len(jax.tree.leaves(exported)) + (0 if fold else 10)
  want = model.apply(variables, x)
  np.testing.assert_allclose(call(x), want, rtol=1e-5, atol=1e-5)
  # Another batch compiles again, with the same arrays left out.
  np.testing.assert_allclose(call(x[:1]), want[:1], rtol=1e-5, atol=1e-5)
  assert _passed(call, x[:1]) == _passed(call, x)


def test_an_array_the_result_holds_is_passed_and_one_never_read_is_not():
  a, b = jnp.arange(3.0), jnp.ones((1000, 1000))
  call = bound_lib.BoundCall(lambda v, x: (v['a'], 2.0 * x), {'a': a, 'b': b})
  out = call(jnp.float32(4.0))
  np.testing.assert_array_equal(out[0], [0.0, 1.0, 2.0])
  assert float(out[1]) == 8.0
  assert _passed(call, jnp.float32(4.0)) == 1
  # A weakly typed scalar is passed unread: zeros of its dtype would trace otherwise.
  call = bound_lib.BoundCall(lambda v, x: 2.0 * x, {'a': a, 'w': 3.0})
  assert float(call(jnp.float32(4.0))) == 8.0 and _passed(call, jnp.float32(4.0)) == 1
  # A pytree argument, then the same structure with another shape.
  call = bound_lib.BoundCall(lambda v, xs: v['b'][:2, :2] @ xs['x'], {'a': a, 'b': b})
  np.testing.assert_array_equal(call({'x': jnp.ones((2, 1))}), [[2.0], [2.0]])
  np.testing.assert_array_equal(call({'x': jnp.ones((2, 3))}), 2.0 * np.ones((2, 3)))


def test_an_input_whose_trace_reads_an_array_left_out_passes_it_from_then_on():
  # The read arrays are found at the first call; a batch of 2 reads another.
  fn = lambda v, x: v['a'] * x if x.shape[0] == 1 else v['b'] * x + v['a']
  call = bound_lib.BoundCall(fn, {'a': jnp.float32(2.0), 'b': jnp.float32(3.0)})
  np.testing.assert_array_equal(call(jnp.ones(1)), [2.0])
  assert _passed(call, jnp.ones(1)) == 1
  np.testing.assert_array_equal(call(jnp.ones(2)), [5.0, 5.0])
  assert _passed(call, jnp.ones(2)) == _passed(call, jnp.ones(1)) == 2
  np.testing.assert_array_equal(call(jnp.full(1, 4.0)), [8.0])


class DropoutNet(nnx.Module):
  """Linear -> ReLU -> Dropout -> Linear: the dropout holds a PRNG key and a count."""

  def __init__(self, rngs):
    self.dense = nnx.Linear(8, 8, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)
    self.out = nnx.Linear(8, 2, rngs=rngs)

  def __call__(self, x):
    return self.out(self.dropout(nnx.relu(self.dense(x))))


def test_nnx_bound_call_keeps_a_model_s_prng_key_it_does_not_read():
  model = DropoutNet(nnx.Rngs(0, dropout=1))
  pruned, _ = pcs.prune(nnx.state(model, nnx.Param), 0.7)
  nnx.update(model, pruned)
  model.eval()  # dropout off: its key is not read
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 8)), jnp.float32)
  sparse = sparse_nnx.sparsify(model, format='csr', fuse_relu=[])
  state = nnx.state(sparse)
  keys = [leaf for leaf in jax.tree.leaves(state)
          if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)]
  assert len(keys) == 1
  call = sparse_nnx.bind(sparse)
  np.testing.assert_allclose(call(x), model(x), rtol=1e-5, atol=1e-5)
  # Of the 10 arrays (two layers' bias and CSR values, indices and row pointers, the
  # dropout's key and count) the call reads the layers' 8; the key is passed all the same
  # (it is not a number), the count is not.
  assert len(jax.tree.leaves(state)) == 10 and _passed(call, x) == 9
