"""The picked config: each recipe at the quality record's picks, named on the command line
(``picked.py:<model>,<recipe>``), the command line's own values on top; the demo's sweep
applies the same picks to each of its recipes."""

import json
import os
import subprocess
import sys

import pytest

from experiments.common import config_checks
from experiments.vision.configs import default
from experiments.vision.configs import picked
from tests import helpers

PICKED_FILE = os.path.join(helpers.REPO, 'experiments', 'vision', 'configs', 'picked.py')


def test_a_named_recipe_is_the_default_config_with_its_picks():
  values = picked.PICKED[('cnn1d', 'pilot+gmp')]
  config = picked.get_config('cnn1d,pilot+gmp')
  expected = default.get_config()
  assert (expected.pilot.alpha, expected.pilot.delta) == (1e-3, 1.3)  # Algorithm 1's controller
  assert (config.model, config.method, config.schedule) == ('cnn1d', 'pilot', 'gmp')
  assert (config.pilot.alpha, config.pilot.delta, config.learning_rate,
          config.weight_decay) == (values['pilot.alpha'], values['pilot.delta'],
                                   values['learning_rate'], values['weight_decay'])
  assert values['pilot.delta'] == 1.0  # validation picked a constant alpha
  # Every other key is default.py's.
  expected.schedule = 'gmp'
  expected.pilot.alpha, expected.pilot.delta = values['pilot.alpha'], values['pilot.delta']
  expected.learning_rate, expected.weight_decay = values['learning_rate'], values['weight_decay']
  assert config.to_dict() == expected.to_dict()


def test_an_unrecorded_pair_takes_the_nearest_and_a_bad_name_is_refused():
  config = picked.get_config('mlp,l1+gmp')
  own, schedule = picked.PICKED[('mlp', 'l1')], picked.PICKED[('mlp', 'dense+gmp')]
  assert (config.l1.strength, config.weight_decay, config.learning_rate) == (
      own['l1.strength'], own['weight_decay'], own['learning_rate'])  # l1 on the MLP
  assert config.gmp.end_fraction == schedule['gmp.end_fraction']  # dense+gmp on the MLP
  with pytest.raises(ValueError, match=r"model must be one of \['cnn1d', 'mlp'\]; got 'resnet20'"):
    picked.get_config('resnet20,pilot')
  with pytest.raises(ValueError, match="nothing was picked for 'pilott' on cnn1d"):
    picked.get_config('cnn1d,pilott')


def test_the_command_line_names_a_recipe_and_the_early_check_reads_it():
  # The binary checks `--config=picked.py:<model>,<recipe>` and its --config.* overrides
  # before absl applies them (README's commands, run by tests/test_docs.py, start the
  # binary with such a config and show the picks reaching the run).
  config = config_checks.load_config_file(f'{PICKED_FILE}:mlp,pilot+gmp')
  assert config.to_dict() == picked.get_config('mlp,pilot+gmp').to_dict()
  assert config_checks.check_overrides(
      ['binary', f'--config={PICKED_FILE}:mlp,pilot+gmp', '--config.weight_decay=7e-3'],
      PICKED_FILE) is None
  # A recipe nothing was picked for is refused before absl parses anything, with the reason.
  message = config_checks.check_overrides(['binary', f'--config={PICKED_FILE}:cnn1d,pilott'],
                                          PICKED_FILE)
  assert message.startswith(f'--config={PICKED_FILE}:cnn1d,pilott: picked.py:cnn1d,<recipe>: '
                            "nothing was picked for 'pilott' on cnn1d")
  unknown = config_checks.check_overrides(
      ['binary', f'--config={PICKED_FILE}:mlp,l1', '--config.l1.strenght=1'], PICKED_FILE)
  assert "Unknown config key 'l1.strenght'" in unknown and "'l1.strength'" in unknown


@pytest.mark.parametrize('recipe', ['pilot+gmp', 'pilot', 'dense+imp'])
def test_defaults_for_every_recorded_recipe_name(recipe):
  method, _, schedule = recipe.partition('+')
  source, values = picked.defaults_for('cnn1d', method, schedule or 'one_shot')
  assert source == f'{recipe}, as picked'
  assert values == picked.PICKED[('cnn1d', recipe)]


def test_the_sweep_runs_a_recipe_at_its_own_sparsity_with_its_picks_quietly(tmp_path):
  """Also on a fresh data folder: one line says mnist1d is generated, and none of tfds's
  download lines, progress bars or variant-folder warnings reach the terminal."""
  workdir = tmp_path / 'sweep'
  readme = tmp_path / 'README.md'
  readme.write_text('before\n<!-- demo -->\nold table\n<!-- /demo -->\nafter\n')
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.vision.sweep', f'--workdir={workdir}', '--methods=l1@0.9',
       '--sparsities=0.95', '--dense=false', f'--config.data_dir={tmp_path / "tfds"}',
       '--config.num_epochs=1', '--config.weight_decay=3e-3', '--config.eval_train=False',
       f'--readme={readme}'],
      cwd=helpers.REPO, env={**os.environ, 'PYTHONPATH': helpers.REPO, 'JAX_PLATFORMS': 'cpu'},
      capture_output=True, text=True, timeout=300, check=True)
  assert '[1/1] l1 at sparsity 0.9, seed 0' in result.stdout
  assert 'kept from the command line: weight_decay' in result.stdout
  with open(workdir / 'l1_0.9_s0' / 'results.json') as f:
    config = json.load(f)['config']
  values = picked.PICKED[('cnn1d', 'l1')]
  assert (config['l1']['strength'], config['learning_rate']) == (values['l1.strength'],
                                                                 values['learning_rate'])
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
