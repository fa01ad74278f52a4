"""Reliability: bad input fails early and clearly, non-finite values stop or skip, corrupted
checkpoints are skipped, and runs are deterministic."""

import itertools
import json
import os

import numpy as np
import pytest

from experiments.common import collapse
from experiments.common import config_checks
from experiments.vision import input_pipeline
from experiments.vision import steps
from experiments.vision import train
from tests import helpers

DEFAULT = os.path.join(helpers.REPO, 'experiments', 'vision', 'configs', 'default.py')

BAD_OVERRIDES = [
    ('--config.lerning_rate=0.1',
     r"Unknown config key 'lerning_rate'.*Did you mean 'learning_rate'"),
    ('--config.pilot.alpah=0.1', r"Unknown config key 'pilot.alpah'.*Did you mean 'pilot.alpha'"),
    ('--config.sparsty=0.9', r"Did you mean 'sparsity'"),
    ('--config.num_epochs=2.5', r'num_epochs takes a int .*got .2\.5'),
    ('--config.learning_rate=fast', r'learning_rate takes a float .*got .fast'),
    ('--config.eval_train=maybe', r'eval_train takes a bool'),
    ('--config.seed=one', r'seed takes a int'),
]


@pytest.mark.parametrize('arg,message', BAD_OVERRIDES)
def test_bad_command_line_overrides(arg, message):
  import re
  found = config_checks.check_overrides(['sparsify', '--workdir=/tmp/x', arg], DEFAULT)
  assert found is not None and re.search(message, found), found


BAD_VALUES = [
    ({'dataset': 'svhn'}, r"config.dataset must be one of \(.*'mnist1d'"),
    ({'model': 'resnet1000'}, r'config.model must be one of'),
    ({'method': 'magic'}, r'config.method must be one of'),
    ({'lr_schedule': 'linear'}, r'config.lr_schedule must be one of'),
    ({'prune_scope': 'random'}, r'config.prune_scope must be one of'),
    ({'on_nonfinite': 'ignore'}, r'config.on_nonfinite must be one of'),
    ({'sparsity': 1.0}, r'config.sparsity must be a number in \[0.0, 1.0\)'),
    ({'sparsity': -0.1}, r'config.sparsity must be'),
    ({'num_epochs': 0}, r'config.num_epochs must be an integer >= 1'),
    ({'batch_size': 0}, r'config.batch_size must be an integer >= 1'),
    ({'eval_batch_size': 0}, r'config.eval_batch_size'),
    ({'warmup_epochs': 40}, r'config.warmup_epochs \(40\) must be <= config.num_epochs'),
    ({'imp.warmup_epochs': 40}, r'config.imp.warmup_epochs \(40\) must be <= config.num_epochs'),
    ({'imp.warmup_epochs': -1}, r'config.imp.warmup_epochs must be an integer >= 0'),
    ({'finetune_epochs': -1}, r'config.finetune_epochs'),
    ({'seed': -1}, r'config.seed'),
    ({'num_devices': -2}, r'config.num_devices'),
    ({'max_nonfinite_steps': 0}, r'config.max_nonfinite_steps'),
    ({'learning_rate': -0.1}, r'config.learning_rate must be a number in \[0.0, inf\]'),
    ({'finetune_learning_rate': -1.0}, r'config.finetune_learning_rate'),
    ({'weight_decay': -1e-4}, r'config.weight_decay'),
    ({'momentum': 1.0}, r'config.momentum must be a number in \[0.0, 1.0\)'),
    ({'gmp.begin_fraction': 1.5}, r'config.gmp.begin_fraction'),
    ({'gmp.end_fraction': 0.05}, r'config.gmp.end_fraction must be a number in \[0.1'),
    ({'gmp.frequency_epochs': -1.0}, r'config.gmp.frequency_epochs'),
    ({'pilot.delta': 0.5}, r'config.pilot.delta must be a number in \[1.0'),
    ({'pilot.alpha': -1.0}, r'`init_alpha`'),
    ({'pilot.beta': -1.0}, r'`beta`'),
    ({'pilot.l1_threshold': -1.0}, r'`l1_threshold`'),
    ({'method': 'mirror', 'pilot.beta': 0.0}, r'`beta` > 0'),
    ({'method': 'spred', 'spred.weight_decay': -1.0}, r'`weight_decay`'),
    ({'method': 'str', 'str.weight_decay': -1.0}, r'`weight_decay`'),
    ({'method': 'str', 'str.init_threshold': float('nan')}, r'`init_threshold`'),
    ({'method': 'cs', 'cs.l1_strength': -1.0}, r'`l1_strength`'),
    ({'method': 'cs', 'cs.final_temperature': 0.5}, r'`final_temperature`'),
    ({'method': 'powerprop', 'powerprop.power': 0.5}, r'`power`'),
    ({'method': 'l1', 'l1.strength': -1.0}, r'`strength`'),
    ({'dataset': 'cifar10'}, r"not prepared .*tfds build cifar10"),
    ({'batch_size': 100, 'num_devices': 8},
     r'`batch_size` \(100\) must be divisible by the 8 devices'),
    ({'batch_size': 8192}, r'exceeds the training set'),
]


