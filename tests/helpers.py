"""What the tests share: a small MLP problem (plain JAX), its training loop, every pcs
method as users build it, and the small configs and outputs of the experiment binary."""

import itertools
import json
import os
import re
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pcs


def mlp_params(seed=0, dtype=jnp.float32, sizes=(16, 32, 4)):
  rng = np.random.default_rng(seed)
  params = {}
  for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
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


# Every pcs transform, built around a given inner optimizer, as users build them.
METHODS = {
    'pilot': lambda inner: pcs.pilot(inner, alpha=1e-3),
    'pilot_decoupled': lambda inner: pcs.pilot(inner, alpha=1e-3, decoupled=True,
                                               learning_rate=0.05),
    'pilot_controller': lambda inner: pcs.pilot(inner, alpha=pcs.alpha_controller(
        1e-3, delta=1.5, steps_per_epoch=2, num_epochs=4)),
    'mirror': lambda inner: pcs.mirror(inner, alpha=1e-3, learning_rate=0.05),
    'spred': lambda inner: pcs.spred(inner, weight_decay=1e-4),
    'soft_threshold': lambda inner: pcs.soft_threshold(inner, weight_decay=1e-3),
    'continuous_sparsification': lambda inner: pcs.continuous_sparsification(
        inner, l1_strength=1e-4, num_steps=20),
    'powerprop': lambda inner: pcs.powerprop(inner, power=2.0),
    'l1': lambda inner: pcs.l1(inner, strength=1e-3, learning_rate=0.05),
    'gmp': lambda inner: pcs.gmp(inner, final_sparsity=0.5, begin_step=2, end_step=6,
                                 frequency=2),
    'one_shot_pruning': lambda inner: pcs.one_shot_pruning(inner, sparsity=0.5, step=3),
    'gmp_of_pilot': lambda inner: pcs.gmp(pcs.pilot(inner, alpha=1e-3), final_sparsity=0.5,
                                          begin_step=2, end_step=6, frequency=2),
}

INNERS = {
    'momentum': lambda: optax.sgd(0.05, momentum=0.9),
    'adam': lambda: optax.adam(1e-2),
}


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(devices: Optional[int] = None, **extra) -> dict:
  """The environment of a JAX process a test starts from this checkout: ``devices``
  simulated CPU devices (None: conftest's count, as in the test's own process; its other
  XLA flags kept), plus ``extra``."""
  flags = os.environ['XLA_FLAGS']
  if devices is not None:
    flags = re.sub(r'device_count=\d+', f'device_count={devices}', flags)
  return {**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': flags,
          **extra}


def train(tx, steps=30, params=None, data=None, donate=False):
  """``steps`` jitted steps of ``tx`` on the MLP problem: (params, state, losses, step).

  With ``donate`` the step donates params and state, which catches state buffers
  that alias the params.
  """
  params = mlp_params() if params is None else params
  inputs, labels = batch() if data is None else data
  state = tx.init(params)

  def step(params, state):
    loss, grads = jax.value_and_grad(loss_fn)(params, inputs, labels)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  step = jax.jit(step, donate_argnums=(0, 1) if donate else ())
  losses = []
  for _ in range(steps):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  return params, state, losses, step


def recording_transform(*keys):
  """A transform that leaves the parameters as they are and keeps, in its state, the
  extra arguments ``keys`` of its latest ``update``."""
  def init(params):
    del params
    return {k: jnp.zeros(()) for k in keys}

  def update(updates, state, params=None, **extra):
    del state, params
    return (jax.tree.map(jnp.zeros_like, updates),
            {k: jnp.asarray(extra[k], jnp.float32) for k in keys})
  return optax.GradientTransformationExtraArgs(init, update)


def small_config(data_dir, **overrides):
  """The default experiment config shortened to 2 epochs on one device, as on a CPU user's
  machine (the tests of several devices ask for them: ``num_devices=8``); keys may be
  dotted (``**{'pilot.alpha': 1e-3}``)."""
  from experiments.common import config_checks  # pylint: disable=g-import-not-at-top
  from experiments.vision.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.data_dir = data_dir
  config.num_epochs = 2
  config.eval_train = False
  config.num_devices = 1
  return config_checks.override(config, overrides)


def metric_lines(workdir):
  """The run's metrics.jsonl as a list of dicts."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def crash_then_resume(config, workdir, monkeypatch, at_epoch):
  """Runs ``config`` in ``workdir`` until the data of epoch seed ``at_epoch`` is asked for
  (train phase: the epoch; IMP cycle c: 1000 c + epoch; fine-tuning: 10000 + epoch), as
  if killed there, then reruns it to the end; returns the rerun's results."""
  from experiments.vision import input_pipeline  # pylint: disable=g-import-not-at-top
  from experiments.vision import train
  real = input_pipeline.epoch_batches
  def crashing(*args, **kwargs):
    if kwargs.get('epoch') == at_epoch:
      raise KeyboardInterrupt('killed')
    return real(*args, **kwargs)
  monkeypatch.setattr(input_pipeline, 'epoch_batches', crashing)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, str(workdir))
  monkeypatch.setattr(input_pipeline, 'epoch_batches', real)
  return train.train_and_evaluate(config, str(workdir))

