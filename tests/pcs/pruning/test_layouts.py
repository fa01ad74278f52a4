"""What is sparsified, by name, and N:M on every kernel layout, against hand-written loops.

The N:M reference never uses a layout: for each layer kind a loop written by hand lists
every output unit's fan-in vector (the weights one output sums over, in the order a
2-D product would flatten them), and each group of M consecutive weights there must keep
exactly its N largest magnitudes.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import pcs
from pcs.pruning import _masks as pruning
from tests import helpers

# Fan-in vectors of every output unit, by hand, per layer kind.
UNITS = {
    'dense': lambda k: [k[:, o] for o in range(k.shape[1])],                 # (in, out)
    'conv1d': lambda k: [k[t, :, o] for t in range(k.shape[0])              # (k, in, out)
                         for o in range(k.shape[2])],
    'conv2d': lambda k: [k[a, b, :, o] for a in range(k.shape[0])           # (h, w, in, out)
                         for b in range(k.shape[1]) for o in range(k.shape[3])],
    'to_heads': lambda k: [k[:, h, d] for h in range(k.shape[1])            # (in, heads, dim)
                           for d in range(k.shape[2])],
    'from_heads': lambda k: [np.array([k[h, d, o] for h in range(k.shape[0])  # (heads, dim,
                                       for d in range(k.shape[1])])          #  out)
                             for o in range(k.shape[2])],
    'middle_in': lambda k: [k[n, :, h] for n in range(k.shape[0])           # (heads, in, dim)
                            for h in range(k.shape[2])],
}
UNITS['batched'] = UNITS['middle_in']  # (batch, in, out): one product per batch index


def assert_n_m(kernel, mask, kind, n=2, m=4):
  kernel, mask = np.abs(np.asarray(kernel)), np.asarray(mask)
  for weights, kept in zip(UNITS[kind](kernel), UNITS[kind](mask)):
    assert weights.size % m == 0
    for start in range(0, weights.size, m):
      group, keep = weights[start:start + m], kept[start:start + m]
      assert keep.sum() == n, (kind, group, keep)
      assert group[keep].min() >= group[~keep].max(), (kind, group, keep)


class Layers(nnx.Module):
  """One NNX layer of each kind."""

  def __init__(self, rngs):
    self.dense = nnx.Linear(8, 12, rngs=rngs)
    self.conv1d = nnx.Conv(8, 6, (3,), rngs=rngs)
    self.conv2d = nnx.Conv(8, 6, (3, 3), rngs=rngs)
    self.to_heads = nnx.LinearGeneral(16, (4, 8), rngs=rngs)
    self.from_heads = nnx.LinearGeneral((4, 8), 16, axis=(-2, -1), rngs=rngs)
    self.batched = nnx.LinearGeneral(8, 6, batch_axis={0: 3}, rngs=rngs)
    self.einsum = nnx.Einsum('btd,ndh->btnh', (4, 16, 8), rngs=rngs)
    self.per_head = nnx.Einsum('bnd,ndk->bnk', (2, 8, 6), rngs=rngs)
    self.attn = nnx.MultiHeadAttention(4, 16, qkv_features=32, decode=False, rngs=rngs)
    self.embed = nnx.Embed(20, 8, rngs=rngs)


NNX_KINDS = {
    'dense/kernel': 'dense', 'conv1d/kernel': 'conv1d', 'conv2d/kernel': 'conv2d',
    'to_heads/kernel': 'to_heads', 'from_heads/kernel': 'from_heads',
    'batched/kernel': 'batched', 'einsum/kernel': 'middle_in',
    'per_head/kernel': 'batched', 'attn/query/kernel': 'to_heads',
    'attn/key/kernel': 'to_heads', 'attn/value/kernel': 'to_heads',
    'attn/out/kernel': 'from_heads', 'embed/embedding': 'dense'}


class LinenLayers(nn.Module):
  """One linen layer of each kind."""

  @nn.compact
  def __call__(self, batch):
    seq, img = batch['seq'], batch['img']
    nn.Dense(12, name='dense')(seq[..., :8])
    nn.Conv(6, (3,), name='conv1d')(seq[..., :8])
    nn.Conv(6, (3, 3), name='conv2d')(img)
    heads = nn.DenseGeneral((4, 8), name='to_heads')(seq)
    nn.DenseGeneral(16, axis=(-2, -1), name='from_heads')(heads)
    nn.DenseGeneral(6, batch_dims=(0,), name='batched')(batch['grouped'])
    nn.Einsum((4, 16, 8), 'btd,ndh->btnh', use_bias=False, name='einsum')(seq)
    nn.Einsum((2, 8, 6), 'bnd,ndk->bnk', use_bias=False, name='per_head')(batch['per_head'])
    nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32, name='attn')(seq)
    return nn.Embed(20, 8, name='embed')(batch['tokens'])


LINEN_BATCH = {'seq': jnp.ones((2, 5, 16)), 'img': jnp.ones((2, 6, 6, 8)),
               'grouped': jnp.ones((3, 5, 8)), 'per_head': jnp.ones((5, 2, 8)),
               'tokens': jnp.zeros((2, 5), jnp.int32)}


def _names(tree):
  """{'a/b/kernel': leaf} of a (pure or NNX) params tree."""
  flat = jax.tree_util.tree_flatten_with_path(pcs.core._boundary.plain(tree))[0]  # pylint: disable=protected-access
  return {pcs.core._paths.path_name(path): leaf for path, leaf in flat}  # pylint: disable=protected-access


def _randomized(tree, seed=0):
  """Distinct random values in every leaf (so no two magnitudes tie)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), tree)


