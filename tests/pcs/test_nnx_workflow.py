"""The whole Flax NNX workflow, as Flax's NNX examples write the loop, with no nnx.as_pure:
train with a pcs method in nnx.Optimizer -> pcs.prune(nnx.state(model, nnx.Param)) ->
nnx.update -> fine-tune with pcs.keep_masked -> pcs.stats / summary -> orbax checkpoint and
restore -> sparse export.

Independent checks: the pruned model has exactly the zeros the masks say (counted), they
stay zero through fine-tuning and a restore; the restored run continues to the weights of
the run that was never interrupted; the sparse model gives the dense model's outputs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from sklearn import datasets

import pcs
from tests import nnx_models
from pcs.sparse import nnx as sparse_nnx
from tests import helpers

INNERS = {'sgd-momentum': lambda: optax.sgd(0.05, momentum=0.9), 'adam': lambda: optax.adam(3e-3)}
KERNELS = lambda path, leaf: path[-1].key == 'kernel'  # a user's predicate on the last key


def _digits():
  digits = datasets.load_digits()
  x = (digits.images / 16.0).reshape(-1, 64, 1).astype(np.float32)
  return jnp.asarray(x[:256]), jnp.asarray(digits.target[:256])


def _model():
  return nnx_models.CNN1D(length=64, widths=(8, 16), rngs=nnx.Rngs(0))


@nnx.jit
def _train_step(model, optimizer, metrics, x, y):
  def loss_fn(model):
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits
  (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  metrics.update(loss=loss, logits=logits, labels=y)
  optimizer.update(model, grads, accuracy=jnp.mean(jnp.argmax(logits, -1) == y))


def _train(model, optimizer, steps, data):
  metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average('loss'))
  for _ in range(steps):
    _train_step(model, optimizer, metrics, *data)
  return metrics.compute()


def _kernels(model):
  return {path: np.asarray(v) for path, v in
          jax.tree_util.tree_flatten_with_path(pcs.core._boundary.plain(  # pylint: disable=protected-access
              nnx.state(model, nnx.Param)))[0] if path[-1].key == 'kernel'}


@pytest.mark.parametrize('inner', list(INNERS))
def test_the_whole_nnx_workflow(inner, tmp_path):
  data = _digits()
  model = _model()
  optimizer = nnx.Optimizer(model, pcs.pilot(INNERS[inner](), alpha=1e-3, where=KERNELS),
                            wrt=nnx.Param)
  first = _train(model, optimizer, 20, data)
  assert np.isfinite(float(first['loss']))
  logged = pcs.stats(optimizer.opt_state, nnx.state(model, nnx.Param), where=KERNELS)
  assert float(logged['alpha']) == pytest.approx(1e-3)
  factors = pcs.latents(optimizer.opt_state, nnx.state(model, nnx.Param))
  assert pcs.core.is_hole(factors.m['head']['bias'])  # the predicate left biases alone
  # Prune, fine-tune with the masks fixed.
  pruned, masks = pcs.prune(nnx.state(model, nnx.Param), 0.9, where=KERNELS)
  nnx.update(model, pruned)
  kept = {k: np.asarray(v) for k, v in _kernels(model).items()}
  size = sum(v.size for v in kept.values())
  assert sum(int((v == 0).sum()) for v in kept.values()) == round(0.9 * size)
  tx = pcs.keep_masked(INNERS[inner](), masks)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  _train(model, optimizer, 5, data)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / 'model', nnx.state(model))
  checkpointer.save(tmp_path / 'optimizer', nnx.state(optimizer))
  checkpointer.wait_until_finished()
  _train(model, optimizer, 5, data)  # the uninterrupted run
  for path, value in _kernels(model).items():
    np.testing.assert_array_equal(value[kept[path] == 0], 0.0)
  assert 0.88 < pcs.summary(nnx.state(model, nnx.Param), where=KERNELS).sparsity < 0.92
  # Restore into a fresh model and optimizer whose keep_masked got no pruning masks: the
  # masks come from the checkpointed state.
  fresh = _model()
  restored_opt = nnx.Optimizer(fresh, pcs.keep_masked(
      INNERS[inner](), pcs.pruning.all_kept(nnx.state(fresh, nnx.Param))), wrt=nnx.Param)
  nnx.update(fresh, checkpointer.restore(tmp_path / 'model', nnx.state(fresh)))
  nnx.update(restored_opt, checkpointer.restore(tmp_path / 'optimizer',
                                                nnx.state(restored_opt)))
  _train(fresh, restored_opt, 5, data)
  for path, value in _kernels(fresh).items():
    np.testing.assert_allclose(value, _kernels(model)[path], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(value[kept[path] == 0], 0.0)
  # Export for inference.
  model.eval()
  sparse = sparse_nnx.sparsify(model, format='csr')
  np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(sparse, data[0][:8]), model(data[0][:8]),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('method', sorted(helpers.METHODS))
def test_the_workflow_with_every_method_in_the_training_step(method, tmp_path):
  model = nnx_models.MLP(16, (32, 4), rngs=nnx.Rngs(0))
  tx = helpers.METHODS[method](optax.sgd(0.05, momentum=0.9))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  data = helpers.batch()
  assert np.isfinite(float(_train(model, optimizer, 3, data)['loss']))
  logged = pcs.stats(optimizer.opt_state, nnx.state(model, nnx.Param))
  assert all(np.isfinite(float(v)) for v in logged.values())
  pruned, masks = pcs.prune(nnx.state(model, nnx.Param), 0.8)
  nnx.update(model, pruned)
  optimizer = nnx.Optimizer(model, pcs.keep_masked(optax.sgd(0.05, momentum=0.9), masks),
                            wrt=nnx.Param)
  _train(model, optimizer, 2, data)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / 'optimizer', nnx.state(optimizer))
  checkpointer.wait_until_finished()
  restored = checkpointer.restore(tmp_path / 'optimizer', nnx.state(optimizer))
  saved_masks = pcs.core._boundary.plain(restored)['opt_state']['masks']  # pylint: disable=protected-access
  np.testing.assert_array_equal(saved_masks['layers'][0]['kernel'],
                                pcs.core._boundary.plain(masks)['layers'][0]['kernel'])  # pylint: disable=protected-access
  assert pcs.summary(nnx.state(model, nnx.Param)).sparsity == pytest.approx(0.8, abs=1e-3)
  sparse = sparse_nnx.sparsify(model, format='csr')
  np.testing.assert_allclose(sparse(data[0]), model(data[0]), rtol=1e-4, atol=1e-4)


def test_a_where_predicate_sees_the_parameter_path_at_init_and_update():
  seen = []
  def where(path, leaf):
    seen.append(tuple(k.key for k in path))
    return path[-1].key == 'kernel'
  model = nnx_models.MLP(16, (4,), rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, pcs.pilot(optax.sgd(0.1), alpha=1e-3, where=where),
                            wrt=nnx.Param)
  at_init = set(seen)
  grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
  optimizer.update(model, grads)
  assert at_init == set(seen) == {('layers', 0, 'kernel'), ('layers', 0, 'bias')}


def test_early_clear_errors():
  with pytest.raises(TypeError, match='`inner` must be an optax optimizer'):
    pcs.pilot(0.1)
  with pytest.raises(TypeError, match='keep_masked: `inner` must be an optax optimizer'):
    pcs.keep_masked('sgd', {})
  params = {'dense': {'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)}}
  tx = pcs.pilot(optax.sgd(0.1), alpha=1e-3)
  state = tx.init(params)
  with pytest.raises(ValueError, match=r"gradient at \['dense'\]\['kernel'\] has shape \(2, 3\)"):
    tx.update({'dense': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(2)}}, state, params)
  with pytest.raises(ValueError, match=r"first difference is \['dense'\]\['bias'\], in params"):
    tx.update({'dense': {'kernel': jnp.ones((3, 2))}}, state, params)
