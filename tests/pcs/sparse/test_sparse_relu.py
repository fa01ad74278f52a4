"""ReLUs found in a trace and moved into the sparse products (``pcs/sparse/_relu.py``).

Detection is checked on hand-made functions, where which outputs feed a ReLU alone is
known by construction, and on linen and NNX models written for it; the compiled call
without the model's ReLUs is checked against the model computed densely (its own
forward pass) and against numpy, and its jaxpr is checked to have lost exactly the ReLUs
that read a product which applied its own.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pcs
from pcs.sparse import _relu as relu_lib
from pcs.sparse import nnx as sparse_nnx


def _marked(x, path='a', fused=False):
  return relu_lib.marked(x * 2.0, (path,), fused)


@pytest.mark.parametrize('body, found', [
    (lambda x: jax.nn.relu(_marked(x)), {('a',)}),
    (lambda x: jnp.maximum(_marked(x), 0.0), {('a',)}),
    (lambda x: jnp.maximum(0.0, _marked(x)), {('a',)}),
    (lambda x: nnx.relu(_marked(x)) + 1.0, {('a',)}),
    (lambda x: jnp.maximum(_marked(x), 1.0), set()),      # not a ReLU
    (lambda x: jax.nn.relu(_marked(x)) + _marked(x, 'b'), {('a',)}),
    (lambda x: (lambda y: jax.nn.relu(y) + y)(_marked(x)), set()),  # a residual read
    (lambda x: _marked(x), set()),                        # the function's result
    (lambda x: jax.nn.gelu(_marked(x)), set()),
    (lambda x: jax.checkpoint(jax.nn.relu)(_marked(x)), {('a',)}),  # still one ReLU
    (lambda x: jax.jit(lambda y: jax.nn.relu(y) * 2.0)(_marked(x)), set()),  # a step of more
    # one layer called twice: a ReLU after one call only
    (lambda x: jax.nn.relu(_marked(x)) + _marked(x)[::-1], set()),
    (lambda x: jax.nn.relu(_marked(x)) + jax.nn.relu(_marked(x))[::-1], {('a',)}),
    (lambda x: jax.nn.relu(_marked(x.astype(jnp.bfloat16))), {('a',)}),
    # a marked output that leaves a cond's branch is read outside it: not taken
    (lambda x: jax.nn.relu(jax.lax.cond(x[0] > 0, lambda: _marked(x), lambda: x)), set()),
    (lambda x: jax.lax.cond(x[0] > 0, lambda: jax.nn.relu(_marked(x)), lambda: x), {('a',)}),
    (lambda x: jax.lax.scan(lambda c, _: (c, None), _marked(x), length=0)[0], set()),
])
def test_relu_only_keeps_the_outputs_read_by_relus_alone(body, found):
  assert relu_lib.relu_only(body, jnp.arange(-3.0, 3.0)) == found


def test_without_fused_relus_drops_exactly_the_relus_after_fused_products():
  def model(x):
    fused = relu_lib.marked(jax.nn.relu(x * 2.0), ('a',), True)   # a product that applied it
    plain = relu_lib.marked(x - 1.0, ('b',), False)
    return {'a': jax.nn.relu(fused), 'b': jax.nn.relu(plain),
            'both': jnp.maximum(fused, 0.0) + plain}

  def relus(fn, x):
    return _relu_count(jax.make_jaxpr(fn)(x).jaxpr)

  x = jnp.linspace(-2.0, 2.0, 9)
  closed, tree = relu_lib.without_fused_relus(model, x)
  # the stand-in product's own ReLU stays
  assert relus(model, x) == 4 and _relu_count(closed.jaxpr) == 2
  got = jax.tree.unflatten(tree, jax.core.eval_jaxpr(closed.jaxpr, closed.consts, x))
  want = np.asarray(x, np.float64)
  np.testing.assert_allclose(got['a'], np.maximum(2 * want, 0), rtol=1e-6)
  np.testing.assert_allclose(got['b'], np.maximum(want - 1, 0), rtol=1e-6)
  np.testing.assert_allclose(got['both'], np.maximum(2 * want, 0) + want - 1, rtol=1e-6)


class Net(nn.Module):
  """Dense_0 feeds a ReLU; Dense_1 a ReLU and a residual add; Dense_2 a folded batch norm,
  then jnp.maximum; Dense_3 is the result."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(32)(x))
    g = nn.Dense(32)(h)
    h = nn.relu(g) + g
    k = nn.BatchNorm(use_running_average=True)(nn.Dense(32)(h))
    return nn.Dense(5)(jnp.maximum(k, 0.0))


def _pruned_net():
  x = jax.random.normal(jax.random.key(1), (3, 16))
  model = Net()
  variables = model.init(jax.random.key(0), x)
  stats = jax.tree.map(lambda v: jax.random.uniform(jax.random.key(2), v.shape, minval=0.5,
                                                    maxval=1.5), variables['batch_stats'])
  params, _ = pcs.prune(variables['params'], 0.8)
  return model, {'params': params, 'batch_stats': stats}, x


