"""Test set-up: 8 simulated CPU devices (as optax's sharding tests) and a shared compilation
cache, set before jax loads."""

import os

# XLA's backend optimisation level 0: the tests' models are tiny, so compiling is most of their
# time; at level 0 it is about a quarter shorter and the runs are no slower.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8'
                           ' --xla_backend_optimization_level=0').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Most tests compile the same few training steps, and many start the binary in a subprocess:
# one on-disk compilation cache for the session (both xdist workers and every subprocess,
# which inherit these variables) compiles each once, down to the small eager ops (about 60 ms
# each on CPU). It lives in the clone, so CI starts empty.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.pytest_cache', 'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')


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


# The longest tests (1-2.5 minutes each in CI, most of it in the processes they start)
# go first: the workers share the rest of the suite while they run, instead of one
# worker running the last of them alone at the end.
LONGEST_FIRST = (
    'tests/experiments/vision/test_faults.py::',
    'tests/test_docs.py::test_readme_shell_commands',
    'tests/experiments/vision/test_multiprocess.py::',
    'tests/experiments/vision/test_main.py::test_cifar10_resnet20',
    'tests/test_docs.py::test_readme_python_blocks',
    'tests/experiments/charlm/test_charlm.py::test_sparsify_trained',
    'tests/test_wheel.py::',
    'notebooks/quickstart.ipynb',
)


def pytest_collection_modifyitems(items):
  """Runs the LONGEST_FIRST tests first, in that order (a stable sort: the rest keep
  theirs)."""
  def rank(item):
    return next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)),
                len(LONGEST_FIRST))
  items.sort(key=rank)
