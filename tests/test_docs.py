"""The code in README.md and BUILD.md runs as shown.

Python blocks of a file run in order in one namespace, as a reader pastes them. Shell
blocks run too, with the epochs shortened and ``runs/`` in a temporary directory. A
block preceded by ``<!-- not run: reason -->`` is skipped, and must say why.
"""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests import helpers

FENCE = re.compile(r'(<!-- not run: (?P<reason>[^>]*) -->\n)?```(?P<lang>\w+)\n(?P<code>.*?)```',
                   re.DOTALL)


def blocks(name):
  with open(os.path.join(helpers.REPO, name)) as f:
    text = f.read()
  return [(m['lang'], m['code'], m['reason']) for m in FENCE.finditer(text)]


@pytest.mark.parametrize('name', ['README.md', 'BUILD.md'])
def test_every_block_runs_or_says_why_not(name):
  for lang, _, reason in blocks(name):
    assert lang in ('python', 'bash'), lang
    if reason is not None:
      assert reason.strip(), f'a block of {name} is marked not run without a reason'


def test_readme_python_blocks_run_in_order(capsys):
  namespace = {}
  ran = 0
  for lang, code, reason in blocks('README.md'):
    if lang == 'python' and reason is None:
      exec(compile(code, 'README.md', 'exec'), namespace)
      ran += 1
  assert ran >= 4
  printed = capsys.readouterr().out
  assert "'alpha'" in printed and 'total' in printed  # pcs.stats and pcs.summary output
  assert namespace['logits'].shape == (32, 10)


def _commands(code):
  """Shell lines of a block, continuation lines joined and comments dropped."""
  joined = code.replace('\\\n', ' ')
  return [line.split('  #')[0].strip() for line in joined.splitlines()
          if line.strip() and not line.strip().startswith('#')]


def _diagnosis(stderr):
  """The lines of a failed command's stderr that say why (a C++ check, an abort, a
  Python error), then its tail: a crash's stack trace alone hides its cause."""
  why = [line for line in stderr.splitlines()
         if re.search(r'Check failed|terminate called|Fatal|SIG[A-Z]+|Error|^F\d{4}', line)]
  return '\n'.join(why[:20]) + '\n...\n' + stderr[-1500:]


def test_readme_shell_commands_for_the_offline_default_run(data_dir, tmp_path):
  runs = str(tmp_path / 'runs')
  env = helpers.subprocess_env(1)  # a CPU user's one device
  ran = 0
  for lang, code, reason in blocks('README.md'):
    if lang != 'bash' or reason is not None:
      continue
    for command in _commands(code):
      words = shlex.split(command.replace('runs', runs))
      assert words[0] == 'python', command
      if 'experiments.vision.main' in words:
        words += ['--config.num_epochs=1', '--config.finetune_epochs=0',
                  '--config.imp.warmup_epochs=1', f'--config.data_dir={data_dir}']
      done = subprocess.run([sys.executable, *words[1:]], cwd=helpers.REPO, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
      assert done.returncode == 0, (command, _diagnosis(done.stderr))
      ran += 1
  assert ran >= 2
  assert os.path.exists(os.path.join(runs, 'pilot95', 'results.json'))
  # The recipe named by the picked config ran at its validation-picked values.
  with open(os.path.join(runs, 'pilotgmp98', 'results.json')) as f:
    config = json.load(f)['config']
  from experiments.vision.configs import picked  # pylint: disable=g-import-not-at-top
  values = picked.PICKED[('cnn1d', 'pilot+gmp')]
  assert (config['pilot']['alpha'], config['pilot']['delta']) == (values['pilot.alpha'], 1.0)
  assert (config['method'], config['schedule'], config['sparsity']) == ('pilot', 'gmp', 0.98)
  assert config['num_epochs'] == 1  # the test's own shortening won over the defaults
