"""Default config of experiments/regression/main.py: the paper's diagonal-linear-network study.

Jacobs & Burkholz, ICLR 2025, Section 5.1: n = 40, d = 100, a 5-sparse truth, 5
initialisations. The paper uses step 1e-4; the default uses 1e-2 so the run fits
in two minutes on 2 CPU cores (the limit is the same as the step shrinks, see
tests/pcs/test_dynamics.py).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_samples = 40          # n
  config.dim = 100                 # d
  config.num_nonzeros = 5          # k, sparsity of the truth x*
  config.num_inits = 5
  config.learning_rate = 1e-2
  config.num_steps = 20_000
  config.steps_per_epoch = 100     # k in the decaying schedules counts these epochs
  config.record_every = 100
  config.beta = 1.0
  # Schedules of alpha: constants, and alpha0 / k, alpha0 / k^2, alpha0 * 0.95^k.
  config.constants = (1e-3, 3e-3, 1e-2, 3e-2)
  config.decay_alpha0 = 0.1
  config.methods = ('pilot', 'l1_m', 'l1_x', 'spred_init')
  # L2 -> L1 transition: integrals of alpha swept with a constant alpha.
  config.transition_integrals = (0.0, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0, 1.5, 2.0)
  config.transition_alpha = 0.5
  return config
