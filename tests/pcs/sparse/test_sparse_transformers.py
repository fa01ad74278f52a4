"""Attention models export, run sparse and decode: every projection of
``nnx.MultiHeadAttention`` / linen ``MultiHeadDotProductAttention`` (LinearGeneral kernels of
shape (in, heads, head_dim) and (heads, head_dim, out)) as a 2-D sparse product.

The independent computation is the dense model's own forward pass and its cached decoding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pcs
from pcs.sparse import nnx as sparse_nnx

VOCAB, WIDTH, HEADS, LENGTH = 32, 32, 4, 8


class Block(nnx.Module):
  """Pre-norm attention and MLP, as a decoder block."""

  def __init__(self, rngs, kv_heads=None):
    self.norm1, self.norm2 = nnx.LayerNorm(WIDTH, rngs=rngs), nnx.LayerNorm(WIDTH, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(HEADS, WIDTH, decode=False, rngs=rngs)
    self.up, self.down = nnx.Linear(WIDTH, 4 * WIDTH, rngs=rngs), nnx.Linear(4 * WIDTH, WIDTH,
                                                                              rngs=rngs)

  def __call__(self, x, decode=None):
    x = x + self.attn(self.norm1(x), mask=None if decode else nnx.make_causal_mask(x[..., 0]),
                      decode=decode)
    return x + self.down(nnx.relu(self.up(self.norm2(x))))


class Decoder(nnx.Module):
  """A 2-block decoder-only language model with token and position embeddings."""

  def __init__(self, rngs):
    self.tokens = nnx.Embed(VOCAB, WIDTH, rngs=rngs)
    self.positions = nnx.Embed(LENGTH, WIDTH, rngs=rngs)
    self.blocks = nnx.List([Block(rngs) for _ in range(2)])
    self.head = nnx.Linear(WIDTH, VOCAB, rngs=rngs)

  def __call__(self, tokens, positions, decode=None):
    x = self.tokens(tokens) + self.positions(positions)
    for block in self.blocks:
      x = block(x, decode=decode)
    return self.head(x)


class GroupedQueryAttention(nnx.Module):
  """Grouped-query attention: 4 query heads share 2 key/value heads (LinearGeneral)."""

  def __init__(self, rngs):
    self.query = nnx.LinearGeneral(WIDTH, (4, 8), rngs=rngs)
    self.key = nnx.LinearGeneral(WIDTH, (2, 8), rngs=rngs)
    self.value = nnx.LinearGeneral(WIDTH, (2, 8), rngs=rngs)
    self.out = nnx.LinearGeneral((4, 8), WIDTH, axis=(-2, -1), rngs=rngs)

  def __call__(self, x):
    q, k, v = self.query(x), self.key(x), self.value(x)
    k, v = jnp.repeat(k, 2, axis=-2), jnp.repeat(v, 2, axis=-2)
    return self.out(nnx.dot_product_attention(q, k, v))


def _pruned(model, sparsity=0.9):
  pruned, _ = pcs.prune(nnx.state(model, nnx.Param), sparsity, scope='layerwise',
                        where=pcs.kernels)
  nnx.update(model, pruned)
  return model


def _tokens(batch=2):
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (batch, LENGTH)))
  return tokens, jnp.broadcast_to(jnp.arange(LENGTH), tokens.shape)


def test_nnx_decoder_exports_every_projection_and_equals_dense():
  model = _pruned(Decoder(nnx.Rngs(0)))
  tokens, positions = _tokens()
  expected = model(tokens, positions)
  sparse = sparse_nnx.sparsify(model, format='csr')
  kinds = [type(node).__name__ for _, node in nnx.iter_graph(sparse)]
  # q, k, v, out in each of 2 blocks; up, down and the head.
  assert kinds.count('SparseLinearGeneral') == 8 and kinds.count('SparseLinear') == 5
  assert 'Embed' in kinds  # embeddings are not kernels: they stay
  np.testing.assert_allclose(sparse(tokens, positions), expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(sparse_nnx.bind(sparse)(tokens, positions), expected, rtol=1e-4,
                             atol=1e-4)
  # The measured export runs the probe through the attention layers too.
  measured = pcs.export(model, inputs=tokens, call_kwargs={'positions': positions})
  assert len(measured.choices) == 13
  np.testing.assert_allclose(sparse_nnx.sparsify(model, measured)(tokens, positions), expected,
                             rtol=1e-4, atol=1e-4)


def test_a_where_that_leaves_attention_out_keeps_it_dense_and_the_probe_follows_it():
  model = _pruned(Decoder(nnx.Rngs(1)))
  tokens, positions = _tokens()
  only_mlp = lambda path, leaf: (path[-1].key == 'kernel' and leaf.ndim == 2)
  exported = pcs.export(model, inputs=tokens, format='csr', where=only_mlp,
                        call_kwargs={'positions': positions})
  assert len(exported) == 5 and all(len(layer.kernel_shape) == 2 for layer in exported.values())
  sparse = sparse_nnx.sparsify(model, exported)
  assert not any(type(n).__name__ == 'SparseLinearGeneral' for _, n in nnx.iter_graph(sparse))
  np.testing.assert_allclose(sparse(tokens, positions), model(tokens, positions), rtol=1e-4,
                             atol=1e-4)
  # The probe records the inputs of the layers `where` selects, and of no other.
  probed = sparse_nnx.probe(model, tokens, where=only_mlp, positions=positions)
  mlp = {('blocks', b, name) for b in (0, 1) for name in ('up', 'down')} | {('head',)}
  assert set(probed.inputs) == mlp
  assert len(sparse_nnx.probe(model, tokens, positions=positions).inputs) == 13


def test_half_precision_inputs_to_attention_return_what_the_dense_layers_return():
  """A bfloat16 or float16 model: the sparse attention projections (LinearGeneral) and the
  linen DenseGeneral path take the input's dtype and return it, as the dense layers do."""
  from flax import linen as nn
  for dtype in (jnp.bfloat16, jnp.float16):
    model = _pruned(Decoder(nnx.Rngs(5)))
    sparse = sparse_nnx.sparsify(model, pcs.export(model, format='csr'))
    x = jax.random.normal(jax.random.key(0), (2, LENGTH, WIDTH)).astype(dtype)
    attn, sparse_attn = model.blocks[0].attn, sparse.blocks[0].attn
    assert type(sparse_attn.query).__name__ == 'SparseLinearGeneral'
    for dense_layer, sparse_layer in ((attn.query, sparse_attn.query),
                                      (attn.out, sparse_attn.out)):
      inputs = x if dense_layer is attn.query else x.reshape(2, LENGTH, HEADS, WIDTH // HEADS)
      got, want = sparse_layer(inputs), dense_layer(inputs)
      assert got.dtype == want.dtype  # float32 params promote a half input, as dense does
      np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=2e-2, atol=2e-2)
    linen = nn.MultiHeadDotProductAttention(num_heads=HEADS, qkv_features=WIDTH, dtype=dtype)
    params = linen.init(jax.random.key(1), x[:1].astype(jnp.float32))['params']
    pruned, _ = pcs.prune(params, 0.7)
    exported = pcs.export(pruned, model=linen, inputs=x[:1].astype(jnp.float32), format='csr')
    assert len(exported) == 4
    got = pcs.sparse_apply(linen, {'params': pruned}, exported, x)
    want = linen.apply({'params': pruned}, x)
    assert got.dtype == want.dtype == dtype  # the module computes in its dtype
    np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=5e-2, atol=5e-2)


