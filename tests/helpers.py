"""A small MLP classification problem shared by the tests (plain JAX)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def mlp_params(seed=0, dtype=jnp.float32, sizes=(16, 32, 4)):
  rng = np.random.default_rng(seed)
  params = {}
  for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
    params[f'dense{i}'] = {
        'kernel': jnp.asarray(rng.normal(size=(fan_in, fan_out)) * np.sqrt(2 / fan_in), dtype),
        'bias': jnp.zeros((fan_out,), dtype)}
  return params


def mlp_apply(params, x):
  layers = sorted(params)
  for i, name in enumerate(layers):
    x = x @ params[name]['kernel'] + params[name]['bias']
    if i < len(layers) - 1:
      x = jax.nn.relu(x)
  return x


def batch(seed=1, size=64, dims=(16, 4)):
  rng = np.random.default_rng(seed)
  inputs = rng.normal(size=(size, dims[0])).astype(np.float32)
  labels = (inputs[:, :dims[1]].argmax(-1)).astype(np.int32)
  return jnp.asarray(inputs), jnp.asarray(labels)


def loss_fn(params, inputs, labels):
  logits = mlp_apply(params, inputs.astype(jax.tree.leaves(params)[0].dtype))
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()