def _check_every_kind(params, masks, kinds):
  kernels, kept = _names(params), _names(masks)
  for name, kind in kinds.items():
    assert_n_m(kernels[name], kept[name], kind)


def test_nnx_layouts_give_n_m_along_the_real_input_axes_of_every_kind():
  model = Layers(nnx.Rngs(0))
  layouts = pcs.kernel_layouts(model)
  assert {'/'.join(map(str, k)) for k in layouts} == set(NNX_KINDS)
  params = _randomized(nnx.state(model, nnx.Param))
  pruned, masks = pcs.prune(params, n_m=(2, 4), where=pcs.kernels_and_embeddings,
                            layouts=layouts)
  _check_every_kind(params, masks, NNX_KINDS)
  for name, kernel in _names(pruned).items():  # pruned = params where kept, 0 elsewhere
    np.testing.assert_array_equal(kernel, np.where(_names(masks)[name], _names(params)[name], 0))


def test_linen_layouts_give_n_m_along_the_real_input_axes_of_every_kind():
  model = LinenLayers()
  params = _randomized(model.init(jax.random.key(0), LINEN_BATCH)['params'])
  layouts = pcs.kernel_layouts(model, LINEN_BATCH)
  assert {'/'.join(map(str, k)) for k in layouts} == set(NNX_KINDS)
  _, masks = pcs.prune(params, n_m=(2, 4), where=pcs.kernels_and_embeddings,
                       layouts=layouts)
  _check_every_kind(params, masks, NNX_KINDS)


def test_the_reference_fails_for_groups_along_the_heads_axis():
  """The check can fail: axis -2 of a query kernel (in, heads, head_dim) is the heads."""
  kernel = np.random.default_rng(0).normal(size=(16, 4, 8))
  moved = np.moveaxis(np.abs(kernel), -2, -1)
  ranks = moved.reshape(16, 8, 1, 4).argsort(-1).argsort(-1)
  along_heads = np.moveaxis((ranks >= 2).reshape(moved.shape), -1, -2)
  with pytest.raises(AssertionError):
    assert_n_m(kernel, along_heads, 'to_heads')


def test_attention_and_conv_names_need_no_layouts():
  """Flax's attention projections and layers named like conv are known by name alone."""
  model = LinenLayers()
  params = _randomized(model.init(jax.random.key(0), LINEN_BATCH)['params'])
  named = ('dense/kernel', 'conv1d/kernel', 'conv2d/kernel', 'attn/query/kernel',
           'attn/key/kernel', 'attn/value/kernel', 'attn/out/kernel')
  where = lambda path, leaf: pcs.core._paths.path_name(path) in named  # pylint: disable=protected-access
  _, masks = pcs.prune(params, n_m=(2, 4), where=where)
  _check_every_kind(params, masks, {name: NNX_KINDS[name] for name in named})
  nnx_attention = nnx.MultiHeadAttention(4, 16, qkv_features=32, decode=False,
                                         rngs=nnx.Rngs(0))
  params = _randomized(nnx.state(nnx_attention, nnx.Param))
  _, masks = pcs.prune(params, n_m=(2, 4))
  _check_every_kind(params, masks, {f'{p}/kernel': NNX_KINDS[f'attn/{p}/kernel']
                                    for p in ('query', 'key', 'value', 'out')})


