"""Test set-up: 8 simulated CPU devices (as optax's sharding tests), set before jax loads."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A tfds data dir for the offline datasets, generated once per test session."""
  return str(tmp_path_factory.mktemp('tfds'))