def test_a_linen_kernel_of_unknown_layout_stays_dense_without_the_model_and_runs_with_it():
  """A DenseGeneral not named as an attention projection: its 3-D kernel could be a
  convolution's; without the model the export keeps it dense and says to pass the model."""
  from flax import linen as nn

  class Heads(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(WIDTH)(nn.DenseGeneral((HEADS, 8), axis=-1)(x).reshape(x.shape[:-1] + (-1,)))

  model, x = Heads(), jax.random.normal(jax.random.key(0), (2, WIDTH))
  params, _ = pcs.prune(model.init(jax.random.key(1), x)['params'], 0.8)
  variables, expected = {'params': params}, model.apply({'params': params}, x)
  blind = pcs.export(params, format='csr')
  general = next(c for c in blind.choices if c.path == ('DenseGeneral_0',))
  assert general.format == 'dense' and 'pass `model=` and `inputs=`' in general.reason
  assert list(blind) == [('Dense_0',)]
  np.testing.assert_allclose(pcs.sparse_apply(model, variables, blind, x), expected, rtol=1e-4,
                             atol=1e-4)
  seen = pcs.export(params, model=model, inputs=x, format='csr')
  assert sorted(seen) == [('DenseGeneral_0',), ('Dense_0',)]
  np.testing.assert_allclose(pcs.sparse_apply(model, variables, seen, x), expected, rtol=1e-4,
                             atol=1e-4)


def _greedy(model, prompt, steps):
  """Greedy decoding with the attention cache, one token per call."""
  for block in model.blocks:
    block.attn.init_cache((1, LENGTH, WIDTH))
  step = nnx.jit(lambda m, t, p: m(t, p, decode=True))
  tokens, token = [], prompt
  for i in range(steps):
    logits = step(model, jnp.asarray([[token]]), jnp.asarray([[i]]))
    token = int(jnp.argmax(logits[0, -1]))
    tokens.append(token)
  return tokens


def test_cached_decoding_with_the_sparse_model_and_after_loading_it(tmp_path):
  model = _pruned(Decoder(nnx.Rngs(2)))
  exported = pcs.export(model, format='csr')
  expected = _greedy(model, 3, LENGTH)
  assert _greedy(sparse_nnx.sparsify(model, exported), 3, LENGTH) == expected
  path = str(tmp_path / 'decoder.npz')
  pcs.sparse.save(path, exported, nnx.state(model, nnx.Param))
  loaded = pcs.sparse.load(path, Decoder(nnx.Rngs(9)))
  assert _greedy(loaded, 3, LENGTH) == expected


def test_grouped_query_attention_exports_and_equals_dense():
  model = _pruned(GroupedQueryAttention(nnx.Rngs(3)))
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, LENGTH, WIDTH)), jnp.float32)
  sparse = sparse_nnx.sparsify(model, inputs=x, margin=0.0)
  assert {c.path[0] for c in pcs.export(model, format='csr').choices} == {
      'query', 'key', 'value', 'out'}
  np.testing.assert_allclose(sparse(x), model(x), rtol=1e-4, atol=1e-4)
  exported = pcs.export(model, format='csr')
  assert exported[('key',)].kernel_shape == (WIDTH, 16)  # (in, kv_heads x head_dim)
  assert exported[('out',)].kernel_shape == (32, WIDTH)  # (heads x head_dim, out)
  np.testing.assert_allclose(sparse_nnx.sparsify(model, exported)(x), model(x), rtol=1e-4,
                             atol=1e-4)