def test_a_kernel_of_unknown_layout_is_refused_naming_it_and_how_to_pass_it():
  model = LinenLayers()
  params = model.init(jax.random.key(0), LINEN_BATCH)['params']
  with pytest.raises(ValueError) as error:
    pcs.prune(params, n_m=(2, 4), where=lambda path, leaf: path[0].key == 'to_heads'
              and path[-1].key == 'kernel')
  message = str(error.value)
  for part in ('to_heads/kernel', '(16, 4, 8)', 'axis -2', 'of size 4',
               'pcs.kernel_layouts(model', 'pcs.KernelLayout(in_axes='):
    assert part in message, (part, message)


@pytest.mark.parametrize('layouts,message', [
    ({'w': pcs.KernelLayout(in_axes=(0,), out_axes=(1,))}, 'name each of its 3 axes'),
    ({('w',): pcs.KernelLayout(in_axes=(), out_axes=(0, 1, 2))}, 'at least one in axis'),
    ({'w': (0, 1)}, 'must map parameter paths to pcs.KernelLayout'),
    ({'w': pcs.KernelLayout(in_axes=(2,), out_axes=(0, 1))}, r'M = 4 must divide the fan-in'),
])
def test_bad_layouts_are_refused(layouts, message):
  params = {'w': jnp.ones((8, 4, 6))}
  with pytest.raises(ValueError, match=message):
    pcs.prune(params, n_m=(2, 4), layouts=layouts)


def test_string_and_tuple_layout_keys_agree_with_the_hand_loop():
  params = _randomized({'blocks': [{'w': jnp.ones((4, 8, 6))}]})
  layout = pcs.KernelLayout(in_axes=(0, 1), out_axes=(2,))
  _, by_tuple = pcs.prune(params, n_m=(2, 4), layouts={('blocks', 0, 'w'): layout})
  _, by_string = pcs.prune(params, n_m=(2, 4), layouts={'blocks/0/w': layout})
  assert_n_m(params['blocks'][0]['w'], by_tuple['blocks'][0]['w'], 'from_heads')
  np.testing.assert_array_equal(by_tuple['blocks'][0]['w'], by_string['blocks'][0]['w'])


def test_erk_scores_an_attention_kernel_as_its_matrix():
  """ERK's score of (in, heads, head_dim) is that of the matrix (in, heads * head_dim)."""
  params = _randomized({'attn': {'query': {'kernel': jnp.ones((16, 4, 8))}},
                        'dense': {'kernel': jnp.ones((32, 10))}})
  pruned, _ = pcs.prune(params, 0.8, scope='erk')
  densities = pruning.erk_densities([(16, 32), (32, 10)], 0.8)
  zeros = {layer.name: layer.zeros for layer in pcs.summary(pruned).layers}
  assert zeros["['attn']['query']['kernel']"] == round((1 - float(densities[0])) * 512)
  assert zeros["['dense']['kernel']"] == round((1 - float(densities[1])) * 320)


