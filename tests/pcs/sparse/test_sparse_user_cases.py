"""Cases a user trial of the export met (2026-12-07): each ran into an error or a silently
wrong model before. The exported model is checked against the model computed densely
(its own forward pass), and each refusal against the argument it must name."""

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pcs
from pcs.sparse import nnx as sparse_nnx


class Mlp(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(4)(nn.relu(nn.Dense(16)(x)))


def _pruned(model, x, sparsity=0.8):
  variables = model.init(jax.random.key(0), x)
  params, _ = pcs.prune(variables['params'], sparsity, scope='layerwise')
  return {**variables, 'params': params}


def test_linen_variables_exported_without_the_model_bind_to_it():
  x = jax.random.normal(jax.random.key(1), (3, 8))
  model = Mlp()
  variables = _pruned(model, x)
  exported = pcs.export(variables, format='csr')
  assert set(exported) == {('Dense_0',), ('Dense_1',)}
  np.testing.assert_allclose(exported.bind(model, variables)(x), model.apply(variables, x),
                             rtol=1e-5, atol=1e-5)


class NormWithoutAffine(nn.Module):

  @nn.compact
  def __call__(self, x):
    y = nn.BatchNorm(use_running_average=True, use_scale=False, use_bias=False)(nn.Dense(16)(x))
    return nn.Dense(3)(nn.relu(y))


def test_a_batch_norm_without_scale_and_bias_folds():
  x = jax.random.normal(jax.random.key(1), (4, 8))
  model = NormWithoutAffine()
  variables = _pruned(model, x)
  variables['batch_stats'] = jax.tree.map(
      lambda v: jax.random.uniform(jax.random.key(2), v.shape, minval=0.5, maxval=1.5),
      variables['batch_stats'])
  exported = pcs.export(variables, model=model, inputs=x, format='csr')
  assert exported.folded_norms == {('BatchNorm_0',): ('Dense_0',)}
  np.testing.assert_allclose(exported.bind(model, variables)(x), model.apply(variables, x),
                             rtol=1e-4, atol=1e-4)


class Decoder(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.ConvTranspose(4, (3, 3), strides=(2, 2))(nn.relu(nn.Conv(8, (3, 3))(x)))


def test_a_conv_transpose_exported_without_the_model_stays_dense():
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))
  model = Decoder()
  variables = _pruned(model, x)
  exported = pcs.export(variables['params'], format='csr')
  assert set(exported) == {('Conv_0',)}
  (choice,) = [c for c in exported.choices if c.path == ('ConvTranspose_0',)]
  assert choice.format == 'dense' and 'ConvTranspose' in choice.reason
  np.testing.assert_allclose(exported.bind(model, variables)(x), model.apply(variables, x),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('format', ['csr', 'auto'])
@pytest.mark.parametrize('shape', [(2, 3, 8, 8, 3), (8, 8, 3)])
def test_a_conv_takes_any_number_of_batch_axes(format, shape):  # pylint: disable=redefined-builtin
  x = jax.random.normal(jax.random.key(1), shape)
  model = nn.Conv(4, (3, 3))
  variables = _pruned(model, x, 0.6)
  exported = pcs.export(variables, model=model, inputs=x, format=format)
  if format == 'auto':  # measured at its input, whichever way the timing went
    assert exported.choices[0].dense_ms is not None
  np.testing.assert_allclose(exported.bind(model, variables)(x), model.apply(variables, x),
                             rtol=1e-4, atol=1e-4)


def test_wrong_variables_and_inputs_are_named():
  x = jnp.ones((2, 8))
  model = nn.Dense(4)
  params = _pruned(model, x)['params']
  exported = pcs.export(params, format='csr')
  with pytest.raises(ValueError, match=r"`variables` must be the model's variables"):
    exported.bind(model, params)(x)
  with pytest.raises(ValueError, match=r'\(the model\).*input of shape \(2, 7\)'):
    exported.bind(model, {'params': params})(jnp.ones((2, 7)))
  no_bias = {'kernel': params['kernel']}  # variables of a Dense without its bias
  with pytest.raises(ValueError, match=r"variables hold no params entry bias"):
    exported.bind(model, {'params': no_bias})(x)


@pytest.mark.parametrize('inputs', [(2, 8), jax.ShapeDtypeStruct((2, 8), jnp.float32)])
def test_export_names_inputs_that_are_no_array(inputs):
  model = Mlp()
  variables = _pruned(model, jnp.ones((2, 8)))
  with pytest.raises(TypeError, match=r'`inputs` must be an example input.*holds a '
                     r'(int|ShapeDtypeStruct)'):
    pcs.export(variables, model=model, inputs=inputs)


def test_repr_names_the_sparse_layers_not_their_arrays():
  kernel = np.zeros((64, 64), np.float32)
  kernel[0, :16] = 1.0  # 16 of 4096 kept
  exported = pcs.export({'a': {'kernel': kernel}, 'b': {'kernel': np.ones((4, 4), np.float32)}},
                        format='csr')
  assert repr(exported) == 'Exported(2 of 2 layers sparse: a: csr 99.6%, b: csr 0.0%)'


class NnxNormNet(nnx.Module):

  def __init__(self, rngs):
    self.fc = nnx.Linear(8, 16, rngs=rngs)
    self.norm = nnx.BatchNorm(16, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.out = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(self.drop(nnx.relu(self.norm(self.fc(x)))))


def _nnx_model(seed):
  model = NnxNormNet(nnx.Rngs(seed))
  model.norm.mean.set_value(jnp.linspace(-0.5, 0.5, 16))
  model.norm.var.set_value(jnp.linspace(0.5, 2.0, 16))
  pruned, _ = pcs.prune(nnx.state(model, nnx.Param), 0.8)
  nnx.update(model, pruned)
  model.eval()
  return model


def test_nnx_save_keeps_the_statistics_of_an_unfolded_norm(tmp_path):
  model, x = _nnx_model(0), jax.random.normal(jax.random.key(1), (4, 8))
  exported = pcs.export(model, inputs=x, format='csr', fold_batch_norm=False)
  path = str(tmp_path / 'model.npz')
  pcs.sparse.save(path, exported, nnx.state(model, nnx.Param, nnx.BatchStat))
  fresh = _nnx_model(1)  # other weights and statistics, overwritten by the load
  fresh.norm.mean.set_value(jnp.zeros(16))
  np.testing.assert_allclose(pcs.sparse.load(path, fresh)(x), model(x), rtol=1e-4, atol=1e-4)
  # Its params alone: the load refuses, naming the statistics, instead of using fresh ones.
  pcs.sparse.save(path, exported, nnx.state(model, nnx.Param))
  with pytest.raises(ValueError, match=r"\['norm/mean', 'norm/var'\].*nnx.BatchStat"):
    pcs.sparse.load(path, _nnx_model(1))
  with pytest.raises(TypeError, match='PRNG key'):
    pcs.sparse.save(path, exported, nnx.state(model))


# A second user trial (2026-12-07, stop 15).


def test_bind_refuses_weights_changed_after_the_export(tmp_path):
  x = jax.random.normal(jax.random.key(1), (3, 8))
  model = Mlp()
  variables = _pruned(model, x)
  exported = pcs.export(variables, format='csr')
  changed = {**variables, 'params': {**variables['params'], 'Dense_1': jax.tree.map(
      lambda v: 2.0 * v, variables['params']['Dense_1'])}}
  with pytest.raises(ValueError, match=r"Exported.bind: the weights of \['Dense_1'\] are not "
                     'the ones exported'):
    exported.bind(model, changed)
  # The bias alone changed: the export holds no copy of it, so the call takes the new one.
  biased = {**variables, 'params': {**variables['params'], 'Dense_1': {
      **variables['params']['Dense_1'], 'bias': jnp.full((16,), 3.0)}}}
  np.testing.assert_allclose(exported.bind(model, biased)(x), model.apply(biased, x),
                             rtol=1e-5, atol=1e-5)
  # A saved export's variables hold no kernel of its sparse layers: nothing to compare.
  path = str(tmp_path / 'mlp')
  pcs.sparse.save(path, exported, variables)
  loaded, again = pcs.sparse.load(path)  # save wrote mlp.npz; the path it was given finds it
  np.testing.assert_allclose(again.bind(model, loaded)(x), model.apply(variables, x),
                             rtol=1e-5, atol=1e-5)
  # NNX: sparsify of a model whose kernel changed after the export.
  net = _nnx_model(0)
  nnx_exported = pcs.export(net, format='csr')
  net.out.kernel.set_value(net.out.kernel.get_value() + 1.0)
  with pytest.raises(ValueError, match=r"sparsify: the weights of \['out'\]"):
    nnx_exported.bind(net)


class NormNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    y = nn.BatchNorm(use_running_average=True)(nn.Dense(16)(x))
    return nn.Dense(3)(nn.relu(y))


def _changed(variables, collection, path, value):
  """``variables`` with the leaf at ``collection/path`` replaced by ``value``."""
  out = jax.tree.map(lambda v: v, variables)  # a copy of the nested dicts
  node = out[collection]
  for key in path[:-1]:
    node = node[key]
  node[path[-1]] = value
  return out


def test_bind_refuses_a_batch_norm_or_bias_changed_after_it_was_folded(tmp_path):
  x = jax.random.normal(jax.random.key(1), (4, 8))
  model = NormNet()
  variables = _pruned(model, x)
  exported = pcs.export(variables, model=model, inputs=x, format='csr')
  assert exported.folded_norms == {('BatchNorm_0',): ('Dense_0',)}
  refused = r"the weights of \['Dense_0 \(the bias or batch norm BatchNorm_0 folded into it\)'\]"
  for collection, path in (('batch_stats', ('BatchNorm_0', 'mean')),  # recalibrated
                           ('batch_stats', ('BatchNorm_0', 'var')),
                           ('params', ('BatchNorm_0', 'scale')),
                           ('params', ('BatchNorm_0', 'bias')),
                           ('params', ('Dense_0', 'bias'))):
    changed = _changed(variables, collection, path, jnp.full((16,), 0.7))
    with pytest.raises(ValueError, match=refused):
      exported.bind(model, changed)
  # A bias nothing was folded into is read on each call: the new one is used.
  changed = _changed(variables, 'params', ('Dense_1', 'bias'), jnp.full((3,), 2.0))
  np.testing.assert_allclose(exported.bind(model, changed)(x), model.apply(changed, x),
                             rtol=1e-4, atol=1e-4)
  # A saved export keeps the norm and the bias: loaded, it binds to what it saved.
  path = str(tmp_path / 'norm')
  pcs.sparse.save(path, exported, variables)
  loaded, again = pcs.sparse.load(path)
  np.testing.assert_allclose(again.bind(model, loaded)(x), model.apply(variables, x),
                             rtol=1e-4, atol=1e-4)
  # NNX: the statistics of the norm folded into `fc` recalibrated after the export.
  net = _nnx_model(0)
  nnx_exported = pcs.export(net, inputs=x, format='csr')
  assert nnx_exported.folded_norms == {('norm',): ('fc',)}
  pcs.sparse.nnx.sparsify(net, nnx_exported)  # unchanged: accepted
  net.norm.mean.set_value(net.norm.mean.get_value() + 0.1)
  with pytest.raises(ValueError, match=r"sparsify: the weights of \['fc \(the bias or batch "
                     r"norm norm folded into it\)'\]"):
    nnx_exported.bind(net)


def test_fuse_relu_names_are_refused_where_the_export_cannot_check_them():
  model = Mlp()
  variables = _pruned(model, jnp.ones((2, 8)))
  with pytest.raises(ValueError, match=r"`fuse_relu` names \['Dense_1'\], but without the "
                     'model and an example input'):
    pcs.export(variables, format='csr', fuse_relu=['Dense_1'])  # the logits: no ReLU after
  with pytest.raises(ValueError, match=r"`fuse_relu` names \['out'\]"):
    pcs.export(_nnx_model(0), format='csr', fuse_relu=['out'])
  exported = pcs.export(variables, format='csr', fuse_relu=[])  # none named: nothing to check
  assert not exported.epilogues


def test_nnx_bind_refuses_a_model_in_training_mode():
  model, x = _nnx_model(0), jax.random.normal(jax.random.key(1), (4, 8))
  exported = pcs.export(model, format='csr')
  model.train()  # dropout on, the batch norm on batch statistics
  call = exported.bind(model)
  with pytest.raises(ValueError, match=r"updates the model's state.*model.eval\(\)"):
    call(x)
  model.eval()
  np.testing.assert_allclose(exported.bind(model)(x), model(x), rtol=1e-5, atol=1e-5)


def test_an_nnx_model_loads_in_inference_mode(tmp_path):
  model, x = _nnx_model(0), jax.random.normal(jax.random.key(1), (4, 8))
  exported = pcs.export(model, inputs=x, format='csr')
  path = str(tmp_path / 'net.npz')
  pcs.sparse.save(path, exported, nnx.state(model, nnx.Param, nnx.BatchStat))
  template = NnxNormNet(nnx.Rngs(1))  # built in training mode, as nnx modules are
  assert not template.drop.deterministic
  loaded = pcs.sparse.load(path, template)
  first, second = loaded(x), loaded(x)
  np.testing.assert_array_equal(first, second)  # no dropout
  np.testing.assert_allclose(first, model(x), rtol=1e-4, atol=1e-4)


def test_export_names_a_module_given_where_the_weights_go():
  x = jnp.ones((2, 8))
  for wrong in (Mlp(), nnx.split(_nnx_model(0))[0]):
    with pytest.raises(TypeError, match=r'the first argument is a (Mlp|GraphDef); it must be '
                       'the pruned weights'):
      pcs.export(wrong, inputs=x)


def test_an_n_m_refusal_names_the_kernel_as_the_model_holds_it():
  dense_query = np.ones((8, 2, 4), np.float32)  # an attention query (in, heads, head_dim)
  with pytest.raises(ValueError, match=r'attn/query \(kernel \(8, 2, 4\), as its 8 x 8 matrix\) '
                     r'has a group of 4 inputs with 4 nonzeros'):
    pcs.export({'attn': {'query': {'kernel': dense_query}}}, format='n_m', n_m=(2, 4))
  with pytest.raises(ValueError, match=r'Dense_0 \(kernel \(6, 4\)\) has 6 input channels'):
    pcs.export({'Dense_0': {'kernel': np.ones((6, 4), np.float32)}}, format='n_m', n_m=(2, 4))


class TrainByDefault(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = True):  # as Flax's examples write it
    y = nn.BatchNorm(use_running_average=not train)(nn.Dense(16)(x))
    return nn.Dense(3)(nn.relu(y))


def test_a_call_in_training_mode_is_named_with_the_argument_that_fixes_it():
  x = jnp.ones((2, 8))
  model = TrainByDefault()
  variables = model.init(jax.random.key(0), x, train=False)
  exported = pcs.export(variables['params'], format='csr')  # nothing folded
  with pytest.raises(ValueError, match=r"updates its variables, as in training mode.*"
                     r"`train=False` to bind or sparse_apply"):
    pcs.sparse_apply(model, variables, exported, x)
  np.testing.assert_allclose(pcs.sparse_apply(model, variables, exported, x, train=False),
                             model.apply(variables, x, train=False), rtol=1e-5, atol=1e-5)


def test_an_nnx_state_with_inputs_a_class_to_load_and_bfloat16_kernels_are_named(tmp_path):
  model, x = _nnx_model(0), jnp.ones((2, 8))
  with pytest.raises(ValueError, match=r'an nnx.State holds no model.*pcs.export\(model, '
                     r'inputs=x\)'):
    pcs.export(nnx.state(model, nnx.Param), inputs=x)
  path = str(tmp_path / 'net')
  pcs.sparse.save(path, pcs.export(model, format='csr'), nnx.state(model, nnx.Param, nnx.BatchStat))
  with pytest.raises(TypeError, match=r'`model` is the class NnxNormNet; pass an instance'):
    pcs.sparse.load(path, NnxNormNet)
  half = {'Dense_0': {'kernel': jnp.ones((8, 4), jnp.bfloat16)}}
  with pytest.raises(TypeError, match=r'is bfloat16.*float32 copy.*astype\(jnp.bfloat16\)'):
    pcs.export(half, format='csr')


def test_an_nnx_folded_norm_refuses_training_mode_as_the_linen_one_does():
  model, x = _nnx_model(0), jax.random.normal(jax.random.key(1), (4, 8))
  exported = pcs.export(model, inputs=x, format='csr')  # in eval mode: the norm folds
  sparse = sparse_nnx.sparsify(model, exported)
  np.testing.assert_allclose(sparse(x), model(x), rtol=1e-4, atol=1e-4)
  folded = r'the batch norm norm is folded into fc; it runs in inference mode only'
  sparse.train()  # the dense model would normalize with the batch's statistics
  with pytest.raises(ValueError, match=folded):
    sparse(x)
  model.train()  # a model in training mode, with an export made in inference mode
  with pytest.raises(ValueError, match=folded):
    pcs.sparse.nnx.sparsify(model, exported)(x)
  sparse.eval()
  model.eval()
  np.testing.assert_allclose(sparse(x), model(x), rtol=1e-4, atol=1e-4)


class NnxDecoder(nnx.Module):
  """Embed, causal self-attention with a decoding cache (its projections LinearGeneral)
  and a head: each cached step updates the model's state."""

  def __init__(self, rngs):
    self.embed = nnx.Embed(16, 8, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(num_heads=2, in_features=8, qkv_features=8,
                                            decode=False, rngs=rngs)
    self.head = nnx.Linear(8, 16, rngs=rngs)

  def __call__(self, tokens, decode=False):
    x = self.embed(tokens)
    return self.head(self.attention(x, decode=decode, is_causal=not decode))


def test_an_nnx_export_of_a_cached_step_says_how_to_export_it(monkeypatch):
  model = NnxDecoder(nnx.Rngs(0))
  params, _ = pcs.prune(nnx.state(model, nnx.Param), 0.75, scope='layerwise',
                        where=pcs.kernels)
  nnx.update(model, params)
  model.attention.init_cache((1, 4, 8))
  token = jnp.zeros((1, 1), jnp.int32)
  with monkeypatch.context() as patched:  # stood-in timings: every layer faster sparse
    patched.setattr(pcs.sparse._export, '_measure',  # pylint: disable=protected-access
                    lambda kernel, layer, *args: (layer, pcs.sparse.Comparison(
                        2.0, 1.0, 2.0, 1.8, 2.2, 11)))
    with pytest.raises(ValueError, match=r"pcs.export: the model's call .* updates its state "
                       r"\(\['attention/cache_index.*export the call without it"):
      pcs.export(model, inputs=token, call_kwargs={'decode': True})
  # As the message says: export the call without the cache; the sparse copy then decodes.
  exported = pcs.export(model, inputs=token, format='csr')
  assert ('attention', 'query') in exported
  sparse = sparse_nnx.sparsify(model, exported)
  steps = {}
  for name, decoder in (('dense', nnx.clone(model)), ('sparse', sparse)):
    tokens, logits = token, []
    for _ in range(4):
      logits.append(decoder(tokens, decode=True))
      tokens = jnp.argmax(logits[-1][:, -1], axis=-1).reshape(1, 1)
    steps[name] = jnp.concatenate(logits, axis=1)
  # The cached steps against the model's own forward over the whole sequence.
  sequence = jnp.concatenate([token, jnp.argmax(steps['dense'][:, :-1], axis=-1)], axis=1)
  np.testing.assert_allclose(steps['dense'], model(sequence), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(steps['sparse'], model(sequence), rtol=1e-5, atol=1e-5)


class NnxStack(nnx.Module):

  def __init__(self, rngs):
    self.blocks = nnx.List([nnx.Linear(8, 8, rngs=rngs) for _ in range(2)])
    self.mix = nnx.LinearGeneral((2, 4), (8,), axis=(-2, -1), rngs=rngs)
    self.head = nnx.Conv(8, 4, (3,), rngs=rngs)

  def __call__(self, x):
    for block in self.blocks:
      x = block(x)
    x = self.mix(x.reshape(x.shape[:-1] + (2, 4)))
    return self.head(x[:, None, :])


def test_an_nnx_sparse_layer_given_an_input_of_another_shape_names_its_path():
  model = NnxStack(nnx.Rngs(0))
  sparse = sparse_nnx.sparsify(model, format='csr')
  x = jnp.ones((2, 8))
  np.testing.assert_allclose(sparse(x), model(x), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match=r'^blocks/0: the input must end in 8 features; got '
                     r'shape \(2, 5\)'):
    sparse(jnp.ones((2, 5)))
  with pytest.raises(ValueError, match=r'^head: the input must end in 8 features'):
    sparse.head(jnp.ones((2, 1, 5)))
  # 8 values in axes (4, 2), not the (2, 4) the kernel contracts: the dense layer refuses
  # them, and the sparse one did not (it flattened them to 8).
  with pytest.raises(TypeError, match="contracting dimensions"):
    model.mix(jnp.ones((2, 4, 2)))
  with pytest.raises(ValueError, match=r'^mix: the input must end in axes \(2, 4\); got '
                     r'shape \(2, 4, 2\)'):
    sparse.mix(jnp.ones((2, 4, 2)))


def test_the_summary_keeps_its_columns_for_long_layer_paths():
  long_path = ('encoder', 'layers_11', 'attention', 'output_projection')
  exported = pcs.export({'params': {'a': {'kernel': np.eye(4, dtype=np.float32)},
                                    **{long_path[0]: {long_path[1]: {long_path[2]: {
                                        long_path[3]: {'kernel': np.zeros((4, 3), np.float32)
                                                       }}}}}}}, format='csr')
  lines = exported.summary().splitlines()
  assert [line.split()[0] for line in lines] == ['layer', 'a', '/'.join(long_path)]
  # Each column starts where its header does: 'kernel', then the sparsities' right edges.
  kernel_at = lines[0].index('kernel')
  assert [line[kernel_at:].split()[0] for line in lines[1:]] == ['4x4', '4x3']
  sparsity_end = lines[0].index('sparsity') + len('sparsity')
  assert [line[:sparsity_end].split()[-1] for line in lines[1:]] == ['75.0%', '100.0%']


class LinenMix(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.DenseGeneral(8, axis=(-2, -1), name='mix')(x)


def test_a_linen_dense_general_given_axes_of_another_shape_is_refused_as_dense_refuses_them():
  model, x = LinenMix(), jax.random.normal(jax.random.key(1), (3, 2, 4))
  variables = _pruned(model, x)
  exported = pcs.export(variables, model=model, inputs=x, format='csr')
  assert set(exported) == {('mix',)}
  np.testing.assert_allclose(exported.bind(model, variables)(x), model.apply(variables, x),
                             rtol=1e-5, atol=1e-5)
  swapped = jnp.ones((3, 4, 2))  # 8 values a row, in axes (4, 2): not the (2, 4) contracted
  with pytest.raises(flax.errors.ScopeParamShapeError, match=r'expected to generate shape '
                     r'\(4, 2, 8\).*has shape \(2, 4, 8\)'):
    model.apply(variables, swapped)
  with pytest.raises(ValueError, match=r'^pcs: mix: the input must end in axes \(2, 4\); got '
                     r'shape \(3, 4, 2\)'):
    exported.bind(model, variables)(swapped)
