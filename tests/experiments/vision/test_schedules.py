"""The binary's method x schedule split, validation split, init_checkpoint and logging."""

import json

import jax
import numpy as np
import pytest

import pcs
from experiments.common import checkpointing
from experiments.common import datasets
from experiments.vision import input_pipeline
from experiments.vision import train
from tests import helpers


def _final_weights(workdir, like):
  return checkpointing.load_weights(str(workdir), like)


def test_gmp_schedule_follows_the_cubic_schedule_for_any_method(data_dir, tmp_path):
  config = helpers.small_config(data_dir, method='pilot', schedule='gmp', num_epochs=4,
                                sparsity=0.9, **{'gmp.begin_fraction': 0.0,
                                                 'gmp.end_fraction': 0.75,
                                                 'pilot.delta': 1.0, 'pilot.alpha': 3e-4})
  results = train.train_and_evaluate(config, str(tmp_path))
  steps_per_epoch = 4000 // 128
  end = int(0.75 * 4 * steps_per_epoch)
  # Zhu & Gupta (2017): s_t = s (1 - (1 - t / T)^3), masks updated once per epoch.
  for row in helpers.metric_lines(tmp_path):
    last_update = (row['step'] - 1) // steps_per_epoch * steps_per_epoch
    expected = 0.9 * (1 - (1 - min(last_update, end) / end) ** 3)
    assert row['sparsity'] == pytest.approx(expected, abs=1e-4), row['epoch']
  assert results['schedule'] == 'gmp' and abs(results['achieved_sparsity'] - 0.9) < 1e-4
  # The library composition underneath: pruned weights are exact zeros, and pilot's
  # latents reproduce the weights (m * w == x).
  assert results['test_accuracy_before_first_prune'] == results['test_accuracy_before_finetune']
  assert results['test_accuracy_before_final_prune'] == results['test_accuracy_before_finetune']


@pytest.mark.parametrize('rewind', ['weights', 'learning_rate'])
def test_imp_prunes_each_cycle_to_its_share_and_rewinds(rewind, data_dir, tmp_path):
  config = helpers.small_config(data_dir, method='dense', schedule='imp', num_epochs=2,
                                sparsity=0.875, finetune_epochs=1,
                                **{'imp.cycles': 3, 'imp.rewind': rewind, 'imp.rewind_epoch': 1})
  results = train.train_and_evaluate(config, str(tmp_path))
  lines = helpers.metric_lines(tmp_path)
  assert [(r['phase'], r['epoch']) for r in lines] == [
      ('train', 1), ('train', 2), ('cycle1', 1), ('cycle1', 2), ('cycle2', 1), ('cycle2', 2),
      ('cycle3', 1), ('cycle3', 2), ('finetune', 1)]
  # Cycle c of 3 keeps (1 - 0.875)^(c/3) = 0.5^c of the weights.
  expected = {'train': 0.0, 'cycle1': 0.5, 'cycle2': 0.75, 'cycle3': 0.875, 'finetune': 0.875}
  for row in lines:
    assert row['sparsity'] == pytest.approx(expected[row['phase']], abs=1e-4), row['phase']
  assert abs(results['achieved_sparsity'] - 0.875) < 1e-4
  rewound = tmp_path / 'checkpoints' / 'rewind'
  assert rewound.exists() == (rewind == 'weights')
  if rewind == 'weights':  # the rewind point is the weights after epoch 1 of training
    from experiments.vision import models
    like = models.create_model('cnn1d', 10).init(jax.random.key(0), np.zeros((1, 40, 1)),
                                                  train=False)['params']
    point, _ = checkpointing.restore(str(tmp_path), 'rewind',
                                     {'params': like, 'batch_stats': {}})
    assert not jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, b), point['params'],
                                         like))  # trained, not the initialization