class TinyTransformer(nnx.Module):
  """Token and position embeddings, one attention block with layer norms, an MLP, a head."""

  def __init__(self, rngs, vocab=20, length=6, width=16):
    self.tokens = nnx.Embed(vocab, width, rngs=rngs)
    self.positions = nnx.Embed(length, width, rngs=rngs)
    self.norm1 = nnx.LayerNorm(width, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(4, width, decode=False, rngs=rngs)
    self.norm2 = nnx.LayerNorm(width, rngs=rngs)
    self.hidden = nnx.Linear(width, 4 * width, rngs=rngs)
    self.proj = nnx.Linear(4 * width, width, rngs=rngs)
    self.head = nnx.Linear(width, vocab, rngs=rngs)

  def __call__(self, tokens):
    x = self.tokens(tokens) + self.positions(jnp.arange(tokens.shape[-1]))
    x = x + self.attn(self.norm1(x))
    x = x + self.proj(nnx.relu(self.hidden(self.norm2(x))))
    return self.head(x)


class LinenTransformer(nn.Module):

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(20, 16)(tokens)
    x = x + nn.MultiHeadDotProductAttention(num_heads=4)(x)
    return nn.Dense(20)(x)


NNX_KERNELS = {'attn/query/kernel', 'attn/key/kernel', 'attn/value/kernel',
               'attn/out/kernel', 'hidden/kernel', 'proj/kernel', 'head/kernel'}
LINEN_KERNELS = {f'MultiHeadDotProductAttention_0/{p}/kernel'
                 for p in ('query', 'key', 'value', 'out')} | {'Dense_0/kernel'}


def _selected(params, where=None):
  return {name for name, chosen in _names(pcs.select(params, where)).items() if chosen}


def test_the_default_takes_the_kernels_of_a_transformer_not_embeddings_or_biases():
  params = nnx.state(TinyTransformer(nnx.Rngs(0)), nnx.Param)
  assert _selected(params) == NNX_KERNELS
  assert _selected(params, pcs.kernels) == NNX_KERNELS
  assert _selected(params, pcs.kernels_and_embeddings) == NNX_KERNELS | {
      'tokens/embedding', 'positions/embedding'}
  # The attention biases are 2-D (heads, head_dim), and stay out.
  assert _names(params)['attn/query/bias'].shape == (4, 4)
  linen_params = LinenTransformer().init(jax.random.key(0), jnp.zeros((1, 6), jnp.int32))
  assert _selected(linen_params['params']) == LINEN_KERNELS
  assert _selected(linen_params['params'], pcs.kernels_and_embeddings) == LINEN_KERNELS | {
      'Embed_0/embedding'}


def test_pilot_leaves_the_embeddings_of_an_nnx_transformer_alone():
  model = TinyTransformer(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, pcs.pilot(optax.adam(1e-2), alpha=0.1), wrt=nnx.Param)
  tokens = jnp.arange(12).reshape(2, 6) % 20
  before = _names(nnx.state(model, nnx.Param))

  @nnx.jit
  def step(model, optimizer):
    loss = lambda model: optax.softmax_cross_entropy_with_integer_labels(
        model(tokens), tokens).mean()
    optimizer.update(model, nnx.grad(loss)(model))

  step(model, optimizer)
  params = nnx.state(model, nnx.Param)
  factors = pcs.latents(optimizer.opt_state, params)
  assert {n for n, m in _names(factors.m).items()} == NNX_KERNELS  # holes have no leaves
  # The embeddings take adam's step alone, undecayed (after one step their gradient is
  # still the bare model's).
  bare = TinyTransformer(nnx.Rngs(0))
  bare_optimizer = nnx.Optimizer(bare, optax.adam(1e-2), wrt=nnx.Param)
  step(bare, bare_optimizer)
  after, reference = _names(params), _names(nnx.state(bare, nnx.Param))
  for name in ('tokens/embedding', 'positions/embedding'):
    assert not np.allclose(after[name], before[name])
    np.testing.assert_allclose(after[name], reference[name], rtol=1e-5, atol=1e-6)


WHERE_A = lambda path, leaf: path[-1].key == 'a'

OWN_WHERE = {
    'pilot': lambda: pcs.pilot(optax.sgd(0.1), alpha=1e-2, where=WHERE_A),
    'spred': lambda: pcs.spred(optax.sgd(0.1), weight_decay=1e-2, where=WHERE_A),
    'mirror': lambda: pcs.mirror(optax.sgd(0.1), alpha=1e-2, learning_rate=0.1,
                                 where=WHERE_A),
    'soft_threshold': lambda: pcs.soft_threshold(optax.sgd(0.1), weight_decay=1e-2,
                                                 where=WHERE_A),
    'l1': lambda: pcs.l1(optax.sgd(0.1), strength=1e-2, learning_rate=0.1, where=WHERE_A),
    'gmp': lambda: pcs.gmp(optax.sgd(0.1), final_sparsity=0.5, begin_step=0, end_step=1,
                           frequency=1, where=WHERE_A),
    'gmp_of_spred': lambda: pcs.gmp(pcs.spred(optax.sgd(0.1), weight_decay=1e-2,
                                              where=WHERE_A),
                                    final_sparsity=0.5, begin_step=0, end_step=1,
                                    frequency=1, where=WHERE_A),
}


@pytest.mark.parametrize('name', sorted(OWN_WHERE))
def test_stats_and_latents_use_the_transforms_own_where(name):
  tx = OWN_WHERE[name]()
  params = _randomized({'a': jnp.ones((4, 4)), 'b': jnp.ones((4, 4))})
  state = tx.init(params)
  for _ in range(2):  # through jit: the recorded selection is static
    updates, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)
    params = optax.apply_updates(params, updates)
  logged = pcs.stats(state, params)
  np.testing.assert_allclose(logged['l1_norm'], np.abs(np.asarray(params['a'])).sum(),
                             rtol=1e-6)
  np.testing.assert_allclose(logged['sparsity'], np.mean(np.asarray(params['a']) == 0))
  if name in ('pilot', 'spred', 'mirror', 'soft_threshold'):
    found = pcs.latents(state, params)
    trees = [found] if name == 'mirror' else list(found)
    for tree in trees:
      assert isinstance(tree['b'], optax.MaskedNode) and not isinstance(
          tree['a'], optax.MaskedNode), name
  if name == 'spred':  # an explicit where still wins
    assert float(pcs.stats(state, params, where=lambda p, x: True)['l1_norm']) > float(
        logged['l1_norm'])


