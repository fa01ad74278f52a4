"""The binary's per-recipe defaults: equal to the quality record's picks, applied under the
command line's own values, printed, and reaching the run's config (the binary itself is
run by tests/test_docs.py through README's commands; the sweep here)."""

import json
import os
import subprocess
import sys

import pytest

from experiments import quality_protocol as protocol
from experiments import recipe_defaults
from experiments.configs import default
from tests import helpers

NAMING_KEYS = ('model', 'eval_train', 'method', 'schedule')


def test_the_table_is_the_quality_records_picks():
  recorded = protocol.Record(os.path.join(helpers.REPO, 'quality')).rows
  models = sorted({r['model'] for r in recorded.values()})
  assert models == ['cnn1d', 'mlp']
  expected = {}
  for model in models:
    for recipe in protocol.RECIPES:  # every recipe whose tuning has finished, and no other
      setting = protocol.recipe_pick(recorded, model, recipe)
      if setting is not None:
        expected[(model, recipe)] = {k: v for k, v in setting.items() if k not in NAMING_KEYS}
  assert expected == recipe_defaults.PICKED
  assert len(expected) >= 2 * (len(protocol.RECIPES) - 1)  # at most one recipe pending


def _config(**values):
  config = default.get_config()
  for key, value in values.items():
    config[key] = value
  return config


def test_the_named_recipe_takes_its_picks_under_the_command_lines_values():
  picked = recipe_defaults.PICKED[('cnn1d', 'pilot+gmp')]
  config = _config(method='pilot', schedule='gmp', weight_decay=7e-3)  # as the flags set it
  assert (config.pilot.alpha, config.pilot.delta) == (1e-3, 1.3)  # Algorithm 1's controller
  line = recipe_defaults.apply(config, {'method': 'pilot', 'schedule': 'gmp',
                                        'weight_decay': 7e-3})
  assert (config.pilot.alpha, config.pilot.delta, config.learning_rate) == (
      picked['pilot.alpha'], picked['pilot.delta'], picked['learning_rate'])
  assert picked['pilot.delta'] == 1.0  # validation picked a constant alpha
  assert config.weight_decay == 7e-3 != picked['weight_decay']  # set on the command line
  assert 'pilot+gmp on cnn1d' in line and f"pilot.alpha={picked['pilot.alpha']}" in line
  assert 'kept from the command line: weight_decay' in line


def test_an_unrecorded_pair_takes_the_nearest_and_other_datasets_none():
  config = _config(method='l1', schedule='gmp', model='mlp')
  line = recipe_defaults.apply(config, {})
  own, schedule = recipe_defaults.PICKED[('mlp', 'l1')], recipe_defaults.PICKED[('mlp',
                                                                                 'dense+gmp')]
  assert (config.l1.strength, config.weight_decay, config.learning_rate) == (
      own['l1.strength'], own['weight_decay'], own['learning_rate'])  # l1 on the MLP
  assert config.gmp.end_fraction == schedule['gmp.end_fraction']  # dense+gmp on the MLP
  assert 'nearest recorded' in line
  cifar = _config(dataset='cifar10', model='resnet20', method='pilot', schedule='gmp')
  before = cifar.to_dict()
  assert recipe_defaults.apply(cifar, {}) is None and cifar.to_dict() == before


@pytest.mark.parametrize('recipe', ['pilot+gmp', 'pilot', 'dense+imp'])
def test_defaults_for_every_recorded_recipe_name(recipe):
  method, _, schedule = recipe.partition('+')
  source, values = recipe_defaults.defaults_for('cnn1d', method, schedule or 'one_shot')
  assert source == f'{recipe}, as picked'
  assert values == recipe_defaults.PICKED[('cnn1d', recipe)]


def test_the_sweep_runs_a_recipe_at_its_own_sparsity_with_its_picks_quietly(tmp_path):
  """Also on a fresh data folder: one line says mnist1d is generated, and none of tfds's
  download lines, progress bars or variant-folder warnings reach the terminal."""
  workdir = tmp_path / 'sweep'
  readme = tmp_path / 'README.md'
  readme.write_text('before\n<!-- demo -->\nold table\n<!-- /demo -->\nafter\n')
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.sweep', f'--workdir={workdir}', '--methods=l1@0.9',
       '--sparsities=0.95', '--dense=false', f'--config.data_dir={tmp_path / "tfds"}',
       '--config.num_epochs=1', '--config.weight_decay=3e-3', '--config.eval_train=False',
       f'--readme={readme}'],
      cwd=helpers.REPO, env={**os.environ, 'PYTHONPATH': helpers.REPO, 'JAX_PLATFORMS': 'cpu'},
      capture_output=True, text=True, timeout=300, check=True)
  assert '[1/1] l1 at sparsity 0.9, seed 0' in result.stdout
  assert 'kept from the command line: weight_decay' in result.stdout
  with open(workdir / 'l1_0.9_s0' / 'results.json') as f:
    config = json.load(f)['config']
  picked = recipe_defaults.PICKED[('cnn1d', 'l1')]
  assert (config['l1']['strength'], config['learning_rate']) == (picked['l1.strength'],
                                                                 picked['learning_rate'])
  assert config['weight_decay'] == 3e-3 and config['sparsity'] == 0.9
  # The table is written into the file's demo block, and nothing else of it changes.
  text = readme.read_text()
  assert text.startswith('before\n<!-- demo -->\n`make demo` on ') and 'old table' not in text
  assert '| l1 |' in text and text.endswith('<!-- /demo -->\nafter\n')
  assert 'Generating mnist1d in' in result.stdout
  for noise in ('Downloading and preparing', 'downloaded and prepared'):
    assert noise not in result.stdout
  for noise in ('dataset_info.json', 'Generating splits', 'Shuffling'):
    assert noise not in result.stderr
