"""Checks of the vision binary's config, before any file is written."""

import ml_collections

from experiments.common import config_checks
from experiments.common import datasets
from experiments.common import sharding
from experiments.vision import models

choice, integer, real, need = (config_checks.choice, config_checks.integer, config_checks.real,
                               config_checks.need)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the key and what is allowed, for the first bad value: the
  data, the model and the devices here, the training keys by
  :func:`experiments.common.config_checks.validate_training`."""
  choice(config, 'dataset', sorted(datasets.DATASETS))
  choice(config, 'model', sorted(models.MODELS))
  choice(config, 'param_sharding', sharding.PARAM_SHARDINGS)
  real(config, 'validation_fraction', 0.0, 1.0, open_high=True)
  need(isinstance(config.init_checkpoint, str),
       f'config.init_checkpoint must be a workdir path or empty; got {config.init_checkpoint!r}.')
  integer(config, 'num_devices', 0)
  real(config, 'momentum', 0.0, 1.0, open_high=True)
  real(config, 'gmp.frequency_epochs', 0.0)
  real(config, 'pilot.delta', 1.0)
  real(config, 'pilot.alpha_until', 0.0, 1.0)
  config_checks.validate_training(config)