def _relu_count(jaxpr) -> int:
  """The ReLUs at ``jaxpr``'s level, by their primitives: jax.nn.relu's custom_jvp call
  and ``max`` (jnp.maximum)."""
  return sum(e.primitive.name == 'max' or (e.primitive.name == 'custom_jvp_call'
                                           and 'relu' in str(e.params['call_jaxpr']))
             for e in jaxpr.eqns)


def _relu_eqns(bound, x):
  """ReLUs at the model's level of the compiled call's jaxpr."""
  return _relu_count(bound.trace(x).jaxpr.jaxpr)


def test_linen_export_fuses_the_relus_it_finds_and_binds_without_them():
  model, variables, x = _pruned_net()
  exported = pcs.export(variables, model=model, inputs=x, format='csr')
  assert {p for p, e in exported.epilogues.items() if e.activation == 'relu'} == {
      ('Dense_0',), ('Dense_2',)}
  bound = exported.bind(model, variables)
  np.testing.assert_allclose(bound(x), model.apply(variables, x), rtol=1e-4, atol=1e-4)
  assert _relu_eqns(bound, x) == 1  # Dense_1's, read by the residual add too
  unfused = pcs.export(variables, model=model, inputs=x, format='csr', fuse_relu=[])
  assert not unfused.epilogues.get(('Dense_0',))
  assert _relu_eqns(unfused.bind(model, variables), x) == 3


class Features(nn.Module):
  """The hidden layer's ReLU is its only reader, unless the call asks for the features."""

  @nn.compact
  def __call__(self, x, features=False):
    h = nn.Dense(16)(x)
    y = nn.Dense(3)(nn.relu(h))
    return (y, h) if features else y


def test_bind_refuses_a_call_that_reads_a_fused_output_elsewhere():
  x = jax.random.normal(jax.random.key(1), (2, 8))
  model = Features()
  variables = model.init(jax.random.key(0), x)
  exported = pcs.export(variables, model=model, inputs=x, format='csr')
  assert exported.epilogue(('Dense_0',)).activation == 'relu'
  with pytest.raises(ValueError, match=r"\['Dense_0'\].*call_kwargs"):
    exported.bind(model, variables, features=True)(x)
  features = pcs.export(variables, model=model, inputs=x, format='csr',
                        call_kwargs={'features': True})
  assert not features.epilogues
  for got, want in zip(features.bind(model, variables, features=True)(x),
                       model.apply(variables, x, features=True)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


class Counting(nn.Module):
  """Writes a collection on every call (as a decoding cache does)."""

  @nn.compact
  def __call__(self, x):
    calls = self.variable('cache', 'calls', jnp.zeros, (), jnp.int32)
    calls.value += 1
    return nn.Dense(3)(nn.relu(nn.Dense(16)(x)))


def test_a_model_that_cannot_be_traced_as_exported_exports_without_moving_relus():
  x = jax.random.normal(jax.random.key(1), (2, 8))
  model = Counting()
  variables = model.init(jax.random.key(0), x)
  exported = pcs.export(variables, model=model, inputs=x, format='csr')
  assert set(exported) == {('Dense_0',), ('Dense_1',)} and not exported.epilogues


class NnxNet(nnx.Module):

  def __init__(self, rngs):
    self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.norm = nnx.BatchNorm(8, rngs=rngs)
    self.inner = nnx.Conv(8, 8, (3, 3), rngs=rngs)
    self.head = nnx.Linear(8 * 36, 4, rngs=rngs)

  def __call__(self, x):
    y = nnx.relu(self.norm(self.conv(x)))
    y = y + nnx.relu(self.inner(y))          # the residual is y, not inner's output
    return self.head(y.reshape(y.shape[0], -1))


def test_nnx_export_fuses_the_relus_it_finds_and_binds_without_them():
  model = NnxNet(nnx.Rngs(0))
  model.norm.mean.set_value(jnp.linspace(-0.3, 0.3, 8))
  model.norm.var.set_value(jnp.linspace(0.5, 2.0, 8))
  model.eval()
  pruned, _ = pcs.prune(nnx.state(model, nnx.Param), 0.7)
  nnx.update(model, pruned)
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))
  exported = pcs.export(model, inputs=x, format='csr')
  assert {p for p, e in exported.epilogues.items() if e.activation == 'relu'} == {
      ('conv',), ('inner',)}
  sparse = sparse_nnx.sparsify(model, exported)
  bound = sparse_nnx.bind(sparse)
  assert _relu_eqns(bound, x) == 0
  np.testing.assert_allclose(bound(x), model(x), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(nnx.jit(lambda m, v: m(v))(sparse, x), model(x), rtol=1e-4,
                             atol=1e-4)


def test_fuse_relu_takes_auto_or_a_list():
  model, variables, x = _pruned_net()
  with pytest.raises(ValueError, match=r"`fuse_relu` must be 'auto' or a list.*\['Dense_0'\]"):
    pcs.export(variables, model=model, inputs=x, format='csr', fuse_relu='Dense_0')
  with pytest.raises(ValueError, match=r"`fuse_relu` must be 'auto' or a list.*None"):
    pcs.export(variables, model=model, inputs=x, format='csr', fuse_relu=None)
  # Without the model there is nothing to trace: 'auto' fuses none.
  assert not pcs.export(variables['params'], format='csr').epilogues
