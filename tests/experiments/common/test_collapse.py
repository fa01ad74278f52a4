"""The collapse check: by hand on epoch numbers, and on the binary training a tiny model at a
learning rate that kills it; gradient clipping chained before the method."""

import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import optax

from experiments.common import collapse
from experiments.common import optimizers
from tests import helpers


def test_a_jump_over_ten_times_the_best_loss_and_over_the_uniform_guess_is_a_collapse():
  detector = collapse.Detector(num_classes=10, warmup_epochs=1, check_accuracy=True,
                               advice='Do X.')
  assert detector.check(1, 2.0, 0.5, 'test') is None
  assert detector.check(2, 0.2, 0.6, 'test') is None  # the best loss so far: 0.2
  # 1.9 is 9.5x the best; 2.1 is 10.5x but under ln 10 = 2.303: neither is a jump.
  assert detector.check(3, 1.9, 0.6, 'test') is None
  assert detector.check(4, 2.1, 0.6, 'test') is None
  why = detector.check(5, 2.5, 0.6, 'test')
  assert why.startswith('the mean training loss jumped to 2.5, over 10x its best epoch (0.2)')
  assert why.endswith('. Do X.') and f'{math.log(10):.3g}' in why


def test_accuracy_at_chance_is_a_collapse_only_after_the_warmup_and_in_training_phases():
  training = collapse.Detector(10, warmup_epochs=2, check_accuracy=True, advice='Do X.')
  # Chance for 10 classes is 0.1; within 0.02 of it counts (what one class gets).
  assert training.check(2, 2.0, 0.11, 'validation') is None  # still warming up
  assert training.check(3, 1.9, 0.13, 'validation') is None
  assert training.check(3, 1.9, 0.12, 'validation') == (
      'validation accuracy 0.120 after the 2-epoch warmup is at chance (<= 1/10 + 0.02). Do X.')
  finetuning = collapse.Detector(10, warmup_epochs=0, check_accuracy=False, advice='Do X.')
  assert finetuning.check(1, 2.0, 0.1, 'test') is None


def _binary(tmp_path, data_dir, *flags):
  workdir = tmp_path / 'run'
  done = subprocess.run(
      [sys.executable, '-m', 'experiments.vision.main', f'--workdir={workdir}',
       f'--config.data_dir={data_dir}', '--config.model=mlp', '--config.method=dense',
       '--config.num_epochs=2', '--config.learning_rate=5.0', '--config.eval_train=False',
       *flags],
      cwd=helpers.REPO, env={**os.environ, 'PYTHONPATH': helpers.REPO, 'JAX_PLATFORMS': 'cpu'},
      capture_output=True, text=True, timeout=300)
  return done, json.loads((workdir / 'results.json').read_text())


def test_the_binary_stops_a_tiny_model_at_a_huge_learning_rate_and_says_what_to_change(
    data_dir, tmp_path):
  # The MLP at lr 5 (the picks use 0.4) predicts one class after its first epoch: test
  # accuracy about 0.1 in epoch 2, after the one-epoch warmup.
  done, results = _binary(tmp_path, data_dir)
  assert done.returncode == 1, done.stdout + done.stderr
  assert 'The run collapsed in train epoch 2: test accuracy 0.1' in done.stderr
  for advice in ('Lower --config.learning_rate (5.0)', '--config.warmup_epochs (1)',
                 '--config.clip_grad_norm'):
    assert advice in done.stderr
  assert results['collapsed'].startswith('train epoch 2: test accuracy 0.1')
  assert 'test_accuracy' not in results  # no chance-level model passed off as a result
  assert (results['method'], results['model'], results['seed']) == ('dense', 'mlp', 0)


def test_with_warn_the_binary_goes_on_and_marks_the_results(data_dir, tmp_path):
  done, results = _binary(tmp_path, data_dir, '--config.on_collapse=warn')
  assert done.returncode == 0, done.stdout + done.stderr
  assert 'Warning: the run collapsed in train epoch 2' in done.stdout
  assert results['collapsed'].startswith('train epoch 2: test accuracy 0.1')
  assert results['test_accuracy'] <= 0.12


def test_gradient_clipping_caps_the_global_norm_before_the_method():
  config = helpers.small_config('unused', method='dense', weight_decay=0.0, momentum=0.0,
                                learning_rate=0.5, warmup_epochs=0, lr_schedule='constant',
                                clip_grad_norm=1.0)
  params = {'kernel': jnp.zeros((2, 2))}
  grads = {'kernel': jnp.array([[3.0, 0.0], [0.0, 4.0]])}  # global norm 5
  tx = optimizers.make_optimizer(config, steps_per_epoch=1)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Clipped to norm 1: g / 5; SGD at lr 0.5 steps by -0.5 g / 5.
  np.testing.assert_allclose(updates['kernel'], [[-0.3, 0.0], [0.0, -0.4]], rtol=1e-6)
  config.clip_grad_norm = 0.0
  tx = optimizers.make_optimizer(config, steps_per_epoch=1)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['kernel'], [[-1.5, 0.0], [0.0, -2.0]], rtol=1e-6)
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
