"""The package as users get it: a wheel that installs alone and metadata that matches the code.

The wheel and sdist are built from this checkout; the wheel is installed into a fresh
virtual environment without extras, offline (``--no-index`` against ``.wheels``, the
local cache ``make install`` fills with the core dependencies), and runs the README's
quickstart there.
"""

import ast
import configparser
import email
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from pcs.core import _extras as extras
from tests import helpers

CORE = {'jax', 'jaxlib', 'optax', 'numpy'}
STDLIB = set(sys.stdlib_module_names)
WHEELS = os.path.join(helpers.REPO, '.wheels')


def _run(command, **kwargs):
  done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False,
                        **kwargs)
  assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-3000:])
  return done


@pytest.fixture(scope='module')
def dist(tmp_path_factory):
  """sdist and wheel, built from a copy of the package files (builds write in place)."""
  source, out = tmp_path_factory.mktemp('source'), tmp_path_factory.mktemp('dist')
  for name in ('setup.cfg', 'setup.py', 'pyproject.toml', 'README.md'):
    shutil.copy(os.path.join(helpers.REPO, name), source)
  shutil.copytree(os.path.join(helpers.REPO, 'csrc'), source / 'csrc')
  shutil.copytree(os.path.join(helpers.REPO, 'pcs'), source / 'pcs',
                  ignore=shutil.ignore_patterns('__pycache__', '*.so'))
  _run([sys.executable, '-m', 'build', '--no-isolation', '--sdist', '--wheel', '--outdir',
        str(out), str(source)])
  return out


def _requirements(wheel):
  with zipfile.ZipFile(wheel) as archive:
    name = next(n for n in archive.namelist() if n.endswith('.dist-info/METADATA'))
    metadata = email.message_from_bytes(archive.read(name))
  core, by_extra = set(), {}
  for line in metadata.get_all('Requires-Dist'):
    requirement, _, marker = line.partition(';')
    package = requirement.split('[')[0].split('>')[0].split('=')[0].split('<')[0].strip()
    if 'extra ==' in marker:
      extra = marker.split('extra ==')[1].strip().strip('"\'')
      by_extra.setdefault(extra, set()).add(package.lower())
    else:
      core.add(package.lower())
  return metadata, core, by_extra


def _module_level_imports(path):
  with open(path) as f:
    tree = ast.parse(f.read())
  for node in tree.body:
    if isinstance(node, ast.Import):
      yield from (alias.name.split('.')[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      yield node.module.split('.')[0]


def test_sdist_and_wheel_are_built(dist):
  assert glob.glob(os.path.join(dist, 'pcs-*.tar.gz'))
  wheel = glob.glob(os.path.join(dist, 'pcs-*.whl'))[0]
  with zipfile.ZipFile(wheel) as archive:  # the compiled kernels are in the wheel
    assert any(n.startswith('pcs/sparse/_sparse_kernels') and n.endswith('.so')
               for n in archive.namelist())
  with tarfile.open(glob.glob(os.path.join(dist, 'pcs-*.tar.gz'))[0]) as archive:
    names = archive.getnames()
  for source in ('sparse_kernels.cc', 'common.h', 'parallel.h', 'rows.h', 'tiles.h', 'product.h',
                 'conv.h'):  # everything the build compiles
    assert any(n.endswith('csrc/' + source) for n in names), source


def test_the_ffi_headers_the_kernels_build_against_are_the_runtime_jaxlib():
  # A handler built against newer FFI headers than the runtime fails only at call time,
  # so the build pins jaxlib to exactly what constraints.txt installs.
  with open(os.path.join(helpers.REPO, 'pyproject.toml')) as f:
    build = next(line for line in f if line.startswith('requires ='))
  with open(os.path.join(helpers.REPO, 'constraints.txt')) as f:
    pinned = next(line.strip() for line in f if line.startswith('jaxlib=='))
  assert f'"{pinned}"' in build, (build, pinned)
  import jaxlib  # pylint: disable=g-import-not-at-top
  assert pinned == f'jaxlib=={jaxlib.__version__}'


def test_metadata_matches_what_the_code_imports(dist):
  metadata, core, by_extra = _requirements(glob.glob(os.path.join(dist, '*.whl'))[0])
  assert core == CORE
  assert metadata['Requires-Python'] == '>=3.10'
  # What pcs imports when it loads: the standard library, pcs itself and the core only.
  for path in glob.glob(os.path.join(helpers.REPO, 'pcs', '**', '*.py'), recursive=True):
    if path.endswith(os.path.join('pcs', 'sparse', 'nnx.py')):
      continue  # the NNX adapter, imported by name only (pcs does not load it)
    for module in _module_level_imports(path):
      assert module in STDLIB | CORE | {'pcs'}, (path, module)
  # Each optional feature names an extra that exists and requires that package.
  config = configparser.ConfigParser()
  config.read(os.path.join(helpers.REPO, 'setup.cfg'))
  for module, extra in extras.EXTRAS.items():
    package = {'flax': 'flax', 'orbax': 'orbax-checkpoint'}[module.split('.')[0]]
    assert package in by_extra[extra], (module, extra)
    assert package in config['options.extras_require'][extra].split()
  classifiers = metadata.get_all('Classifier')
  assert 'Programming Language :: Python :: 3' in classifiers


def test_the_wheel_installs_alone_offline_and_runs_the_quickstart(dist, tmp_path):
  if not os.path.isdir(WHEELS):
    pytest.fail(f'{WHEELS} is missing: `make install` downloads the core wheels there.')
  venv = tmp_path / 'venv'
  _run([sys.executable, '-m', 'venv', str(venv)])
  python = str(venv / 'bin' / 'python')
  wheel = glob.glob(os.path.join(dist, '*.whl'))[0]
  _run([python, '-m', 'pip', 'install', '--quiet', '--no-index', '--find-links', WHEELS,
        wheel])
  quickstart = next(code for lang, code, reason in _readme_blocks() if lang == 'python')
  done = _run([python, '-c', quickstart + '\nimport importlib.util\n'
               "print('flax' if importlib.util.find_spec('flax') else 'no flax')"],
              cwd=str(tmp_path))
  assert "'alpha'" in done.stdout and done.stdout.strip().endswith('no flax')
  # The installed wheel's compiled kernel is registered and called, and it computes x W.
  kernel_check = (
      'import jax, numpy as np, pcs\n'
      'w = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)\n'
      'w[np.abs(w) < 1] = 0\n'
      'x = np.ones((3, 64), np.float32)\n'
      'layer = pcs.sparse.csr(w)\n'
      'assert pcs.sparse.compiled_available()\n'
      "assert 'pcs_csr_matmul' in jax.jit(pcs.sparse.dense).lower(x, layer).as_text()\n"
      'np.testing.assert_allclose(jax.jit(pcs.sparse.dense)(x, layer), x @ w, rtol=1e-5)\n'
      "print('kernel ok')")
  done = _run([python, '-W', 'error::RuntimeWarning', '-c', kernel_check], cwd=str(tmp_path))
  assert 'kernel ok' in done.stdout
  missing = subprocess.run([python, '-c', 'import pcs; pcs.sparse_apply(None, {}, {})'],
                           capture_output=True, text=True, cwd=str(tmp_path), check=False)
  assert "pip install 'pcs[export]'" in missing.stderr


def _readme_blocks():
  from tests import test_docs  # pylint: disable=g-import-not-at-top
  return test_docs.blocks('README.md')