@pytest.mark.parametrize('fmt', ['csr', 'auto'])
def test_linen_attention_exports_and_equals_dense(fmt):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Model(nn.Module):
    @nn.compact
    def __call__(self, tokens):
      x = nn.Embed(VOCAB, WIDTH)(tokens)
      x = x + nn.MultiHeadDotProductAttention(HEADS)(x, mask=nn.make_causal_mask(tokens))
      return nn.Dense(VOCAB)(nn.relu(nn.Dense(4 * WIDTH)(x)))

  model = Model()
  tokens, _ = _tokens()
  variables = model.init(jax.random.key(0), tokens)
  pruned, _ = pcs.prune(variables['params'], 0.9, scope='layerwise')
  exported = pcs.export(pruned, model=model, inputs=tokens, format=fmt, margin=0.0)
  expected = model.apply({'params': pruned}, tokens)
  if fmt == 'csr':
    attention = {c.path[-1] for c in exported.choices if c.path[0].startswith('MultiHead')}
    assert attention == {'query', 'key', 'value', 'out'} and len(exported) == 6
    assert exported[('MultiHeadDotProductAttention_0', 'out')].kernel_shape == (WIDTH, WIDTH)
  np.testing.assert_allclose(exported.bind(model, {'params': pruned})(tokens), expected,
                             rtol=1e-4, atol=1e-4)


