"""Test set-up: 8 simulated CPU devices (as optax's sharding tests), set before jax loads."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')


import hypothesis  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# `ci` (the default) replays the same examples on every run, so CI is never red by chance;
# `pytest --hypothesis-profile=explore` searches afresh with many more examples.
_COMMON = dict(deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.register_profile('ci', max_examples=10, derandomize=True, **_COMMON)
hypothesis.settings.register_profile('explore', max_examples=1000, **_COMMON)
hypothesis.settings.load_profile('ci')


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A tfds data dir for the offline datasets, generated once per test session."""
  return str(tmp_path_factory.mktemp('tfds'))

# fault_runner.py is a script the fault tests start, not a test module (it reads argv).
collect_ignore = ['fault_runner.py']