@pytest.mark.parametrize('changes,message', BAD_VALUES)
def test_bad_config_values_fail_before_anything_is_written(changes, message, data_dir, tmp_path):
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError, match=message) as info:
    train.train_and_evaluate(helpers.small_config(data_dir, **changes), str(workdir))
  # The error comes from our checks, not from deep inside jax or tensorflow.
  assert any(part in str(info.traceback[-1].path) for part in ('experiments', 'pcs'))
  assert not workdir.exists() or not any(workdir.iterdir())


def test_workdir_of_another_config_is_refused_and_left_intact(data_dir, tmp_path):
  train.train_and_evaluate(helpers.small_config(data_dir, num_epochs=1), str(tmp_path))
  before = {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()}
  with pytest.raises(ValueError, match=r'different config \(num_epochs: 1 -> 2, '
                                       r'sparsity: 0.9 -> 0.95\)'):
    train.train_and_evaluate(helpers.small_config(data_dir, num_epochs=2, sparsity=0.95),
                             str(tmp_path))
  assert {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()} == before


def _inject_nan_at(monkeypatch, epoch, batches):
  real = input_pipeline.epoch_batches
  def poisoned(*args, **kwargs):
    for i, (batch, mask) in enumerate(real(*args, **kwargs)):
      if kwargs.get('train') and kwargs.get('epoch') == epoch and i in batches:
        batch = {**batch, 'input': np.full_like(batch['input'], np.nan)}
      yield batch, mask
  monkeypatch.setattr(input_pipeline, 'epoch_batches', poisoned)


def test_nan_stops_the_run_naming_the_step_and_the_last_good_checkpoint(
    data_dir, tmp_path, monkeypatch):
  _inject_nan_at(monkeypatch, epoch=2, batches={3})
  with pytest.raises(collapse.NonFiniteError,
                     match=r'at step 34 \(train epoch 2\); the last good checkpoint is train '
                           r'epoch 1 in .*checkpoints/train \(kept; nothing after it was saved\)'):
    train.train_and_evaluate(helpers.small_config(data_dir), str(tmp_path))
  assert sorted(p.name for p in (tmp_path / 'checkpoints' / 'train').iterdir()
                if p.name.isdigit()) == ['1']
  assert not (tmp_path / 'results.json').exists()


def test_nan_steps_are_skipped_when_configured(data_dir, tmp_path, monkeypatch):
  _inject_nan_at(monkeypatch, epoch=2, batches={3, 7})
  results = train.train_and_evaluate(helpers.small_config(data_dir, on_nonfinite='skip'),
                                     str(tmp_path))
  with open(tmp_path / 'metrics.jsonl') as f:
    skipped = [json.loads(line)['skipped_steps'] for line in f]
  assert skipped == [0, 2]
  assert np.isfinite(results['test_accuracy']) and results['test_accuracy'] > 0.2


