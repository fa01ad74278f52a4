"""The vision binary's train step feeds pcs.target_alpha_controller the accuracy of the
network pruned to the target, checked against a prune and forward pass done by hand."""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from experiments.vision import steps
from tests import helpers


class _NormedMLP(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Dense(32)(x)))
    return nn.Dense(10)(x)


def _pruned_by_hand(params, sparsity, scope):
  """Zeroes the smallest |w| of the Dense kernels, over all of them or per kernel."""
  params = jax.tree.map(np.array, params)  # copies
  kernels = [layer['kernel'] for layer in params.values() if 'kernel' in layer]
  groups = [kernels] if scope == 'global' else [[k] for k in kernels]
  for group in groups:
    magnitudes = np.sort(np.concatenate([np.abs(k).ravel() for k in group]))
    cut = magnitudes[round(sparsity * magnitudes.size) - 1]
    for k in group:
      k[np.abs(k) <= cut] = 0.0
  return params


@pytest.mark.parametrize('scope', ['global', 'layerwise'])
def test_the_pruned_accuracy_is_that_of_the_network_pruned_to_the_target(scope):
  model = _NormedMLP()
  inputs = jnp.asarray(np.random.default_rng(0).normal(size=(64, 16)), jnp.float32)
  # Host copies: the step donates its state. Running statistics unlike any batch's, so
  # inference mode differs from training mode; the labels are the dense network's
  # predictions in inference mode, which it then gets all right.
  variables = jax.tree.map(np.asarray, model.init(jax.random.key(0), inputs, train=False))
  batch_stats = jax.tree.map(lambda v: v + 0.5, variables['batch_stats'])
  labels = jnp.argmax(model.apply({'params': variables['params'], 'batch_stats': batch_stats},
                                  inputs, train=False), -1)
  batch = {'input': inputs, 'label': labels}
  tx = helpers.recording_transform('accuracy', 'pruned_accuracy')
  state = steps.TrainState(step=jnp.zeros((), jnp.int32),
                           params=jax.tree.map(jnp.asarray, variables['params']),
                           batch_stats=jax.tree.map(jnp.asarray, batch_stats),
                           opt_state=tx.init(variables['params']))
  mesh = Mesh(np.array(jax.devices()[:1]), ('data',))
  shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), state)
  step = steps.make_train_step(model, tx, mesh, shardings, pruned_to=(0.9, scope))
  seen = step(state, batch)[0].opt_state

  def accuracy(params):
    logits = model.apply({'params': params, 'batch_stats': batch_stats}, batch['input'],
                         train=False)
    return float(np.mean(np.argmax(logits, -1) == np.asarray(batch['label'])))

  pruned = _pruned_by_hand(variables['params'], 0.9, scope)
  assert float(seen['pruned_accuracy']) == pytest.approx(accuracy(pruned))
  assert float(seen['accuracy']) == 1.0
  assert accuracy(pruned) < 0.9  # the prune is visible