def test_an_einsum_projection_runs_sparse_and_one_with_batch_axes_stays_dense():
  class WithEinsum(nnx.Module):
    def __init__(self, rngs):
      self.mix = nnx.Einsum('btd,dnh->btnh', (WIDTH, 4, 8), (4, 8), rngs=rngs)  # a projection
      self.per_head = nnx.Einsum('btnh,nhk->btnk', (4, 8, 8), rngs=rngs)  # n: a batch axis
      self.proj = nnx.Linear(WIDTH, WIDTH, rngs=rngs)

    def __call__(self, x):
      return self.per_head(self.mix(self.proj(x)))

  model = _pruned(WithEinsum(nnx.Rngs(4)))
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, LENGTH, WIDTH)), jnp.float32)
  exported = pcs.export(model, format='csr')
  assert set(exported) == {('proj',), ('mix',)}
  assert exported[('mix',)].kernel_shape == (WIDTH, 32)  # (d, n x h)
  assert 'nnx.Einsum that is not one product' in exported.summary()
  sparse = sparse_nnx.sparsify(model, exported)
  assert type(sparse.mix).__name__ == 'SparseLinearGeneral'
  np.testing.assert_allclose(sparse(x), model(x), rtol=1e-4, atol=1e-4)
  # N:M groups along the Einsum's contracted axis, and the N:M export runs it.
  projections = lambda path, leaf: path[0].key in ('mix', 'proj') and path[-1].key == 'kernel'
  pruned, _ = pcs.prune(nnx.state(model, nnx.Param), n_m=(2, 4), where=projections,
                        layouts=pcs.kernel_layouts(model))
  nnx.update(model, pruned)
  n_m = pcs.export(model, format='n_m', n_m=(2, 4), where=projections)
  assert {type(layer).__name__ for layer in n_m.values()} == {'NM'}
  np.testing.assert_allclose(sparse_nnx.sparsify(model, n_m)(x), model(x), rtol=1e-4,
                             atol=1e-4)


def test_a_linen_einsum_stays_dense_given_the_model_and_the_summary_says_why():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Model(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Einsum((WIDTH, 4, 8), 'btd,dnh->btnh')(nn.Dense(WIDTH)(x))

  model = Model()
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, LENGTH, WIDTH)), jnp.float32)
  params, _ = pcs.prune(model.init(jax.random.key(0), x)['params'], 0.9, scope='layerwise')
  exported = pcs.export(params, model=model, inputs=x, format='csr')
  assert set(exported) == {('Dense_0',)} and 'Einsum layers run dense' in exported.summary()
  np.testing.assert_allclose(exported.bind(model, {'params': params})(x),
                             model.apply({'params': params}, x), rtol=1e-5, atol=1e-5)


def test_convolutions_the_kernels_cannot_take_stay_dense_and_bind_takes_a_sparse_copy():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Separable(nnx.Module):  # depthwise (grouped) then pointwise
    def __init__(self, rngs):
      self.dw = nnx.Conv(4, 4, (3, 3), feature_group_count=4, rngs=rngs)
      self.pw = nnx.Conv(4, 8, (1, 1), rngs=rngs)

    def __call__(self, x):
      return self.pw(nnx.relu(self.dw(x)))

  model = _pruned(Separable(nnx.Rngs(5)), 0.5)
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 9, 9, 4)), jnp.float32)
  for exported in (pcs.export(model, format='csr'), pcs.export(model, inputs=x, margin=0.0)):
    assert ('dw',) not in exported
    assert 'feature_group_count=1' in {c.path: c for c in exported.choices}[('dw',)].reason
  exported = pcs.export(model, format='csr')
  sparse = sparse_nnx.sparsify(model, exported)
  for run in (exported.bind(model), exported.bind(sparse)):  # the dense model or its copy
    np.testing.assert_allclose(run(x), model(x), rtol=1e-4, atol=1e-4)

  class Linen(nn.Module):  # a 1-D window given as an int, and a grouped convolution
    @nn.compact
    def __call__(self, x):
      return nn.Conv(4, 3)(nn.Conv(4, (3,), feature_group_count=2)(x))

  linen_model = Linen()
  signal = jnp.asarray(np.random.default_rng(5).normal(size=(2, 12, 4)), jnp.float32)
  params, _ = pcs.prune(linen_model.init(jax.random.key(0), signal)['params'], 0.5,
                        scope='layerwise')
  linen_exported = pcs.export(params, model=linen_model, inputs=signal, format='csr')
  assert set(linen_exported) == {('Conv_0',)}  # Conv_0, made first, is the outer one
  np.testing.assert_allclose(linen_exported.bind(linen_model, {'params': params})(signal),
                             linen_model.apply({'params': params}, signal), rtol=1e-4,
                             atol=1e-4)


