"""The regression experiment end to end on a small setting, against the theory."""

import json
import os

import numpy as np

from experiments.regression import main as regression
from experiments.regression.configs import default as regression_config


def test_regression_experiment_writes_results_that_match_the_theory(tmp_path):
  config = regression_config.get_config()
  config.num_inits = 2
  config.num_steps = 6000
  config.record_every = 1000
  config.constants = (1e-2,)
  config.methods = ('pilot', 'spred_init')
  config.transition_integrals = (0.0, 1.0)
  results = regression.run_experiment(config, str(tmp_path))
  assert os.path.getsize(tmp_path / 'regression.png') > 10_000
  saved = json.loads((tmp_path / 'regression.json').read_text())
  assert set(saved['methods']) == {f'{m}/{s}' for m in config.methods
                                   for s in ('const_0.01', '1/k', '1/k^2', '0.95^k')}
  assert len(saved['methods']['pilot/1/k']['error_mean']) == 6
  transition = results['transition']
  np.testing.assert_allclose(transition['l1_pilot'], transition['l1_theory'], rtol=1e-2)
  assert transition['l1_basis_pursuit'] < transition['l1_pilot'][1] < transition['l1_pilot'][0]
  best = lambda method: min(r['final_error_mean'] for r in results['methods'].values()
                            if r['method'] == method)
  assert best('pilot') < best('spred_init')


def test_the_readme_block_shows_each_methods_best_schedule_and_the_transitions_gap():
  def run(method, schedule, mean, std):
    return {'method': method, 'schedule': schedule, 'final_error_mean': mean,
            'final_error_std': std}
  results = {
      'methods': {'a': run('pilot', '1/k', 0.5, 0.1), 'b': run('pilot', '0.95^k', 0.09, 0.01),
                  'c': run('spred_init', 'const_0.03', 2.5, 1.7),
                  'd': run('l1_x', '1/k^2', 3e-5, 1e-7)},
      'transition': {'integral_alpha': [0.0, 1.0, 2.0], 'l1_pilot': [20.0, 10.0, 5.0],
                     'l1_theory': [20.0, 10.5, 5.0], 'l1_basis_pursuit': 4.9,
                     'l1_min_l2': 21.0},
      'config': {'num_inits': 5}, 'wall_time_s': 12.0}
  text = regression.markdown(results)
  rows = [line for line in text.splitlines() if line.startswith('| ') and '---' not in line][1:]
  assert rows == ['| L1 on x (explicit, through m ⊙ w) | 1/k² | 3e-05 ± 1e-07 |',
                  '| PILoT (decay on m and w) | 0.95^k | 0.09 ± 0.01 |',
                  '| spred init (β = 0) | const 0.03 | 2.5 ± 1.7 |']
  # The largest gap is at the middle point: |10 - 10.5| / 10.5 = 4.8%.
  assert 'within 4.8% of the theory' in text
  assert 'from 20.00 measured / 20.00 predicted at ∫α = 0' in text
  assert 'to 5.00 / 5.00 at ∫α = 2 (basis pursuit 4.90)' in text
