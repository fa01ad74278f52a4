"""Multi-process training equals one process: 2 processes x 2 CPU devices against 1 x 4.

The processes are real (``jax.distributed`` on loopback with the CPU collectives),
every command is bounded in time so a hung collective fails instead of hanging, and
the run is killed after its first checkpoint and resumed; its checkpoint restores in
both topologies.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from experiments.common import datasets
from tests import helpers

pytestmark = pytest.mark.multiprocess
EPOCHS = 2
TIMEOUT_S = 300

# Gloo's connection report, '[Gloo] Rank 1 is connected to 1 peer ranks. Expected number of
# connected peer ranks is : 1', reaches stderr in pieces, one write each ('[Gloo] Rank',
# each number, 'is connected to', 'peer ranks.', 'Expected number ... is :'), and another
# rank's pieces can land between any two of them (CI saw '[Gloo] Rank [Gloo] Rank 2 ...' and
# '3 peer ranks. [Gloo] Rank 2 ...'): the pieces are matched apart, so only text outside
# them is left.
GLOO_REPORT = re.compile(r'\[Gloo\]\s+Rank|\d+|is\s+connected\s+to|peer\s+ranks\.|Expected\s+'
                         r'number\s+of\s+connected\s+peer\s+ranks\s+is\s*:')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _command(workdir, data_dir, extra=()):
  return [sys.executable, '-m', 'experiments.vision.main', f'--workdir={workdir}',
          f'--config.data_dir={data_dir}', f'--config.num_epochs={EPOCHS}',
          '--config.eval_train=False', *extra]


def _start(workdir, data_dir, processes):
  """1 process x 4 devices, or 2 processes x 2 devices on a free loopback port."""
  if processes == 1:
    commands = [_command(workdir, data_dir)]
  else:
    address = f'127.0.0.1:{_free_port()}'
    commands = [_command(workdir, data_dir, (f'--coordinator_address={address}',
                                             '--num_processes=2', f'--process_id={i}'))
                for i in range(2)]
  return [subprocess.Popen(c, cwd=helpers.REPO, env=helpers.subprocess_env(4 // processes),
                           text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
          for c in commands]


def _finish(procs):
  outputs = []
  for proc in procs:
    try:
      out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      pytest.fail(f'a process did not finish in {TIMEOUT_S} s (a hung collective?)')
    assert proc.returncode == 0, err[-3000:]
    outputs.append(out)
  return outputs


def _kill_after_first_checkpoint(procs, workdir):
  first = os.path.join(workdir, 'checkpoints', 'train', '1')
  deadline = time.time() + TIMEOUT_S
  while not os.path.isdir(first) and time.time() < deadline:
    time.sleep(0.05)
  for proc in procs:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert os.path.isdir(first)
  assert not os.path.exists(os.path.join(workdir, 'results.json')), 'finished before the kill'


def _assert_same_run(workdir, reference):
  """Metrics and results within the tolerance of the 1-vs-8-device test."""
  lines, expected = helpers.metric_lines(workdir), helpers.metric_lines(reference)
  assert [row['epoch'] for row in lines] == list(range(1, EPOCHS + 1))
  for got, want in zip(lines, expected):
    for key in ('train_loss', 'test_loss', 'l1_norm', 'a'):
      assert got[key] == pytest.approx(want[key], rel=5e-3), key  # as test_main's 8 devices
    assert got['test_accuracy'] == pytest.approx(want['test_accuracy'], abs=5e-3)
  with open(os.path.join(workdir, 'results.json')) as f:
    got = json.load(f)
  with open(os.path.join(reference, 'results.json')) as f:
    want = json.load(f)
  assert got['num_devices'] == want['num_devices'] == 4
  # After the prune to 90%, a 2-epoch model is near chance, where another reduction order
  # flips more predictions (7 of 1000 seen on an AVX2-only host).
  assert got['test_accuracy'] == pytest.approx(want['test_accuracy'], abs=1e-2)
  assert got['achieved_sparsity'] == want['achieved_sparsity']


def test_two_processes_equal_one_and_resume_in_either_topology(data_dir, tmp_path):
  datasets.builder('mnist1d', data_dir)  # prepared once, before processes race to build it
  reference, workdir = str(tmp_path / 'one'), str(tmp_path / 'two')
  single = _start(reference, data_dir, processes=1)
  pair = _start(workdir, data_dir, processes=2)
  _kill_after_first_checkpoint(pair, workdir)
  _finish(single)
  # Resumed as 2 processes from the 2-process checkpoint.
  resumed = _start(workdir, data_dir, processes=2)
  out = _finish(resumed)
  assert 'after train epoch' in out[0]
  # Process 1 prints nothing but Gloo's connection report.
  assert not GLOO_REPORT.sub('', out[1]).strip(), out[1]
  _assert_same_run(workdir, reference)
  # TensorBoard event files carry the writer's pid: process 0 of each launch alone wrote.
  writers = {name.rsplit('.', 3)[1] for name in os.listdir(os.path.join(workdir, 'tensorboard'))}
  assert writers == {str(pair[0].pid), str(resumed[0].pid)}
  # The 2-process checkpoint restores in 1 process x 4 devices too.
  out = _finish(_start(workdir, data_dir, processes=1))
  assert f'after train epoch {EPOCHS}' in out[0]
  _assert_same_run(workdir, reference)