def test_a_run_stopped_inside_an_imp_cycle_resumes_to_the_same_end(data_dir, tmp_path,
                                                                    monkeypatch):
  config = helpers.small_config(data_dir, method='pilot', schedule='imp', num_epochs=1,
                                sparsity=0.75, **{'imp.cycles': 2, 'imp.rewind': 'weights',
                                                  'imp.rewind_epoch': 1})
  uninterrupted = train.train_and_evaluate(config, str(tmp_path / 'full'))
  resumed = helpers.crash_then_resume(config, tmp_path / 'crashed', monkeypatch,
                                      at_epoch=2001)  # cycle 2, epoch 1
  for key in ('test_accuracy', 'params_fingerprint', 'test_accuracy_before_first_prune',
              'test_accuracy_before_final_prune'):
    assert resumed[key] == uninterrupted[key], key
  assert helpers.metric_lines(tmp_path / 'crashed') == helpers.metric_lines(tmp_path / 'full')


def test_validation_split_is_held_out_and_test_is_never_read(data_dir, tmp_path, monkeypatch):
  read = []
  real = input_pipeline.epoch_batches
  def recording(builder, spec, split, *args, **kwargs):
    read.append((split, kwargs['train']))
    return real(builder, spec, split, *args, **kwargs)
  monkeypatch.setattr(input_pipeline, 'epoch_batches', recording)
  results = train.train_and_evaluate(
      helpers.small_config(data_dir, validation_fraction=0.2, eval_train=True, num_epochs=1),
      str(tmp_path))
  # mnist1d has 4000 training signals: 3200 train, the last 800 validate.
  assert set(read) == {('train[:3200]', True), ('train[3200:]', False), ('train[:3200]', False)}
  assert results['eval_split'] == 'validation' and 'test_accuracy' not in results
  assert helpers.metric_lines(tmp_path)[0]['step'] == 3200 // 128
  assert 'validation_accuracy' in helpers.metric_lines(tmp_path)[0]
  builder = datasets.builder('mnist1d', data_dir)
  kept = input_pipeline._load(builder, 'train[:3200]', 'signal')['input']
  held_out = input_pipeline._load(builder, 'train[3200:]', 'signal')['input']
  everything = input_pipeline._load(builder, 'train', 'signal')['input']
  np.testing.assert_array_equal(np.concatenate([kept, held_out]), everything)


def test_init_checkpoint_starts_from_the_final_weights_of_another_run(data_dir, tmp_path):
  source = train.train_and_evaluate(helpers.small_config(data_dir, method='dense', sparsity=0.0,
                                                         num_epochs=1), str(tmp_path / 'dense'))
  # A learning rate of 0 leaves the loaded weights as they are: the result is the source.
  again = train.train_and_evaluate(
      helpers.small_config(data_dir, method='dense', sparsity=0.0, num_epochs=1,
                           learning_rate=0.0, weight_decay=0.0, seed=3,
                           init_checkpoint=str(tmp_path / 'dense')), str(tmp_path / 'again'))
  assert again['params_fingerprint'] == source['params_fingerprint']
  assert again['test_accuracy'] == source['test_accuracy']
  sparsified = train.train_and_evaluate(
      helpers.small_config(data_dir, method='pilot', schedule='gmp', sparsity=0.9, num_epochs=2,
                           warmup_epochs=0, init_checkpoint=str(tmp_path / 'dense')),
      str(tmp_path / 'sparsified'))
  first = helpers.metric_lines(tmp_path / 'sparsified')[0]
  assert first['test_accuracy'] > 0.5  # started trained, not from scratch (~0.3 after 1 epoch)
  assert abs(sparsified['achieved_sparsity'] - 0.9) < 1e-4


@pytest.mark.parametrize('where,message', [
    ('missing', r'config.init_checkpoint: .* holds no final weights'),
    ('mlp', r'config.init_checkpoint: the weights in .* do not fit this model')])
def test_bad_init_checkpoint_is_named(where, message, data_dir, tmp_path):
  if where == 'mlp':
    train.train_and_evaluate(helpers.small_config(data_dir, model='mlp', num_epochs=1),
                             str(tmp_path / 'mlp'))
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(helpers.small_config(data_dir, init_checkpoint=str(tmp_path / where)),
                             str(tmp_path / 'run'))