def _groups_of_four_along_the_inputs(kernel, in_axes):
  """Nonzeros per group of 4 consecutive inputs of a kernel: its input axes moved first and
  flattened, as a 2-D (inputs, outputs) matrix, grouped down its columns (by hand)."""
  kernel = np.asarray(kernel)
  out_axes = [a for a in range(kernel.ndim) if a not in in_axes]
  matrix = np.transpose(kernel, list(in_axes) + out_axes).reshape(
      int(np.prod([kernel.shape[a] for a in in_axes])), -1)
  return (matrix.reshape(-1, 4, matrix.shape[1]) != 0).sum(axis=1)


def test_n_m_on_every_attention_projection_exports_and_equals_dense_in_nnx_and_linen():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  # NNX: q, k, v are (in, heads, head_dim), out is (heads, head_dim, out); 2:4 along inputs.
  model = Decoder(nnx.Rngs(5))
  pruned, _ = pcs.prune(nnx.state(model, nnx.Param), n_m=(2, 4),
                        layouts=pcs.kernel_layouts(model))
  nnx.update(model, pruned)
  attention = model.blocks[0].attn
  for layer, in_axes in (('query', (0,)), ('key', (0,)), ('value', (0,)), ('out', (0, 1))):
    kernel = getattr(attention, layer).kernel[...]
    assert (_groups_of_four_along_the_inputs(kernel, in_axes) == 2).all(), layer
  tokens, positions = _tokens()
  exported = pcs.export(model, format='n_m', n_m=(2, 4))
  assert len(exported) == 13 and {type(w).__name__ for w in exported.values()} == {'NM'}
  assert exported[('blocks', 0, 'attn', 'out')].kernel_shape == (WIDTH, WIDTH)
  np.testing.assert_allclose(sparse_nnx.sparsify(model, exported)(tokens, positions),
                             model(tokens, positions), rtol=1e-4, atol=1e-4)

  # linen: MultiHeadDotProductAttention's DenseGeneral kernels, and grouped-query attention
  # written with DenseGeneral (4 query heads share 2 key/value heads).
  class Model(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = x + nn.MultiHeadDotProductAttention(HEADS)(x)
      q = nn.DenseGeneral((4, 8), name='query')(x)
      k = jnp.repeat(nn.DenseGeneral((2, 8), name='key')(x), 2, axis=-2)
      v = jnp.repeat(nn.DenseGeneral((2, 8), name='value')(x), 2, axis=-2)
      return nn.DenseGeneral(WIDTH, axis=(-2, -1), name='out')(
          nn.dot_product_attention(q, k, v))

  linen_model = Model()
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, LENGTH, WIDTH)), jnp.float32)
  params = linen_model.init(jax.random.key(1), x)['params']
  params, _ = pcs.prune(params, n_m=(2, 4), layouts=pcs.kernel_layouts(linen_model, x))
  assert (_groups_of_four_along_the_inputs(params['out']['kernel'], (0, 1)) == 2).all()
  assert (_groups_of_four_along_the_inputs(
      params['MultiHeadDotProductAttention_0']['out']['kernel'], (0, 1)) == 2).all()
  for options in ({'format': 'n_m', 'n_m': (2, 4)}, {'format': 'csr'}):
    linen_exported = pcs.export(params, model=linen_model, inputs=x, **options)
    assert len(linen_exported) == 8, linen_exported.summary()  # 4 + 4 projections
    assert linen_exported[('key',)].kernel_shape == (WIDTH, 16)  # (in, kv_heads x head_dim)
    np.testing.assert_allclose(linen_exported.bind(linen_model, {'params': params})(x),
                               linen_model.apply({'params': params}, x), rtol=1e-4, atol=1e-4)