TRANSFORMS = {
    'pilot': lambda where: pcs.pilot(optax.sgd(0.1), where=where),
    'mirror': lambda where: pcs.mirror(optax.sgd(0.1), where=where),
    'spred': lambda where: pcs.spred(optax.sgd(0.1), weight_decay=1e-3, where=where),
    'soft_threshold': lambda where: pcs.soft_threshold(optax.sgd(0.1), weight_decay=1e-3,
                                                       where=where),
    'continuous_sparsification': lambda where: pcs.continuous_sparsification(
        optax.sgd(0.1), l1_strength=1e-4, num_steps=5, where=where),
    'powerprop': lambda where: pcs.powerprop(optax.sgd(0.1), where=where),
    'l1': lambda where: pcs.l1(optax.sgd(0.1), strength=1e-3, learning_rate=0.1,
                               where=where),
    'gmp': lambda where: pcs.gmp(optax.sgd(0.1), final_sparsity=0.5, begin_step=0,
                                 end_step=2, where=where),
    'one_shot_pruning': lambda where: pcs.one_shot_pruning(optax.sgd(0.1), sparsity=0.5,
                                                           step=1, where=where),
    'keep_masked_of_pilot': lambda where: pcs.keep_masked(
        pcs.pilot(optax.sgd(0.1), where=where), pcs.pruning.all_kept(PARAMS)),
}
PARAMS = {'dense': {'kernel': jnp.ones((3, 4)), 'bias': jnp.ones(4)},
          'embed': {'embedding': jnp.ones((10, 3))}}
TYPO = lambda path, leaf: path[-1].key == 'kernal'


@pytest.mark.parametrize('name', sorted(TRANSFORMS))
def test_a_where_that_selects_nothing_is_an_error_naming_the_leaves(name):
  with pytest.raises(ValueError) as error:
    TRANSFORMS[name](TYPO).init(PARAMS)
  message = str(error.value)
  assert 'selects none of the 3 leaves' in message
  for part in ('dense/kernel (3, 4)', 'dense/bias (4,)', 'embed/embedding (10, 3)'):
    assert part in message, (part, message)


def test_prune_with_a_where_that_selects_nothing_is_an_error():
  for call in (lambda: pcs.prune(PARAMS, 0.5, where=TYPO),
               lambda: pcs.prune(PARAMS, n_m=(2, 4), where=TYPO),
               lambda: pcs.prune({'bias': jnp.ones(4)}, 0.5)):
    with pytest.raises(ValueError, match='prune: `where` selects none of the'):
      call()


def test_the_leaves_seen_are_listed_up_to_twelve():
  params = {f'w{i:02d}': jnp.ones(3) for i in range(30)}
  with pytest.raises(ValueError, match=r'w11 \(3,\) and 18 more'):
    pcs.pilot(optax.sgd(0.1)).init(params)


def test_compositions_that_hand_a_transform_no_leaves_still_work():
  """optax.masked / multi_transform give MaskedNode for every leaf a transform does not
  own, and tree_map_params initialises with a leafless placeholder: nothing to select."""
  params = helpers.mlp_params()
  grads = jax.tree.map(jnp.ones_like, params)
  labels = jax.tree.map(lambda _: 'plain', params)
  for tx in (optax.chain(optax.masked(pcs.pilot(optax.sgd(0.1)),
                                      jax.tree.map(lambda _: False, params)), optax.sgd(0.1)),
             optax.multi_transform({'pcs': pcs.mirror(optax.sgd(0.1)),
                                    'plain': optax.sgd(0.1)}, labels)):
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    jax.tree.map(lambda u: np.testing.assert_allclose(u, -0.1), updates)
  tx = pcs.gmp(optax.sgd(0.1, momentum=0.9), final_sparsity=0.5, begin_step=0, end_step=2)
  zeros = optax.tree_utils.tree_map_params(
      tx, lambda v: v if isinstance(v, optax.MaskedNode) else jnp.zeros_like(v),
      tx.init(params), is_leaf=lambda v: isinstance(v, optax.MaskedNode))
  assert jax.tree.structure(zeros) == jax.tree.structure(tx.init(params))


def test_iterative_pruning_refuses_a_where_that_selects_nothing_before_training():
  trained = []
  with pytest.raises(ValueError, match='iterative_pruning: `where` selects none'):
    pcs.iterative_pruning(lambda p, masks, cycle: trained.append(cycle) or p, PARAMS,
                          num_cycles=1, where=TYPO)
  assert not trained
