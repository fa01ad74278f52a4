"""The regression experiment and the benchmark run end to end on small settings."""

import json
import os

import numpy as np

from benchmarks import step_overhead
from experiments import models
from experiments import regression
from experiments.configs import regression as regression_config


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


def test_step_overhead_benchmark_reports_state_sizes():
  rows = step_overhead.measure('tiny MLP', models.MLP((32, 10)), (16,), batch=8, repeats=2)
  by_variant = {variant: (ratio, state) for _, variant, _, ratio, state in rows}
  assert set(by_variant) == {'bare', 'pilot', 'mirror', 'spred', 'str', 'cs', 'powerprop', 'l1',
                             'gmp'}
  assert by_variant['bare'] == (1.0, 1.0)
  # SGD momentum keeps one trace per parameter. pilot: m + traces of m and w on kernels
  # (2 x 16 x 32 + 32 x 10 + traces of biases); mirror: the bare size plus a few scalars.
  kernels, biases = 16 * 32 + 32 * 10, 32 + 10
  np.testing.assert_allclose(by_variant['pilot'][1], (3 * kernels + biases) / (kernels + biases),
                             rtol=1e-2)
  np.testing.assert_allclose(by_variant['mirror'][1], 1.0, atol=0.02)


def test_sparse_inference_benchmark_on_the_small_cnn(monkeypatch):
  from benchmarks import sparse_inference
  monkeypatch.setattr(sparse_inference, 'SPARSITIES', (0.0, 0.95))
  rows = sparse_inference.measure('mnist1d CNN', models.CNN1D, (40, 1), repeats=2)
  assert len(rows) == 4  # 2 sparsities x 2 batch sizes; outputs were checked against dense
  at95 = [r for r in rows if r['sparsity'] == 0.95]
  assert all(r['bcoo_kb'] < 0.25 * r['dense_kb'] for r in at95)  # 5% of entries + indices
  assert 'crossover' in sparse_inference.markdown(rows)


def test_benchmark_target_verdicts():
  from benchmarks import __main__ as bench
  from benchmarks import sparse_inference
  steps = [('MLP 784-1024-1024-10', 'pilot', 1.0, 1.15, 3.0),
           ('MLP 784-1024-1024-10', 'mirror', 1.0, 1.6, 1.0),
           ('ResNet-20', 'pilot', 1.0, 1.01, 3.0), ('ResNet-20', 'mirror', 1.0, 1.0, 1.0)]
  inference = [{'model': name, 'batch': 1, 'sparsity': 0.95, 'bcoo_ratio': ratio,
                'bcsr_ratio': 2.0} for (name, _, _), ratio in zip(sparse_inference.MODELS,
                                                                  (0.5, 1.25, 3.0))]
  def recovery(d, solver, seconds, solved=True):
    return {'d': d, 'solver': solver, 'time_s': seconds, 'solved': solved}
  recoveries = [recovery(1000, 'pcs pilot', 0.01), recovery(1000, 'HiGHS simplex', 0.5),
                recovery(10_000, 'pcs pilot', 3.0), recovery(10_000, 'pcs mirror', 2.0),
                recovery(10_000, 'HiGHS simplex', 1.0), recovery(10_000, 'HiGHS IPM', 120, False),
                recovery(100_000, 'pcs pilot', 1.5), recovery(100_000, 'HiGHS IPM', 120, False)]
  text = bench.targets(steps, inference, recoveries)
  assert '| pilot step <= 1.10x bare on the MLP | 1.150x | missed by 0.05x |' in text
  assert '| pilot step <= 1.02x bare on ResNet-20 | 1.010x | met |' in text
  assert 'mnist1d CNN | 0.50x dense | met |' in text
  assert 'ResNet-20 | 2.00x dense | missed: 2.00x slower |' in text
  assert ('| pcs reaches basis pursuit faster than HiGHS, d = 1e+04 | pcs mirror 2 s vs HiGHS '
          'simplex 1 s (2x) | missed: 2x slower |') in text
  assert ('| pcs reaches basis pursuit faster than HiGHS, d = 1e+05 | pcs pilot 1.5 s; HiGHS not '
          'solved in 120 s | met |') in text
  assert 'd = 1e+03' not in text