@pytest.mark.parametrize('damage', ['truncate', 'flip'])
def test_corrupted_checkpoint_is_detected_and_skipped(damage, data_dir, tmp_path, capsys):
  config = helpers.small_config(data_dir, num_epochs=3)
  reference = train.train_and_evaluate(config, str(tmp_path / 'reference'))
  run = tmp_path / 'run'
  train.train_and_evaluate(config, str(run))
  latest = run / 'checkpoints' / 'train' / '3'
  files = sorted((p for p in latest.rglob('*') if p.is_file()), key=lambda p: -p.stat().st_size)
  target = files[0]  # the largest file holds array data
  data = bytearray(target.read_bytes())
  if damage == 'truncate':
    target.write_bytes(data[:len(data) // 2])
  else:
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
  os.remove(run / 'results.json')
  resumed = train.train_and_evaluate(config, str(run))
  assert 'Skipped train checkpoint 3' in capsys.readouterr().out
  assert list((run / 'checkpoints' / 'corrupted').iterdir())
  assert resumed['params_fingerprint'] == reference['params_fingerprint']
  assert resumed['test_accuracy'] == reference['test_accuracy']


def test_same_config_and_seed_give_bit_identical_runs(data_dir, tmp_path):
  config = helpers.small_config(data_dir, finetune_epochs=1)
  runs = [train.train_and_evaluate(config, str(tmp_path / str(i))) for i in range(2)]
  assert runs[0]['params_fingerprint'] == runs[1]['params_fingerprint']
  lines = [(tmp_path / str(i) / 'metrics.jsonl').read_text() for i in range(2)]
  assert lines[0] == lines[1]
  other = train.train_and_evaluate(helpers.small_config(data_dir, finetune_epochs=1, seed=1),
                                   str(tmp_path / 'seed1'))
  assert other['params_fingerprint'] != runs[0]['params_fingerprint']


def test_step_totals_sum_every_metric_and_keep_the_earliest_bad_step():
  totals = {'loss': np.float32(1.5), 'skipped': np.int32(0), 'bad_step': np.int32(7)}
  step = {'loss': np.float32(2.25), 'skipped': np.int32(1), 'bad_step': np.int32(3)}
  out = steps.accumulate(totals, step)
  assert {k: v.item() for k, v in out.items()} == {'loss': 3.75, 'skipped': 1, 'bad_step': 3}
  later = {'loss': np.float32(0.25), 'skipped': np.int32(0),
           'bad_step': np.int32(steps.NO_BAD_STEP)}
  assert steps.accumulate(out, later)['bad_step'].item() == 3


def test_dispatch_waits_for_the_step_before():
  import jax
  import jax.numpy as jnp

  @jax.jit
  def slow(x):  # about a second of matrix products on one CPU core
    return jax.lax.fori_loop(0, 400, lambda _, y: jnp.tanh(y @ y), x)

  x = jnp.full((256, 256), 1e-3, jnp.float32)
  slow(x).block_until_ready()  # compiled outside the measurement
  previous = {'loss': slow(x)}
  assert not previous['loss'].is_ready(), 'too fast to tell waiting from not waiting'
  totals = steps.add_step(previous, {'loss': jnp.ones(())})
  assert previous['loss'].is_ready()
  np.testing.assert_allclose(totals['loss'], np.asarray(previous['loss']) + 1.0, rtol=1e-6)


def test_training_paces_every_step_on_the_totals_of_the_one_before(data_dir, tmp_path,
                                                                   monkeypatch):
  calls = []  # (totals before, step, totals after)
  real = steps.add_step
  def spy(totals, step):
    calls.append((totals, step, real(totals, step)))
    return calls[-1][2]
  monkeypatch.setattr(steps, 'add_step', spy)
  config = helpers.small_config(data_dir, num_epochs=1)
  train.train_and_evaluate(config, str(tmp_path))
  train_calls = [c for c in calls if 'bad_step' in c[1]]
  assert len(train_calls) == 4000 // config.batch_size
  assert train_calls[0][0] is None
  assert all(later[0] is earlier[2] for earlier, later in itertools.pairwise(train_calls))