def test_logs_hold_the_weights_quantiles_and_small_fractions(data_dir, tmp_path):
  train.train_and_evaluate(helpers.small_config(data_dir, method='dense', num_epochs=1,
                                                sparsity=0.0), str(tmp_path))
  row = helpers.metric_lines(tmp_path)[0]
  params = _final_weights(tmp_path, {'params': _cnn_params(), 'batch_stats': {}})['params']
  kernels = np.concatenate([np.abs(np.ravel(x)) for x in jax.tree.leaves(params)
                            if np.ndim(x) >= 2])
  for q in (10, 50, 90):
    assert row[f'abs_q{q}'] == pytest.approx(np.percentile(kernels, q), rel=1e-5)
  assert row['small_1e-3'] == pytest.approx(np.mean(kernels < 1e-3))
  assert row['l1_norm'] == pytest.approx(kernels.sum(), rel=1e-5)


def _cnn_params():
  from experiments.vision import models
  return models.create_model('cnn1d', 10).init(jax.random.key(0), np.zeros((1, 40, 1)),
                                               train=False)['params']


# every method under one_shot: test_main; pilot and dense under gmp and imp above.
@pytest.mark.parametrize('method,schedule', [('str', 'gmp'), ('spred', 'imp'), ('l1', 'gmp')])
def test_other_methods_run_under_the_schedules(method, schedule, data_dir, tmp_path):
  results = train.train_and_evaluate(
      helpers.small_config(data_dir, method=method, schedule=schedule, num_epochs=1,
                           sparsity=0.8, **{'imp.cycles': 1}), str(tmp_path))
  assert abs(results['achieved_sparsity'] - 0.8) < 1e-4
  saved = json.loads((tmp_path / 'results.json').read_text())
  assert (saved['method'], saved['schedule']) == (method, schedule)
  final = _final_weights(tmp_path, {'params': _cnn_params(), 'batch_stats': {}})['params']
  assert abs(float(pcs.sparsity(final)) - 0.8) < 1e-4


@pytest.mark.parametrize('cycle', [False, True])
def test_each_imp_cycle_warms_up_over_its_own_epochs(cycle):
  # Plain SGD (no momentum, no decay) on a scalar with gradient 1 moves it by exactly
  # -lr_t, so the updates are the schedule: linear from 0 to 0.2 over the warmup, then
  # 0.1 (1 + cos(pi (t - W) / (T - W))) (Loshchilov & Hutter, 2017).
  from experiments.common import optimizers
  config = helpers.small_config('unused', method='dense', schedule='imp', num_epochs=6,
                                warmup_epochs=1, momentum=0.0, weight_decay=0.0,
                                learning_rate=0.2, **{'imp.warmup_epochs': 3})
  steps_per_epoch = 4
  params = {'w': np.zeros((1, 1), np.float32)}  # a kernel, which IMP's masks select
  tx = optimizers.make_optimizer(config, steps_per_epoch,
                                 {'w': np.ones((1, 1), bool)} if cycle else None)
  state = tx.init(params)
  warmup, total = (3 if cycle else 1) * steps_per_epoch, 6 * steps_per_epoch
  for t in range(total):
    updates, state = tx.update({'w': np.ones((1, 1), np.float32)}, state, params)
    expected = (0.2 * t / warmup if t < warmup else
                0.1 * (1 + np.cos(np.pi * (t - warmup) / (total - warmup))))
    assert float(updates['w'][0, 0]) == pytest.approx(-expected, abs=1e-6), t


def test_target_control_is_fed_the_accuracy_of_the_pruned_network(data_dir, tmp_path):
  """``pilot.alpha_control='target'``: the train step passes the pruned network's accuracy,
  so the controller runs (it refuses to without it). At a tolerance of 0.99 the prune's cost,
  a difference of two accuracies, never exceeds it: epoch 1 runs at alpha 1e-3, and alpha
  is paused (0) from epoch 2 on, where Algorithm 1 would have multiplied or divided it by
  1.3."""
  config = helpers.small_config(data_dir, model='mlp', method='pilot', sparsity=0.9, **{
      'pilot.alpha': 1e-3, 'pilot.delta': 1.3, 'pilot.alpha_control': 'target',
      'pilot.prune_tolerance': 0.99})
  train.train_and_evaluate(config, str(tmp_path))
  alphas = [row['alpha'] for row in helpers.metric_lines(tmp_path) if row['phase'] == 'train']
  assert alphas == pytest.approx([1e-3, 0.0])
