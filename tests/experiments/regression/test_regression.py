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
